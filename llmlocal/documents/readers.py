"""Documents as blocks of text with where they came from: file, lines or page, heading path.

One reader per kind: plain text, Markdown, reStructuredText, HTML, CSV/TSV/JSONL rows (through
llmlocal.tabular, the reader classify uses) and PDF (pypdf, imported here only). A file that
cannot be read is a :class:`ReadError` for that file, never a crash of the whole index.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

from ..errors import InputFormatError

KINDS = {".txt": "text", ".text": "text", ".md": "markdown", ".markdown": "markdown", ".rst": "rst",
         ".html": "html", ".htm": "html", ".csv": "table", ".tsv": "table", ".jsonl": "table",
         ".ndjson": "table", ".pdf": "pdf"}


@dataclass(frozen=True)
class Block:
    """A paragraph (or a table row, a PDF page's paragraph): its text and its place in the file."""

    text: str
    start_line: int  # 1-based, inclusive; for PDFs, lines within the page
    end_line: int
    heading: tuple[str, ...] = ()  # the enclosing headings, outermost first
    page: int | None = None  # 1-based, PDFs only


class ReadError(Exception):
    """This file cannot be indexed (encrypted or broken PDF, not UTF-8, ...): a per-file warning."""


def kind_of(path: Path) -> str | None:
    return KINDS.get(path.suffix.lower())


def read_blocks(path: Path, *, text_column: str | None = None) -> list[Block]:
    """The blocks of one file, by its kind (extension).

    Raises:
        ReadError: the file cannot be read as its kind.
    """
    kind = kind_of(path)
    if kind == "pdf":
        return list(_pdf(path))
    if kind == "table":
        return list(_table(path, text_column))
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ReadError(f"not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start})") from None
    except OSError as exc:
        raise ReadError(exc.strerror or str(exc)) from None
    text = text.lstrip("\ufeff")
    if kind == "markdown":
        return list(_markdown(text))
    if kind == "rst":
        return list(_rst(text))
    if kind == "html":
        return _html(text)
    return list(_paragraphs(text.splitlines(), ()))


def _paragraphs(lines: list[str], heading: tuple[str, ...], first: int = 1) -> Iterator[Block]:
    """Runs of non-blank lines; ``first`` is the line number of ``lines[0]``."""
    start, buf = None, []
    for i, line in enumerate(lines, first):
        if line.strip():
            if start is None:
                start = i
            buf.append(line.rstrip())
        elif buf:
            yield Block("\n".join(buf), start or i, i - 1, heading)
            start, buf = None, []
    if buf:
        yield Block("\n".join(buf), start or first, first + len(lines) - 1, heading)


_ATX = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_FENCE = re.compile(r"^\s*(```|~~~)")


def _markdown(text: str) -> Iterator[Block]:
    """Headings (ATX ``#`` and setext underlines) set the heading path; a fenced code block stays
    one block even with blank lines inside."""
    lines = text.splitlines()
    path: list[tuple[int, str]] = []
    buf: list[str] = []
    start = 0
    fence: str | None = None

    def flush(end: int) -> Iterator[Block]:
        nonlocal buf
        if any(b.strip() for b in buf):
            yield Block("\n".join(buf).strip("\n"), start, end, tuple(t for _, t in path))
        buf = []

    i = 0
    while i < len(lines):
        line, number = lines[i], i + 1
        if fence is not None:
            buf.append(line)
            if line.strip().startswith(fence):
                fence = None
                yield from flush(number)
            i += 1
            continue
        m = _FENCE.match(line)
        if m:
            yield from flush(number - 1)
            fence, start = m.group(1), number
            buf = [line]
            i += 1
            continue
        heading = _ATX.match(line)
        setext = (i + 1 < len(lines) and line.strip() and not buf
                  and re.fullmatch(r"\s*(=+|-+)\s*", lines[i + 1]) is not None)
        if heading or setext:
            yield from flush(number - 1)
            if heading:
                level, title = len(heading.group(1)), heading.group(2)
                i += 1
            else:
                level, title = (1 if lines[i + 1].strip()[0] == "=" else 2), line.strip()
                i += 2
            path = [(lv, t) for lv, t in path if lv < level] + [(level, title)]
            continue
        if line.strip():
            if not buf:
                start = number
            buf.append(line.rstrip())
        else:
            yield from flush(number - 1)
        i += 1
    yield from flush(len(lines))


_RST_UNDERLINE = re.compile(r"^([=\-~^\"'`#*+:.<>_])\1{2,}\s*$")


def _rst(text: str) -> Iterator[Block]:
    """Section titles are a line underlined (optionally also overlined) by a run of one
    punctuation character; levels follow the order in which underline styles first appear."""
    lines = text.splitlines()
    styles: list[str] = []
    path: list[tuple[int, str]] = []
    body: list[str] = []
    body_start = 1
    i = 0

    def flush() -> Iterator[Block]:
        yield from _paragraphs(body, tuple(t for _, t in path), body_start)

    while i < len(lines):
        line = lines[i]
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        over = _RST_UNDERLINE.match(line) and i + 2 < len(lines) and _RST_UNDERLINE.match(lines[i + 2])
        if over and lines[i + 1].strip():
            title, style, skip = lines[i + 1].strip(), "over" + line.strip()[0], 3
        elif line.strip() and _RST_UNDERLINE.match(nxt) and len(nxt.strip()) >= len(line.strip()):
            title, style, skip = line.strip(), nxt.strip()[0], 2
        else:
            if not body:
                body_start = i + 1
            body.append(line)
            i += 1
            continue
        yield from flush()
        body = []
        if style not in styles:
            styles.append(style)
        level = styles.index(style)
        path = [(lv, t) for lv, t in path if lv < level] + [(level, title)]
        i += skip
        body_start = i + 1
    yield from flush()


class _HtmlText(HTMLParser):
    """Text of block elements, with h1-h6 as the heading path; script, style and the like skipped."""

    BLOCK = {"p", "div", "li", "td", "th", "pre", "blockquote", "section", "article", "dd", "dt", "tr",
             "table", "ul", "ol", "br", "hr", "main", "header", "footer", "figcaption", "caption"}
    SKIP = {"script", "style", "noscript", "template", "svg", "head", "nav"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.blocks: list[Block] = []
        self.path: list[tuple[int, str]] = []
        self.buf: list[str] = []
        self.start = 1
        self.skipping = 0
        self.heading_level: int | None = None
        self.heading_text: list[str] = []

    def handle_starttag(self, tag: str, attrs) -> None:
        if tag in self.SKIP:
            self.skipping += 1
        elif re.fullmatch(r"h[1-6]", tag):
            self.flush()
            self.heading_level, self.heading_text = int(tag[1]), []
        elif tag in self.BLOCK:
            self.flush()

    def handle_endtag(self, tag: str) -> None:
        if tag in self.SKIP:
            self.skipping = max(0, self.skipping - 1)
        elif re.fullmatch(r"h[1-6]", tag) and self.heading_level is not None:
            title = " ".join("".join(self.heading_text).split())
            level = self.heading_level
            self.path = [(lv, t) for lv, t in self.path if lv < level] + ([(level, title)] if title else [])
            self.heading_level = None
            self.start = self.getpos()[0]
        elif tag in self.BLOCK:
            self.flush()

    def handle_data(self, data: str) -> None:
        if self.skipping:
            return
        if self.heading_level is not None:
            self.heading_text.append(data)
            return
        if not "".join(self.buf).strip():
            self.start = self.getpos()[0]
        self.buf.append(data)

    def flush(self) -> None:
        text = " ".join("".join(self.buf).split())
        if text:
            self.blocks.append(Block(text, self.start, max(self.start, self.getpos()[0]),
                                     tuple(t for _, t in self.path)))
        self.buf = []


def _html(text: str) -> list[Block]:
    parser = _HtmlText()
    parser.feed(text)
    parser.close()
    parser.flush()
    return parser.blocks


def _table(path: Path, text_column: str | None) -> Iterator[Block]:
    """One block per row; the text column is found as classify finds it (``--text-column``)."""
    from .. import tabular

    try:
        table = tabular.read_table(path)
    except InputFormatError as exc:
        raise ReadError(str(exc)) from None
    columns = table.columns or []
    column = text_column or next((c for c in ("text", "content", "body") if c in columns), None)
    if column is None and len(columns) == 1:
        column = columns[0]
    if column is None or (columns and column not in columns):
        raise ReadError(f"no text column (columns: {', '.join(columns) or 'none'}); name one with --text-column")
    for row in table.rows:
        value = row.values.get(column)
        if isinstance(value, str) and value.strip():
            yield Block(value.strip(), row.line, row.line)


def _pdf(path: Path) -> Iterator[Block]:
    """Each page's text in paragraphs (pypdf's layout-free extraction); an encrypted PDF that an
    empty password does not open, or a broken one, is a ReadError."""
    import logging

    import pypdf
    from pypdf.errors import PyPdfError

    # pypdf logs its repairs of damaged files ("EOF marker not found"); the warning we give for a
    # file it cannot read says it once, in our words.
    logging.getLogger("pypdf").setLevel(logging.ERROR)

    try:
        reader = pypdf.PdfReader(str(path))
        if reader.is_encrypted and not reader.decrypt(""):
            raise ReadError("the PDF is encrypted (with a password)")
        pages = [page.extract_text() or "" for page in reader.pages]
    except ReadError:
        raise
    except (PyPdfError, OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
        # pypdf raises many kinds on damaged files; any of them means "this file cannot be read".
        raise ReadError(f"not a readable PDF ({type(exc).__name__}: {exc})") from None
    if not any(p.strip() for p in pages):
        raise ReadError("the PDF has no extractable text (scanned images need OCR)")
    for number, text in enumerate(pages, 1):
        for block in _paragraphs(text.splitlines(), ()):
            yield Block(block.text, block.start_line, block.end_line, (), page=number)
