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
    id: Any
    label: str  # the answer: a label, or the abstain label
    confidence: float  # probability of the most probable label
    probabilities: dict[str, float]
    top: str  # the most probable label, even when abstaining

    def as_dict(self) -> dict:
        return {"id": self.id, "label": self.label, "confidence": self.confidence,
                "probabilities": self.probabilities}
