"""Read records from CSV, TSV, JSON Lines or plain text lines, from a file or stdin.

Generic on purpose (classification reads items and labelled examples with it, batch jobs read
JSONL prompts): a record is a :class:`Row`, the line it starts on and its values by column name.
Every problem is an :class:`~llmlocal.errors.InputFormatError` naming the file and the line:
bytes that are not UTF-8, a CSV row with a stray quote or the wrong number of fields, a JSONL
line that is not a JSON object. :func:`read_lines` (batch jobs) reads the line-per-record formats
by the same rules but keeps going: a line that cannot be read is a :class:`BadLine` for that
line, so one bad prompt does not stop a job.

Formats, chosen by ``format=`` or the file extension (``.csv``, ``.tsv``/``.tab``,
``.jsonl``/``.ndjson``/``.json``, ``.txt`` for plain lines); stdin and other extensions are
sniffed: JSONL if the first non-blank line starts with ``{``, else plain lines:

- ``csv``: RFC 4180 (quoted fields may hold commas, quotes and newlines), strict quoting.
- ``tsv``: one record per line, fields split on tabs, no quoting (the IANA text/tab-separated-values
  form; a quote character is ordinary text, so free text such as SMS messages survives intact).
- ``jsonl``: one JSON object per non-blank line.
- ``lines``: one record per non-blank line, in the column ``text``.

CSV and TSV have a header row unless ``header=False``; then the columns are named ``1``, ``2``, ...
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from .errors import InputFormatError

FORMATS = ("csv", "tsv", "jsonl", "lines")
_EXTENSIONS = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl",
               ".json": "jsonl", ".txt": "lines"}
STDIN_NAME = "<stdin>"


@dataclass(frozen=True)
class Row:
    """One record: the 1-based line it starts on and its values by column name."""

    line: int
    values: dict[str, Any]


@dataclass
class Table:
    """All the records of one input, with the column names where the format has a header."""

    name: str  # the path as given, or "<stdin>": what error messages say
    format: str
    columns: list[str] | None  # CSV/TSV header (or 1..n); for JSONL the first record's keys
    rows: list[Row] = field(default_factory=list)

    def has_column(self, name: str) -> bool:
        return self.columns is not None and name in self.columns


@dataclass(frozen=True)
class BadLine:
    """A line :func:`read_lines` could not read: where, and what is wrong with it."""

    line: int
    problem: str


def format_for(path: str | Path | None, explicit: str | None = None) -> str | None:
    """The format of ``path``: ``explicit`` if given, else by extension (None: sniff the content)."""
    if explicit is not None:
        if explicit not in FORMATS:
            raise InputFormatError(str(path or STDIN_NAME),
                                   f"unknown format '{explicit}' (use one of {', '.join(FORMATS)})")
        return explicit
    if path is None or str(path) == "-":
        return None
    return _EXTENSIONS.get(Path(path).suffix.lower())


def _utf8_problem(raw: bytes, exc: UnicodeDecodeError) -> str:
    return f"not valid UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1})"


def _json_object(text: str) -> dict:
    """The JSON object on one line; ValueError with the problem if it is not one."""
    try:
        value = loads_json(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON: {exc.msg} (column {exc.colno})") from None
    if not isinstance(value, dict):
        raise ValueError(f"expected a JSON object, found {_json_type(value)}")
    return value


def _json_type(value: Any) -> str:
    return {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number")


def decoded_lines(fh: IO[bytes], name: str) -> Iterator[tuple[int, str]]:
    """(line number, text) for each line of a binary stream, line ending kept; strict UTF-8.

    A UTF-8 byte-order mark at the start is dropped. Bytes that are not UTF-8 stop the read with
    an error naming the line and the byte, rather than silently becoming U+FFFD.
    """
    for number, raw in enumerate(fh, 1):
        if number == 1 and raw.startswith(codecs.BOM_UTF8):
            raw = raw[len(codecs.BOM_UTF8):]
        try:
            yield number, raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InputFormatError(name, _utf8_problem(raw, exc) + "; save the file as UTF-8",
                                   line=number) from None


def read_table(source: str | Path | IO[bytes] | None, *, format: str | None = None, header: bool = True,
               name: str | None = None) -> Table:
    """Read every record of ``source`` into a :class:`Table` (columns known after the header)."""
    reader = _open(source, format=format, header=header, name=name)
    rows = list(reader)
    return Table(name=reader.name, format=reader.format, columns=reader.columns, rows=rows)


def read_lines(source: str | Path | IO[bytes] | None, *, format: str | None = None,
               name: str | None = None) -> tuple[Table, list[Row | BadLine]]:
    """Every non-blank line of a JSONL or plain-lines input, each a Row or, if it cannot be read
    (not UTF-8, not a JSON object), a BadLine; the rest of the file is still read.

    Returns the Table (name and format; its rows are left empty) and the records in file order.

    Raises:
        InputFormatError: the file cannot be opened, or its format is not ``jsonl`` or ``lines``.
    """
    reader = _open(source, format=format, header=False, name=name)
    table = Table(name=reader.name, format=reader.format, columns=None)
    try:
        if reader.format not in ("jsonl", "lines"):
            raise InputFormatError(reader.name, f"is {reader.format.upper()}; this reads JSONL or plain lines")
        records: list[Row | BadLine] = []
        for number, raw in enumerate(reader.fh, 1):
            if number == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8):]
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                records.append(BadLine(number, _utf8_problem(raw, exc)))
                continue
            if not text.strip():  # as the strict readers decide it, so both skip the same lines
                continue
            if reader.format == "lines":
                records.append(Row(number, {"text": text.rstrip("\r\n")}))
                continue
            try:
                records.append(Row(number, _json_object(text)))
            except ValueError as exc:
                records.append(BadLine(number, str(exc)))
    except OSError as exc:
        raise InputFormatError(reader.name, f"cannot be read ({exc.strerror or exc})") from None
    finally:
        reader.close()
    return table, records


class _Reader:
    """Iterator over rows that also exposes the name, format and (once read) the columns."""

    def __init__(self, fh: IO[bytes], *, name: str, format: str, header: bool, owned: bool) -> None:
        self.fh, self.name, self.format, self.header, self.owned = fh, name, format, header, owned
        self.columns: list[str] | None = None
        self._it = self._rows()

    def __iter__(self) -> _Reader:
        return self

    def __next__(self) -> Row:
        try:
            return next(self._it)
        except StopIteration:
            self.close()
            raise
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self.owned and not self.fh.closed:
            self.fh.close()

    def _rows(self) -> Iterator[Row]:
        lines = decoded_lines(self.fh, self.name)
        if self.format == "csv":
            yield from self._csv(lines)
        elif self.format == "tsv":
            yield from self._tsv(lines)
        elif self.format == "jsonl":
            yield from self._jsonl(lines)
        else:
            self.columns = ["text"]
            for number, text in lines:
                text = text.rstrip("\r\n")
                if text.strip():
                    yield Row(number, {"text": text})

    def _fields(self, number: int, fields: list[str]) -> Row | None:
        """A data row checked against the header; the first row becomes the header."""
        if self.columns is None:
            if self.header:
                names = [f.strip() for f in fields]
                if len(set(names)) != len(names):
                    dup = sorted({n for n in names if names.count(n) > 1})
                    raise InputFormatError(self.name, f"duplicate column name(s) in the header: {', '.join(dup)}",
                                           line=number)
                self.columns = names
                return None
            self.columns = [str(i) for i in range(1, len(fields) + 1)]
        if len(fields) != len(self.columns):
            raise InputFormatError(
                self.name, f"expected {len(self.columns)} fields ({', '.join(self.columns)}), found {len(fields)}",
                line=number)
        return Row(number, dict(zip(self.columns, fields)))

    def _csv(self, lines: Iterable[tuple[int, str]]) -> Iterator[Row]:
        numbered = _LineCounter(lines)
        reader = csv.reader(numbered, strict=True)
        while True:
            start = numbered.last + 1
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                raise InputFormatError(self.name, f"malformed CSV row: {exc}", line=start) from None
            if not fields:  # a blank line
                continue
            row = self._fields(start, fields)
            if row is not None:
                yield row

    def _tsv(self, lines: Iterable[tuple[int, str]]) -> Iterator[Row]:
        for number, text in lines:
            text = text.rstrip("\r\n")
            if not text.strip():
                continue
            row = self._fields(number, text.split("\t"))
            if row is not None:
                yield row

    def _jsonl(self, lines: Iterable[tuple[int, str]]) -> Iterator[Row]:
        for number, text in lines:
            if not text.strip():
                continue
            try:
                value = _json_object(text)
            except ValueError as exc:
                raise InputFormatError(self.name, str(exc), line=number) from None
            if self.columns is None:
                self.columns = list(value)
            yield Row(number, value)


class _LineCounter:
    """Feeds decoded lines to csv.reader and remembers the number of the last one it took."""

    def __init__(self, lines: Iterable[tuple[int, str]]) -> None:
        self._lines = iter(lines)
        self.last = 0

    def __iter__(self) -> _LineCounter:
        return self

    def __next__(self) -> str:
        self.last, text = next(self._lines)
        return text


def _open(source: str | Path | IO[bytes] | None, *, format: str | None, header: bool,
          name: str | None) -> _Reader:
    if source is None or (isinstance(source, str) and source == "-"):
        fh: IO[bytes] = sys.stdin.buffer
        label = name or STDIN_NAME
        owned = False
    elif isinstance(source, (str, Path)):
        label = name or str(source)
        try:
            fh = open(source, "rb")
        except FileNotFoundError:
            raise InputFormatError(label, "no such file") from None
        except IsADirectoryError:
            raise InputFormatError(label, "is a directory, not a file") from None
        except OSError as exc:
            raise InputFormatError(label, f"cannot be opened ({exc.strerror or exc})") from None
        owned = True
    else:
        fh, label, owned = source, name or getattr(source, "name", None) or STDIN_NAME, False
    fmt = format_for(label if isinstance(source, (str, Path)) else None, format)
    if fmt is None:  # stdin, a stream or an unknown extension: sniff the first non-blank line
        try:
            data = fh.read()
        except OSError as exc:
            raise InputFormatError(label, f"cannot be read ({exc.strerror or exc})") from None
        finally:
            if owned:
                fh.close()
        first = next((ln for ln in data.splitlines() if ln.strip()), b"")
        fmt = "jsonl" if first.lstrip().startswith(b"{") else "lines"
        fh, owned = io.BytesIO(data), True
    return _Reader(fh, name=label, format=fmt, header=header, owned=owned)


# ---------------------------------------------------------------- free text (a prompt, a message)


def read_text(fh: IO[bytes], name: str = STDIN_NAME) -> str:
    """The whole of a binary stream as text, by the rule every reader here follows: strict UTF-8."""
    return "".join(text for _, text in decoded_lines(fh, name))


def check_text(text: str, name: str, *, line: int | None = None) -> str:
    """``text`` if it is real Unicode; an InputFormatError if it holds undecodable bytes.

    Python hands command-line arguments and a non-UTF-8 terminal's input over with such bytes
    smuggled in as lone surrogates (PEP 383), which fail only later, deep in tokenization.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = text[exc.start].encode("utf-8", "surrogateescape")
        raise InputFormatError(name, f"not valid UTF-8 (byte 0x{bad[0]:02x} at column {exc.start + 1})",
                               line=line) from None
    return text


# ---------------------------------------------------------------- JSON and TOML documents


def loads_json(text: str | bytes) -> Any:
    """``json.loads``, where every malformed document is a JSONDecodeError: also one nested too
    deeply for Python's recursive parser (a RecursionError) and an integer of more than 4,300
    digits (a plain ValueError, Python's guard against quadratic conversion)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise
    except (RecursionError, ValueError) as exc:
        problem = "nested too deeply to read" if isinstance(exc, RecursionError) else str(exc)
        raise json.JSONDecodeError(problem, text if isinstance(text, str) else "", 0) from None


def loads_toml(text: str) -> dict[str, Any]:
    """``tomllib.loads``, with the same rule for nesting as :func:`loads_json`."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    try:
        return tomllib.loads(text)
    except RecursionError:
        raise tomllib.TOMLDecodeError("nested too deeply to read") from None
