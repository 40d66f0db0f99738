"""A small byte-progress line on stderr (bytes, rate, ETA).

It offers the slice of tqdm's interface that huggingface_hub's ``http_get(tqdm_class=...)``
uses (constructor keywords, ``update``, context manager), so one bar serves downloads, copies
from a PyPI package and re-hashing.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO


def human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def human_seconds(s: float) -> str:
    s = int(s)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


class ByteProgress:
    """Redraws one line at most every 0.2 s; prints a final line on close."""

    enabled = True

    def __init__(self, *_: Any, total: int | None = None, initial: int = 0, desc: str = "",
                 disable: bool = False, file: TextIO | None = None, **__: Any) -> None:
        self.total, self.desc = total, desc
        self.n: float = initial
        self.start_n, self.start = initial, time.monotonic()
        self.disable = disable or not self.enabled
        self.file = file or sys.stderr
        self._last = 0.0
        self._tty = bool(getattr(self.file, "isatty", lambda: False)())

    def __enter__(self) -> ByteProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, n: int | float | None = 1) -> None:
        self.n += n or 0
        now = time.monotonic()
        if now - self._last >= (0.2 if self._tty else 5.0):
            self._last = now
            self._draw(final=False)

    def _draw(self, *, final: bool) -> None:
        if self.disable:
            return
        elapsed = max(time.monotonic() - self.start, 1e-6)
        rate = (self.n - self.start_n) / elapsed
        parts = [self.desc, human_bytes(self.n)]
        if self.total:
            parts[-1] += f" / {human_bytes(self.total)} ({100 * self.n / self.total:.0f}%)"
        parts.append(f"{human_bytes(rate)}/s")
        if self.total and rate > 0 and not final:
            parts.append(f"ETA {human_seconds((self.total - self.n) / rate)}")
        elif final:
            parts.append(f"in {human_seconds(elapsed)}")
        line = "  ".join(p for p in parts if p)
        if self._tty:
            self.file.write("\r\x1b[K" + line + ("\n" if final else ""))
        else:
            self.file.write(line + "\n")
        self.file.flush()

    def close(self) -> None:
        self._draw(final=True)
        self.disable = True  # close() may be called twice (context manager and explicit)


class SilentProgress(ByteProgress):
    """The same interface, printing nothing (for --quiet and non-interactive callers)."""

    enabled = False
