"""Property tests of the parsers that read what users (or strangers) hand llmlocal: the catalogue,
config.toml and GGUF headers. Whatever the input, each returns a valid result or raises its own
typed error, never another exception: cli.py would report anything else as an internal error.
"""

from __future__ import annotations

import json
import re
import string
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmlocal import catalog, config, gguf
from llmlocal.errors import CatalogError, ConfigError, GGUFError
from tests.models import smollm2_path

SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# ---------------------------------------------------------------- TOML text from values


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    # JSON escapes are TOML escapes for the characters text() draws (surrogates excluded).
    return json.dumps(value)


_scalars = st.one_of(
    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=70),
    st.integers(min_value=-2**63, max_value=2**63 - 1), st.booleans(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.just("ab" * 32), st.sampled_from(list(catalog.PURPOSES) + list(catalog.TEMPLATE_FAMILIES)),
)
_values = st.one_of(_scalars, st.lists(_scalars, max_size=3))
_keys = st.sampled_from(sorted(catalog._FIELDS) + ["colour", "Name", "sha-256"])


@st.composite
def _catalogue_text(draw) -> str:
    """Entries that are mostly well formed, so the checks past the TOML syntax get exercised."""
    blocks = []
    for _ in range(draw(st.integers(0, 3))):
        entry = {"name": draw(st.one_of(st.from_regex(r"[a-z0-9][a-z0-9._-]{0,12}", fullmatch=True), _scalars)),
                 "file": draw(st.one_of(st.just("m-Q4_K_M.gguf"), _scalars)),
                 "sha256": draw(st.one_of(st.just("ab" * 32), st.text(alphabet="0123456789abcdefAB", max_size=65))),
                 "repo": "org/repo"}
        for key in draw(st.lists(_keys, max_size=4)):
            entry[key] = draw(_values)
        for key in draw(st.lists(st.sampled_from(sorted(entry)), max_size=2)):
            entry.pop(key, None)
        blocks.append("[[models]]\n" + "".join(f"{k} = {_toml_value(v)}\n" for k, v in entry.items()))
    return "\n".join(blocks)


def _check_catalogue(text: str) -> None:
    try:
        specs = catalog.parse_catalog(text, "/u/models.toml")
    except CatalogError as err:
        assert str(err).startswith("/u/models.toml") and err.hint
        return
    for name, spec in specs.items():
        assert name == spec.name and catalog.name_problem(name) is None
        assert re.fullmatch(r"[0-9a-f]{64}", spec.sha256)
        assert spec.purpose in catalog.PURPOSES and spec.template in ("", *catalog.TEMPLATE_FAMILIES)
        assert spec.context > 0 and (spec.size is None or spec.size > 0)
        # What import writes back must read back the same.
        assert catalog.parse_catalog(catalog.entry_toml(spec), "/u/models.toml") == {name: spec}


@SETTINGS
@given(_catalogue_text())
def test_catalogue_entries_parse_or_raise_catalog_error(text: str) -> None:
    _check_catalogue(text)


@SETTINGS
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=300))
def test_any_text_is_a_catalogue_or_a_catalog_error(text: str) -> None:
    _check_catalogue(text)


@SETTINGS
@given(st.text(alphabet=string.printable + "[]{}=\"'#é\0", max_size=200))
def test_toml_punctuation_is_a_catalogue_or_a_catalog_error(text: str) -> None:
    _check_catalogue(text)


# ---------------------------------------------------------------- config.toml


@SETTINGS
@given(st.one_of(
    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=200),
    st.dictionaries(st.sampled_from(["default_model", "default-model", "model", "x"]), _values, max_size=3)
    .map(lambda d: "".join(f"{k} = {_toml_value(v)}\n" for k, v in d.items())),
))
def test_any_config_text_is_a_config_or_a_config_error(text: str) -> None:
    try:
        result = config.parse_config(text, "/u/config.toml")
    except ConfigError as err:
        assert str(err).startswith("/u/config.toml") and err.hint
        return
    assert result.default_model is None or (isinstance(result.default_model, str) and result.default_model)


# ---------------------------------------------------------------- GGUF headers

_HEADER = 2 << 20  # SmolLM2's header (vocabulary and merges included) ends before 2 MiB
_MUTABLE = 64 << 10


@pytest.fixture(scope="module")
def real_header() -> tuple[bytes, int, int]:
    """The first bytes of the real file (its whole header), its size, and where its data starts."""
    path = smollm2_path()
    with path.open("rb") as fh:
        return fh.read(_HEADER), path.stat().st_size, gguf.read_gguf(path).data_offset


def _read(path: Path) -> None:
    try:
        info = gguf.read_gguf(path)
    except GGUFError as err:
        assert err.path == str(path) and err.problem
        return
    assert info.parameter_count >= 0 and info.tensor_data_size >= 0
    assert info.data_offset <= info.file_size
    try:
        est = gguf.estimate_memory(info, 512)
    except GGUFError:
        return
    assert est.total_bytes >= est.weights_bytes >= 0


@st.composite
def _mutations(draw) -> list[tuple[bool, int, bytes]]:
    """(in the tensor table?, offset, bytes): the key/value pairs start the file, the tensor
    table (272 entries of name, shape, type and offset) ends just before the data."""
    edits = []
    for _ in range(draw(st.integers(1, 8))):
        table = draw(st.booleans())
        at = draw(st.integers(0, _MUTABLE - 8))
        value = draw(st.one_of(
            st.binary(min_size=1, max_size=8),
            st.sampled_from([b"\0" * 4, b"\xff" * 8, (1000).to_bytes(4, "little"), (2**40).to_bytes(8, "little")]),
        ))
        edits.append((table, at, value))
    return edits


@pytest.mark.slow
@SETTINGS
@given(_mutations())
def test_mutated_real_header_reads_or_raises_gguf_error(real_header, tmp_path_factory, edits) -> None:
    header, size, data_offset = real_header
    raw = bytearray(header)
    table_start = data_offset - 24_000  # SmolLM2's tensor table is about 20 kB
    for table, at, value in edits:
        at = table_start + at % 24_000 if table else at
        raw[at : at + len(value)] = value
    path = tmp_path_factory.mktemp("mut") / "m.gguf"
    with path.open("wb") as fh:
        fh.write(raw)
        fh.truncate(size)  # the weights as a hole of zeros: only the header is read
    _read(path)


@SETTINGS
@given(st.one_of(
    st.binary(max_size=2048),
    st.binary(max_size=2048).map(lambda b: b"GGUF\x03\0\0\0" + b),
    st.tuples(st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1), st.binary(max_size=1024))
    .map(lambda t: b"GGUF\x03\0\0\0" + t[0].to_bytes(8, "little") + t[1].to_bytes(8, "little") + t[2]),
))
def test_random_bytes_read_or_raise_gguf_error(tmp_path_factory, raw: bytes) -> None:
    path = tmp_path_factory.mktemp("rand") / "r.gguf"
    path.write_bytes(raw)
    _read(path)


_any_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40)


@SETTINGS
@given(file=_any_text.filter(bool), path=_any_text.map(lambda t: "/" + t), description=_any_text, license=_any_text)
def test_an_entry_written_for_the_user_catalogue_reads_back_the_same(file, path, description, license) -> None:
    # import writes entries from a file's name and its header's strings, which may hold anything.
    spec = catalog.ModelSpec(name="m", file=file, sha256="ab" * 32, path=path, description=description,
                             license=license, source="/u/models.toml")
    assert catalog.parse_catalog(catalog.entry_toml(spec), "/u/models.toml") == {"m": spec}
