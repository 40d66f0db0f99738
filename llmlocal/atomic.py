"""Files that are never half true: write beside the target, fsync, then rename into place."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import stat
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

from .errors import DiskSpaceError, OutputNotWritableError, OutputWriteError, UsageError

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
    if path.exists() and not stat.S_ISREG(path.stat().st_mode):
        # Publishing renames a temporary file onto the path: that would replace a device node
        # (as root, /dev/null itself) or a pipe with a regular file.
        raise OutputNotWritableError(str(path), "it is not a regular file (a device or a pipe)")
    try:  # the sidecar is written beside it through a temporary file
        fd, tmp = tempfile.mkstemp(dir=parent, prefix=f".{path.name}.", suffix=".probe")
        os.close(fd)
        os.unlink(tmp)
        if path.exists():
            with open(path, "ab"):
                pass
    except OSError as exc:
        raise OutputNotWritableError(str(path), exc.strerror or str(exc)) from None


def check_not_an_input(output: str | os.PathLike[str], inputs: Iterable[str | os.PathLike[str] | None]) -> None:
    """Refuse an output that is one of the inputs (the same file, by any name): writing it would
    replace the data being read. ``None`` and ``-`` (stdin) are skipped.

    Raises:
        UsageError
    """
    if not os.path.exists(output):
        return
    for source in inputs:
        if source is None or str(source) == "-":
            continue
        with contextlib.suppress(OSError):
            if os.path.samefile(source, output):
                raise UsageError(f"the output {output} is also an input ({source}); writing it would replace it",
                                 hint="choose another output file (-o)")


def write_failure(path: str | os.PathLike[str], exc: OSError, *, next_step: str) -> DiskSpaceError | OutputWriteError:
    """The typed error for a failed write to ``path``: DiskSpaceError for a full disk or quota.

    ``next_step`` is the hint: what was kept and how to go on, which only the caller knows.
    """
    reason = exc.strerror or str(exc)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        err = DiskSpaceError(f"cannot write {path}: {reason}", hint=f"free some disk space, then {next_step}")
        err.path, err.errno = str(path), exc.errno
        return err
    if exc.errno == errno.EFBIG:
        next_step = f"raise the file size limit (`ulimit -f`), then {next_step}"
    return OutputWriteError(str(path), reason, hint=next_step, errno=exc.errno)


class FileSet:
    """Files replaced together: each is written beside its target and fsynced, and none is renamed
    into place until all of them are written, so a disk that fills part-way changes nothing.

    The renames themselves are separate steps; a crash between two of them can still leave a
    new file beside an old one, which is why manifests record the SHA-256 of what they describe.
    """

    def __init__(self) -> None:
        self._staged: list[tuple[str, Path]] = []
        self.sha256: dict[Path, str] = {}  # of each staged file, by target

    @contextlib.contextmanager
    def open(self, path: str | os.PathLike[str], mode: str = "w", *, encoding: str | None = "utf-8") -> Iterator[IO]:
        target = Path(path)
        binary = "b" in mode
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        self._staged.append((tmp, target))
        with os.fdopen(fd, mode, encoding=None if binary else encoding, newline=None if binary else "") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; these are ordinary user files
        self.sha256[target] = sha256_file(tmp)

    def write_text(self, path: str | os.PathLike[str], text: str) -> None:
        with self.open(path) as fh:
            fh.write(text)

    def commit(self) -> None:
        for tmp, target in self._staged:
            os.replace(tmp, target)
        self._staged = []

    def discard(self) -> None:
        for tmp, _ in self._staged:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        self._staged = []


@contextlib.contextmanager
def replace_together() -> Iterator[FileSet]:
    """A :class:`FileSet` whose files are all published on clean exit, and none on an exception."""
    files = FileSet()
    try:
        yield files
        files.commit()
    except BaseException:
        files.discard()
        raise
