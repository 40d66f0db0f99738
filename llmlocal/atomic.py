"""Files that are never half true: write beside the target, fsync, then rename into place."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from .errors import OutputNotWritableError

CHUNK = 1 << 20  # hash and copy in 1 MiB steps: never read a model into memory


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike[str], mode: str = "w", *, encoding: str | None = "utf-8") -> Iterator[IO]:
    """Open a temporary file next to ``path``; on clean exit fsync it and rename it onto ``path``.

    On an exception the temporary file is removed and ``path`` keeps its old content (or stays
    absent), so a crash never leaves a file that looks complete but is not.
    """
    target = Path(path)
    binary = "b" in mode
    try:
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    except OSError as exc:  # name the file the caller asked for, not our temporary one
        raise OSError(exc.errno, exc.strerror, str(target)) from None
    try:
        with os.fdopen(fd, mode, encoding=None if binary else encoding, newline=None if binary else "") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; these are ordinary user files
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """Atomically replace ``path`` with ``text``."""
    with atomic_writer(path) as fh:
        fh.write(text)


def sha256_file(path: str | os.PathLike[str], *, progress=None) -> str:
    """SHA-256 of a file, read in chunks; ``progress(n)`` is called with each chunk's size."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
            if progress is not None:
                progress(len(chunk))
    return digest.hexdigest()


def check_writable(output: str | os.PathLike[str]) -> None:
    """Fail now, before any work, if ``output`` (or a sidecar beside it) could not be written.

    It really creates and removes a file beside it: permission bits alone do not tell (root
    ignores them, an immutable directory refuses even root).

    Raises:
        OutputNotWritableError
    """
    path = Path(output)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise OutputNotWritableError(str(path), f"directory {parent} does not exist")
    if path.is_dir():
        raise OutputNotWritableError(str(path), "it is a directory")
    try:  # the sidecar is written beside it through a temporary file
        fd, tmp = tempfile.mkstemp(dir=parent, prefix=f".{path.name}.", suffix=".probe")
        os.close(fd)
        os.unlink(tmp)
        if path.exists():
            with open(path, "ab"):
                pass
    except OSError as exc:
        raise OutputNotWritableError(str(path), exc.strerror or str(exc)) from None
