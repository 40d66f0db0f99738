"""The one progress module: its lines, as pure string logic (a StringIO stands in for stderr)."""

from __future__ import annotations

import io
import re

from llmlocal.progress import ByteProgress, ItemProgress, human_bytes


def test_item_progress_line_has_counts_rate_extra_eta_and_tail() -> None:
    out = io.StringIO()  # not a terminal: whole lines, not redraws
    bar = ItemProgress("batch", 10, file=out)
    bar.update(3, counted=2, extra=("5.0 tok/s",), tail=("1 failed",), force=True)
    assert re.fullmatch(r"batch 3/10  [\d.]+ items/s  5\.0 tok/s  ETA \d+:\d\d  1 failed\n", out.getvalue())
    bar.update(3, force=True)  # nothing new: no line
    assert out.getvalue().count("\n") == 1


def test_item_progress_callback_and_disabled_bar() -> None:
    out = io.StringIO()
    bar = ItemProgress("classified", 0, file=out)
    callback = bar.callback()
    callback(4, 4)  # the first update is always shown (nothing was shown 10 s ago)
    assert out.getvalue().startswith("classified 4/4  ") and "ETA" not in out.getvalue()
    quiet = io.StringIO()
    ItemProgress("x", 5, enabled=False, file=quiet).update(1, force=True)
    assert quiet.getvalue() == ""


def test_byte_progress_final_line() -> None:
    out = io.StringIO()
    with ByteProgress(total=2_000_000, desc="model", file=out) as bar:
        bar.update(2_000_000)
    assert out.getvalue().splitlines()[-1].startswith(f"model  {human_bytes(2_000_000)} / {human_bytes(2_000_000)}")
