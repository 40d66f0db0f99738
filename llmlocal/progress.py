"""Progress lines on stderr, in one place: bytes (downloads, copies, hashing) and items (jobs).

It offers the slice of tqdm's interface that huggingface_hub's ``http_get(tqdm_class=...)``
uses (constructor keywords, ``update``, context manager), so one bar serves downloads, copies
from a PyPI package and re-hashing.
"""

from __future__ import annotations

import sys
import time
from typing import IO, Any, TextIO


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


class ItemProgress:
    """One status line for a job over items: ``label done/total``, items/s, extra fields, ETA.

    Redrawn in place at most every 0.25 s on a terminal, every 10 s elsewhere (a log file gets a
    line now and then, not thousands). ``callback()`` adapts it to the ``progress(done, total)``
    callbacks the core takes.
    """

    def __init__(self, label: str, total: int, *, enabled: bool = True, file: IO[str] | None = None) -> None:
        self.label, self.total = label, total
        self.file = file or sys.stderr
        self.enabled = enabled
        self.tty = bool(getattr(self.file, "isatty", lambda: False)())
        self.started = time.monotonic()
        self.last = 0.0
        self.shown = -1  # the done count last shown

    def update(self, done: int, *, counted: int | None = None, extra: tuple[str, ...] = (),
               tail: tuple[str, ...] = (), force: bool = False) -> None:
        """``done`` of ``total`` are done, ``counted`` of them in this run (the rate's numerator);
        ``extra`` fields go before the ETA, ``tail`` ones after it."""
        if not self.enabled or done == self.shown:
            return
        now = time.monotonic()
        if not force and now - self.last < (0.25 if self.tty else 10.0):
            return
        self.last, self.shown = now, done
        rate = (done if counted is None else counted) / max(now - self.started, 1e-6)
        left = self.total - done
        eta = (f"ETA {human_seconds(left / rate)}",) if left and rate > 0 else ()
        line = "  ".join((f"{self.label} {done}/{self.total}", f"{rate:.2f} items/s", *extra, *eta, *tail))
        self.file.write(("\r\x1b[K" + line) if self.tty else line + "\n")
        self.file.flush()

    def callback(self):
        def progress(done: int, total: int) -> None:
            self.total = total
            self.update(done)

        return progress

    def close(self) -> None:
        """End the line (on a terminal), so what is printed next starts a line of its own."""
        if self.enabled and self.tty and self.last:
            self.file.write("\n")
            self.file.flush()
