"""Property tests for the input readers: whatever bytes arrive, a reader returns records or one
typed error, never another exception.

Pure logic, no model: the readers and batch's line parser never touch llama.cpp, so random
input is enough to exercise them. Example counts stay modest (the machine is shared).
"""

from __future__ import annotations

import io
import json
import math
import os
import tempfile

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from llmlocal import batch, tabular
from llmlocal.errors import InputFormatError

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Text that stresses the formats: separators, quotes, line endings, a BOM, NUL, surrogate-free Unicode.
_TRICKY = st.sampled_from([",", "\t", '"', "'", "\n", "\r\n", "\r", "{", "}", "[", "]", ":", "\\", "\ufeff",
                           "\0", " ", "é", "😀", "\u2028", "\x1c", "id", "text", "label"])
tricky_text = st.lists(st.one_of(_TRICKY, st.text(max_size=8)), max_size=40).map("".join)
raw_bytes = st.one_of(st.binary(max_size=300), tricky_text.map(lambda t: t.encode("utf-8")),
                      st.lists(st.one_of(st.binary(max_size=6), tricky_text.map(str.encode)), max_size=12)
                      .map(b"\n".join))


def _temp_file(data: bytes, suffix: str) -> str:
    fd, path = tempfile.mkstemp(suffix=suffix)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    return path


@SETTINGS
@given(data=raw_bytes, fmt=st.sampled_from([None, *tabular.FORMATS]), header=st.booleans())
@example(data=b'{"n": ' + b"9" * 5000 + b"}\n", fmt="jsonl", header=True)  # int(str) refuses 4300+ digits
@example(data=b'{"n": ' + b"[" * 100_000 + b"\n", fmt="jsonl", header=True)  # deeper than the parser recurses
def test_read_table_returns_rows_or_an_input_format_error(data, fmt, header):
    try:
        table = tabular.read_table(io.BytesIO(data), format=fmt, header=header)
    except InputFormatError as exc:
        assert exc.line is None or exc.line >= 1
        return
    assert table.format in tabular.FORMATS
    lines = [row.line for row in table.rows]
    assert lines == sorted(lines) and all(n >= 1 for n in lines)
    assert all(isinstance(row.values, dict) for row in table.rows)


@SETTINGS
@given(data=raw_bytes, suffix=st.sampled_from([".csv", ".tsv", ".jsonl", ".json", ".txt", ".dat", ""]))
def test_reading_a_file_by_extension_is_rows_or_an_input_format_error(data, suffix):
    path = _temp_file(data, suffix)
    try:
        tabular.read_table(path)
    except InputFormatError:
        pass
    finally:
        os.unlink(path)


@SETTINGS
@given(data=raw_bytes, fmt=st.sampled_from(["jsonl", "lines", None]))
@example(data=b'{"a": 1}\n{"n": ' + b"9" * 5000 + b'}\n\xff\n', fmt="jsonl")
def test_lenient_lines_agree_with_the_strict_reader(data, fmt):
    """One rule: the strict reader fails exactly on the first line the lenient one marks bad."""
    table, records = tabular.read_lines(io.BytesIO(data), format=fmt)
    bad = [r for r in records if isinstance(r, tabular.BadLine)]
    try:
        strict = tabular.read_table(io.BytesIO(data), format=table.format, header=False)
    except InputFormatError as exc:
        assert bad and exc.line == bad[0].line
        assert exc.problem.startswith(bad[0].problem)
        return
    assert not bad
    assert [(r.line, r.values) for r in strict.rows] == [(r.line, r.values) for r in records]


# ---------------------------------------------------------------- batch lines

FIELDS = ["id", "prompt", "messages", "system", "raw", "max_tokens", "temperature", "stop", "seed"]
_scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
                     st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=10),
                     st.sampled_from(["\ud800", "ok\udfff"]))  # lone surrogates, as JSON escapes make them
json_values = st.recursive(_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(["role", "content", "x"]) | st.text(max_size=4),
                                                 inner, max_size=4)), max_leaves=12)
messages = st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant"]),
                                           "content": st.text(max_size=10)}), min_size=1, max_size=3)
field_values = st.one_of(json_values, messages)
objects = st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=6), field_values, max_size=7)
_HUGE = "9" * 5000  # beyond Python's 4300-digit limit for int(str)


def _line(obj: dict, huge: str | None) -> str:
    text = json.dumps(obj, allow_nan=True)  # NaN and Infinity: Python's json reads them back
    if huge is not None:
        text = text[:-1] + ("" if text == "{}" else ", ") + f'"{huge}": {_HUGE}' + "}"
    return text


def _check_valid(item: batch.BatchItem) -> None:
    assert (item.prompt is None) != (item.messages is None)
    assert isinstance(item.id, (str, int)) and not isinstance(item.id, bool)
    texts = [item.prompt or "", item.system or "", *(item.stop or ())]
    texts += [m["role"] + m["content"] for m in item.messages or []]
    for text in texts:
        text.encode("utf-8")  # runnable: the tokenizer encodes it
    for value in (item.max_tokens, item.seed):
        assert value is None or (type(value) is int and value >= 0)
    assert item.temperature is None or (math.isfinite(item.temperature) and item.temperature >= 0)
    assert item.raw is None or isinstance(item.raw, bool)


@SETTINGS
@given(objs=st.lists(st.tuples(objects, st.one_of(st.none(), st.sampled_from(FIELDS))), min_size=1, max_size=6))
def test_each_batch_line_is_an_item_or_an_error_record_naming_its_field(objs):
    lines = [_line(obj, huge) for obj, huge in objs]
    path = _temp_file(("\n".join(lines) + "\n").encode("utf-8", "surrogatepass"), ".jsonl")
    try:
        items = batch.read_items(path)
    finally:
        os.unlink(path)
    assert [item.line for item in items] == list(range(1, len(lines) + 1))
    for item, (_obj, _huge) in zip(items, objs):
        if item.error is None:
            _check_valid(item)
            continue
        assert item.error.startswith(f"line {item.line}") or item.error.startswith("duplicate id")
        named = [f"'{name}'" for name in FIELDS if name in item.error]
        assert named or "not valid" in item.error or "duplicate id" in item.error, item.error
        # An error record can always be written (and read back on resume).
        record = batch._error_record(item, item.error)
        assert json.loads(json.dumps(record, ensure_ascii=True))["line"] == item.line


@SETTINGS
@given(data=raw_bytes, fmt=st.sampled_from(["auto", "jsonl", "text"]))
def test_any_bytes_are_items_or_error_records(data, fmt):
    path = _temp_file(data, ".in")
    try:
        items = batch.read_items(path, format=fmt)
    finally:
        os.unlink(path)
    for item in items:
        if item.error is None:
            _check_valid(item)
        else:
            assert item.error.startswith(f"line {item.line}") or item.error.startswith("duplicate id")
