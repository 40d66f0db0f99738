"""Blocks into chunks: by structure first (a chunk never spans two sections), then by size.

Paragraphs of one section are packed into a chunk up to ``max_chars``; a paragraph longer than
that is cut at sentence (else word) boundaries, and each piece after the first starts with the
last ``overlap`` characters' worth of whole sentences of the one before, so an answer that
straddles a cut is still whole in one of them. Sizes are in characters, not tokens: chunking
needs no model, and at ~4 characters a token the default (1,000) is ~250 tokens, about the
span small embedding models represent well.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from .readers import Block

MAX_CHARS = 1000
OVERLAP = 150


@dataclass(frozen=True)
class Chunk:
    text: str
    start_line: int
    end_line: int
    heading: tuple[str, ...] = ()
    page_start: int | None = None
    page_end: int | None = None

    def embedding_text(self) -> str:
        """What is embedded and searched: the heading path gives a paragraph its topic."""
        return (" > ".join(self.heading) + "\n\n" + self.text) if self.heading else self.text


def chunk_blocks(blocks: Iterable[Block], *, max_chars: int = MAX_CHARS, overlap: int = OVERLAP) -> list[Chunk]:
    out: list[Chunk] = []
    group: list[Block] = []

    def close() -> None:
        if group:
            out.append(_merge(group))
            group.clear()

    for block in blocks:
        for piece in _split(block, max_chars, overlap):
            size = sum(len(b.text) + 2 for b in group)
            same_place = group and group[-1].heading == piece.heading and group[-1].page == piece.page
            if group and (not same_place or size + len(piece.text) > max_chars):
                close()
            group.append(piece)
    close()
    return out


def _merge(blocks: list[Block]) -> Chunk:
    pages = [b.page for b in blocks if b.page is not None]
    return Chunk("\n\n".join(b.text for b in blocks), blocks[0].start_line, blocks[-1].end_line, blocks[0].heading,
                 min(pages) if pages else None, max(pages) if pages else None)


_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=\S)")


def _split(block: Block, max_chars: int, overlap: int) -> Iterator[Block]:
    """``block`` as it is, or in pieces of at most ``max_chars`` with ``overlap`` carried over."""
    if len(block.text) <= max_chars:
        yield block
        return
    units = _units(block.text, max_chars)
    lines = block.end_line - block.start_line + 1
    total = len(block.text)
    piece: list[str] = []
    done = 0  # characters of the block before this piece (for its line range)

    def emit(parts: list[str]) -> Block:
        text = " ".join(parts)
        first = block.start_line + (done * lines) // max(total, 1)
        last = min(block.end_line, block.start_line + ((done + len(text)) * lines) // max(total, 1))
        return Block(text, first, max(first, last), block.heading, block.page)

    for unit in units:
        if piece and len(" ".join(piece)) + 1 + len(unit) > max_chars:
            yield emit(piece)
            carried: list[str] = []
            for prev in reversed(piece):  # whole sentences from the end, up to ``overlap`` characters
                if len(" ".join([prev, *carried])) > overlap:
                    break
                carried.insert(0, prev)
            done += len(" ".join(piece)) - len(" ".join(carried))
            piece = carried
        piece.append(unit)
    if piece:
        yield emit(piece)


def _units(text: str, max_chars: int) -> list[str]:
    """Sentences; a sentence longer than ``max_chars`` in word runs that fit."""
    out: list[str] = []
    for sentence in _SENTENCE.split(" ".join(text.split())):
        if len(sentence) <= max_chars:
            out.append(sentence)
            continue
        words, run = sentence.split(" "), ""
        for word in words:
            while len(word) > max_chars:  # a "word" longer than a chunk (a URL, a base64 blob)
                if run:
                    out.append(run)
                    run = ""
                out.append(word[:max_chars])
                word = word[max_chars:]
            if run and len(run) + 1 + len(word) > max_chars:
                out.append(run)
                run = word
            else:
                run = f"{run} {word}" if run else word
        if run:
            out.append(run)
    return out
