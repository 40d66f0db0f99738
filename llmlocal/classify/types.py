"""The records classification works on: labelled examples, items to classify, predictions.

Their own module so that the job, the prompt method and the embedding method share them
without importing one another.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Example:
    """A labelled text (``line``: where it came from, for messages and the manifest)."""

    text: str
    label: str
    line: int | None = None


@dataclass(frozen=True)
class Item:
    """A text to classify; ``label`` is its gold label when it comes from a labelled file."""

    id: Any
    text: str
    line: int | None = None
    label: str | None = None


@dataclass
class Prediction:
    """One item's answer. An item that could not be scored (it does not fit the context) has
    ``error`` set and no label: the job goes on, and its row says why."""

    id: Any
    label: str | None  # the answer: a label, or the abstain label; None when ``error``
    confidence: float | None  # probability of the most probable label
    probabilities: dict[str, float] | None
    top: str | None  # the most probable label, even when abstaining
    truncated: bool = False  # the prompt method scored the start of the text (--truncate)
    chunks: int = 1  # the embedding method embedded the text in this many pieces
    error: dict | None = None  # {"type", "message", "hint"}

    def as_dict(self) -> dict:
        out: dict[str, Any] = {"id": self.id, "label": self.label, "confidence": self.confidence,
                               "probabilities": self.probabilities}
        if self.truncated:
            out["truncated"] = True
        if self.chunks > 1:
            out["chunks"] = self.chunks
        if self.error is not None:
            out["error"] = self.error
        return out
