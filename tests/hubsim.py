"""An imitation of the Hugging Face Hub over real HTTP on 127.0.0.1, for tests.

The real ``huggingface_hub`` client talks to it unmodified: pass ``hub.endpoint`` as
``endpoint=`` (or ``HF_ENDPOINT``). Two servers run, a "hub" and a "cdn", so the resolve
redirect crosses origins as it does in real life and the client drops its auth header.

    with FakeHub() as hub:
        entry = hub.add_file("org/model-GGUF", "model.Q4_K_M.gguf", b"...")
        hub.set_fault("model.Q4_K_M.gguf", drop_after=12 * 2**20, times=1)
        path = hf_hub_download("org/model-GGUF", "model.Q4_K_M.gguf",
                               endpoint=hub.endpoint, cache_dir=tmp, token=False)
        assert hub.bytes_sent("model.Q4_K_M.gguf") > entry.size

What the client needs from the resolve answer (huggingface_hub 2.4.0, ``get_hf_file_metadata``):
``X-Repo-Commit`` (else ``FileMetadataError``), ``X-Linked-Etag`` or ``ETag`` (same), and
``Location``; ``X-Linked-Size`` is optional. Errors map to exception classes only through
``X-Error-Code``: ``RepoNotFound``, ``EntryNotFound``, ``RevisionNotFound``, ``GatedRepo``.

Run standalone for tests that need a separate process (the endpoint is stdout's first line):

    python tests/hubsim.py --serve-file ORG/NAME FILENAME PATH [--throttle BPS]

Only the standard library is imported, so the file runs under any interpreter.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import http.server
import itertools
import json
import re
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple
from urllib.parse import quote, unquote, urlsplit

__all__ = ["FakeHub", "FileEntry", "Faults", "Request"]

_CHUNK = 256 * 1024
_FLIP = bytes(255 - b for b in range(256))  # wrong_bytes: every byte inverted, same length
_RESOLVE = re.compile(r"/(?P<repo>.+?)/resolve/(?P<rev>[^/]+)/(?P<file>.+)")
_CDN = re.compile(r"/cdn/(?P<sha>[0-9a-f]{64})")
_RANGE = re.compile(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", re.IGNORECASE)
_REPO_TYPE_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}

# Messages as the Hub words them, so error text in our own output looks like the real thing.
_GATED_401 = (
    "Access to model {repo} is restricted. You must have access to it and be authenticated "
    "to access it. Please log in."
)
_GATED_403 = (
    "Access to model {repo} is restricted and you are not in the authorized list. "
    "Visit https://huggingface.co/{repo} to ask for access."
)
_STATUS_MESSAGES = {
    404: "Entry not found",
    500: "Internal Error - We're working hard to fix this as soon as possible!",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


@dataclasses.dataclass
class Faults:
    """What goes wrong when one file is asked for. Replace it (``hub.set_fault``) between requests.

    Body faults (``drop_after``, ``reset_after``, ``short_body``, ``stall``) hit CDN GETs that carry
    a body; ``times`` bounds how many of those responses they hit (``None``: every one).

    Attributes:
        drop_after: send the headers with the full Content-Length, then this many body bytes,
            then shut the socket down and close it (FIN). The client sees a short read
            (``RemoteProtocolError`` in httpx), which ``http_get`` retries with a Range.
        reset_after: like ``drop_after`` but close with SO_LINGER 0, so the peer gets a TCP RST
            (``ConnectionResetError``, httpx ``ReadError``).
        times: how many body responses the body faults spoil; ``None`` means all of them.
        wrong_bytes: serve the right number of bytes, every one inverted; the Hub's headers
            still claim the true sha256.
        short_body: every body stops at this absolute offset (``True``: half the file) although
            Content-Length promised more, and the connection then closes cleanly: a truncated
            object on the CDN, which no retry can get past.
        status: ``(code, n)`` answers the first ``n`` requests on the ``where`` side with
            ``code`` (``n=None``: all of them).
        where: ``"hub"`` (the resolve HEAD/GET) or ``"cdn"``; only for ``status``.
        error_code: the ``X-Error-Code`` sent with ``status``. ``None`` picks the Hub's usual one
            (401/403 -> ``GatedRepo``, 404 -> ``EntryNotFound``, else none); ``""`` sends none.
        ignore_range: answer 200 with the whole body even when a Range is asked.
        stall: seconds to wait after the CDN headers, before the first body byte.
        etag_override: the hub advertises this ``X-Linked-Etag`` instead of the sha256.
        size_override: the hub advertises this ``X-Linked-Size`` instead of the size.
        missing_header: a header name (or several) left out of every response for this file.
    """

    drop_after: int | None = None
    reset_after: int | None = None
    times: int | None = None
    wrong_bytes: bool = False
    short_body: bool | int = False
    status: tuple[int, int | None] | None = None
    where: str = "hub"
    error_code: str | None = None
    ignore_range: bool = False
    stall: float = 0.0
    etag_override: str | None = None
    size_override: int | None = None
    missing_header: str | tuple[str, ...] | None = None
    # Counters, advanced by the server under the hub's lock.
    body_faults_used: int = 0
    statuses_used: int = 0

    def __post_init__(self) -> None:
        if self.where not in ("hub", "cdn"):
            raise ValueError(f"where must be 'hub' or 'cdn', not {self.where!r}")
        if self.status is not None and len(self.status) != 2:
            raise ValueError("status must be a (code, n) pair")
        if isinstance(self.missing_header, str):
            self.missing_header = (self.missing_header,)

    def _has_body_fault(self) -> bool:
        return (
            self.drop_after is not None
            or self.reset_after is not None
            or self.short_body is not False
            or self.stall > 0
        )

    def _omits(self, header: str) -> bool:
        return any(header.lower() == name.lower() for name in self.missing_header or ())


@dataclasses.dataclass(eq=False)
class FileEntry:
    """One added file: its bytes (in memory or on disk), their sha256, and its faults.

    ``commit`` is the commit it was added in; later commits that carry it over share this object.
    """

    repo_id: str
    filename: str
    revision: str
    commit: str
    sha256: str
    size: int
    data: bytes | None = dataclasses.field(default=None, repr=False)
    path: Path | None = None
    repo_type: str = "model"
    faults: Faults = dataclasses.field(default_factory=Faults)

    @property
    def git_oid(self) -> str:
        """The git blob id of this file's LFS pointer: what the Hub sends as the redirect's ETag."""
        pointer = (
            "version https://git-lfs.github.com/spec/v1\n"
            f"oid sha256:{self.sha256}\nsize {self.size}\n"
        ).encode()
        return hashlib.sha1(b"blob %d\0" % len(pointer) + pointer).hexdigest()

    def iter_bytes(self, start: int, length: int, chunk: int) -> Iterator[bytes]:
        """Yield ``length`` bytes from ``start`` in pieces of at most ``chunk``, never all at once."""
        end = start + length
        if self.data is not None:
            view = memoryview(self.data)
            for pos in range(start, end, chunk):
                yield bytes(view[pos : min(pos + chunk, end)])
            return
        assert self.path is not None
        with open(self.path, "rb") as f:
            f.seek(start)
            pos = start
            while pos < end:
                piece = f.read(min(chunk, end - pos))
                if not piece:
                    return
                pos += len(piece)
                yield piece


class Request(NamedTuple):
    """One request as seen by a snapshot: ``status`` is what was answered (0: nothing was),
    ``bytes_sent`` the body bytes handed to the socket so far."""

    method: str
    role: str  # "hub" or "cdn"
    path: str
    range: str | None
    status: int
    bytes_sent: int


@dataclasses.dataclass
class _Record:
    """A request as it happens: logged before its headers go out, counted before each write,
    so a client that has its answer always finds it in ``FakeHub.requests``."""

    method: str
    role: str
    path: str
    range: str | None
    entry: FileEntry | None = None
    status: int = 0
    bytes_sent: int = 0

    def freeze(self) -> Request:
        return Request(self.method, self.role, self.path, self.range, self.status, self.bytes_sent)


@dataclasses.dataclass
class _Repo:
    refs: dict[str, str] = dataclasses.field(default_factory=dict)  # branch or tag -> commit
    trees: dict[str, dict[str, FileEntry]] = dataclasses.field(default_factory=dict)


class FakeHub:
    """A Hub and a CDN on two 127.0.0.1 ports, serving registered files with optional faults.

    Args:
        throttle: bytes per second for CDN bodies (``None``: as fast as possible).
        timeout: seconds a connection may sit idle or blocked before its thread gives up.
    """

    def __init__(self, *, throttle: int | None = None, timeout: float = 30.0) -> None:
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._timeout = timeout
        self._throttle = throttle
        self._repos: dict[str, _Repo] = {}
        self._blobs: dict[str, FileEntry] = {}
        self._log: list[_Record] = []
        self._errors: list[BaseException] = []
        self._connections: dict[socket.socket, threading.Thread] = {}
        self._request_ids = itertools.count(1)
        self._servers = [_Server(self, "hub"), _Server(self, "cdn")]
        self._threads = [
            threading.Thread(
                target=server.serve_forever,
                kwargs={"poll_interval": 0.05},
                name=f"fakehub-{server.role}",
                daemon=True,
            )
            for server in self._servers
        ]
        self._closed = False
        for thread in self._threads:
            thread.start()

    # -- addresses ---------------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        """The Hub's base URL, for ``endpoint=`` or ``HF_ENDPOINT``."""
        return f"http://127.0.0.1:{self._servers[0].server_port}"

    @property
    def cdn_endpoint(self) -> str:
        return f"http://127.0.0.1:{self._servers[1].server_port}"

    # -- content -----------------------------------------------------------------------------

    def add_file(
        self,
        repo_id: str,
        filename: str,
        data: bytes | None = None,
        *,
        path: str | Path | None = None,
        revision: str = "main",
        commit: str | None = None,
        sha256: str | None = None,
        repo_type: str = "model",
    ) -> FileEntry:
        """Register a file, from ``data`` or streamed from ``path`` (never read whole).

        ``revision`` (a branch or tag) then points at ``commit``. Without ``commit`` the file joins
        the revision's current commit, or a stable one derived from repo and revision. With a new
        ``commit`` the revision moves there and the files of its old commit are carried over, so
        the old commit still serves the old bytes: the "upstream changed" case. Pass ``sha256`` to
        skip hashing a large file you already know. Files with identical bytes share one CDN URL,
        where the faults of the one added last apply.
        """
        if (data is None) == (path is None):
            raise TypeError("give exactly one of data or path")
        if repo_type not in _REPO_TYPE_PREFIX:
            raise ValueError(f"unknown repo_type {repo_type!r}")
        if commit is not None and not re.fullmatch(r"[0-9a-f]{40}", commit):
            raise ValueError(f"commit must be 40 lowercase hex digits, not {commit!r}")
        if data is not None:
            size = len(data)
            digest = sha256 or hashlib.sha256(data).hexdigest()
        else:
            path = Path(path)  # type: ignore[arg-type]
            size = path.stat().st_size
            digest = sha256 or _hash_file(path)
        key = _REPO_TYPE_PREFIX[repo_type] + repo_id
        with self._lock:
            repo = self._repos.setdefault(key, _Repo())
            previous = repo.refs.get(revision)
            commit = (
                commit
                or previous
                or hashlib.sha1(f"{key}@{revision}".encode()).hexdigest()
            )
            if commit not in repo.trees:
                # Later commits share the entry objects: one file, one set of faults.
                repo.trees[commit] = dict(repo.trees[previous]) if previous else {}
            entry = FileEntry(
                repo_id=repo_id,
                filename=filename,
                revision=revision,
                commit=commit,
                sha256=digest,
                size=size,
                data=data,
                path=path,  # type: ignore[arg-type]
                repo_type=repo_type,
            )
            repo.trees[commit][filename] = entry
            repo.refs[revision] = commit
            self._blobs[digest] = entry
        return entry

    def set_fault(self, filename: str, *, repo_id: str | None = None, **options: object) -> None:
        """Give every registered version of ``filename`` fresh ``Faults(**options)``.

        Without options this clears its faults. Raises KeyError if no such file was added.
        """
        entries = self._entries(filename, repo_id)
        if not entries:
            raise KeyError(filename)
        for entry in entries:
            entry.faults = Faults(**options)  # type: ignore[arg-type]

    def clear_faults(self) -> None:
        for entry in self._entries(None, None):
            entry.faults = Faults()

    def throttle(self, bytes_per_second: int | None) -> None:
        """Slow every CDN body to about this rate, in small pieces; ``None`` lifts the limit."""
        if bytes_per_second is not None and bytes_per_second <= 0:
            raise ValueError("bytes_per_second must be positive")
        self._throttle = bytes_per_second

    # -- what happened -----------------------------------------------------------------------

    @property
    def requests(self) -> list[Request]:
        """Every answered request so far, oldest first (a copy)."""
        with self._lock:
            return [record.freeze() for record in self._log]

    def requests_for(
        self, filename: str, *, repo_id: str | None = None, role: str | None = None
    ) -> list[Request]:
        """The requests that concerned ``filename``, on one side or both."""
        with self._lock:
            return [
                record.freeze()
                for record in self._log
                if record.entry is not None
                and record.entry.filename == filename
                and (repo_id is None or record.entry.repo_id == repo_id)
                and (role is None or record.role == role)
            ]

    def bytes_sent(self, filename: str, *, repo_id: str | None = None) -> int:
        """Body bytes the CDN sent for ``filename`` so far, across all its requests."""
        return sum(r.bytes_sent for r in self.requests_for(filename, repo_id=repo_id, role="cdn"))

    def clear_requests(self) -> None:
        with self._lock:
            self._log.clear()

    @property
    def errors(self) -> list[BaseException]:
        """Unexpected exceptions raised in handler threads (a healthy run has none)."""
        with self._lock:
            return list(self._errors)

    # -- lifetime ----------------------------------------------------------------------------

    def close(self, timeout: float = 5.0) -> None:
        """Stop both servers and every connection thread, even with a client stuck mid-body."""
        if self._closed:
            return
        self._closed = True
        self._closing.set()  # wakes stalls and throttle sleeps
        for server in self._servers:
            server.shutdown()
        with self._lock:
            connections = list(self._connections.items())
        for sock, _ in connections:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # unblocks a thread in recv() or sendall()
            except OSError:
                pass
        for server in self._servers:
            server.server_close()
        deadline = time.monotonic() + timeout
        for thread in self._threads + [thread for _, thread in connections]:
            thread.join(max(0.0, deadline - time.monotonic()))

    def __enter__(self) -> FakeHub:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- used by the handler -----------------------------------------------------------------

    def _entries(self, filename: str | None, repo_id: str | None) -> list[FileEntry]:
        with self._lock:
            found: dict[int, FileEntry] = {}
            for repo in self._repos.values():
                for tree in repo.trees.values():
                    for entry in tree.values():
                        if (filename is None or entry.filename == filename) and (
                            repo_id is None or entry.repo_id == repo_id
                        ):
                            found[id(entry)] = entry
            return list(found.values())

    def _resolve(self, repo_key: str, revision: str, filename: str) -> tuple[FileEntry | None, str | None, str | None]:
        """Return (entry, error_code, commit) for a resolve URL."""
        with self._lock:
            repo = self._repos.get(repo_key)
            if repo is None:
                return None, "RepoNotFound", None
            commit = repo.refs.get(revision) or (revision if revision in repo.trees else None)
            if commit is None:
                return None, "RevisionNotFound", None
            entry = repo.trees[commit].get(filename)
            return entry, None if entry else "EntryNotFound", commit

    def _blob(self, sha256: str) -> FileEntry | None:
        with self._lock:
            return self._blobs.get(sha256)

    def _take_status(self, faults: Faults, role: str) -> int | None:
        with self._lock:
            if faults.status is None or faults.where != role:
                return None
            code, n = faults.status
            if n is not None and faults.statuses_used >= n:
                return None
            faults.statuses_used += 1
            return code

    def _take_body_fault(self, faults: Faults) -> bool:
        with self._lock:
            if not faults._has_body_fault():
                return False
            if faults.times is not None and faults.body_faults_used >= faults.times:
                return False
            faults.body_faults_used += 1
            return True

    def _record(self, record: _Record) -> None:
        with self._lock:
            self._log.append(record)

    def _record_error(self, error: BaseException) -> None:
        with self._lock:
            self._errors.append(error)

    def _track(self, sock: socket.socket) -> None:
        with self._lock:
            self._connections[sock] = threading.current_thread()

    def _untrack(self, sock: socket.socket) -> None:
        with self._lock:
            self._connections.pop(sock, None)

    def _pause(self, seconds: float) -> bool:
        """Sleep unless the hub closes first; True if it is closing."""
        return self._closing.wait(seconds)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # FakeHub.close joins connection threads itself, with a deadline
    request_queue_size = 64

    def __init__(self, hub: FakeHub, role: str) -> None:
        self.hub = hub
        self.role = role
        super().__init__(("127.0.0.1", 0), _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls getfqdn(), a reverse DNS lookup that can take seconds.
        http.server.socketserver.TCPServer.server_bind(self)  # type: ignore[attr-defined]
        self.server_name, self.server_port = self.server_address[:2]

    def handle_error(self, request: object, client_address: object) -> None:
        # Instead of the traceback socketserver prints to stderr.
        error = sys.exc_info()[1]
        if error is not None and not isinstance(error, OSError):
            self.hub._record_error(error)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the client's connection pool expects
    server_version = "FakeHub/1"
    server: _Server

    def setup(self) -> None:
        self.timeout = self.server.hub._timeout
        super().setup()
        self.server.hub._track(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass
        finally:
            self.server.hub._untrack(self.connection)

    def log_message(self, format: str, *args: object) -> None:
        pass  # the request log is FakeHub.requests

    def do_HEAD(self) -> None:
        self._dispatch(head=True)

    def do_GET(self) -> None:
        self._dispatch(head=False)

    # -- plumbing ----------------------------------------------------------------------------

    def _dispatch(self, *, head: bool) -> None:
        self._entry: FileEntry | None = None
        self._rec = _Record(self.command, self.server.role, self.path, self.headers.get("Range"))
        self._logged = False
        hub = self.server.hub
        try:
            if self.server.role == "hub":
                self._serve_resolve(head=head)
            else:
                self._serve_cdn(head=head)
        except OSError:
            # The client went away (BrokenPipe, ConnectionReset, timeout) or close() cut it off.
            self.close_connection = True
        except Exception as error:  # a bug in this file: keep it for the test to see
            hub._record_error(error)
            self.close_connection = True
        finally:
            if not self._logged:  # the client left before any answer
                hub._record(self._rec)

    def _start(self, status: int, headers: list[tuple[str, str]]) -> None:
        faults = self._entry.faults if self._entry is not None else None
        self._rec.status, self._rec.entry, self._logged = status, self._entry, True
        self.server.hub._record(self._rec)
        self.send_response(status)
        for name, value in headers:
            if faults is None or not faults._omits(name):
                self.send_header(name, value)
        self.send_header("X-Request-Id", f"fakehub-{next(self.server.hub._request_ids)}")
        self.end_headers()

    def _send_error(
        self, status: int, error_code: str | None, message: str, *, head: bool, commit: str | None = None
    ) -> None:
        body = json.dumps({"error": message}).encode()
        headers = [("Content-Type", "application/json; charset=utf-8"), ("Content-Length", str(len(body)))]
        if error_code:
            headers += [("X-Error-Code", error_code), ("X-Error-Message", message)]
        if commit:
            headers.append(("X-Repo-Commit", commit))
        self._start(status, headers)
        if not head:
            self._rec.bytes_sent += len(body)
            self.wfile.write(body)

    def _send_fault_status(self, status: int, *, head: bool) -> None:
        assert self._entry is not None
        faults = self._entry.faults
        repo = self._entry.repo_id
        error_code = faults.error_code
        if error_code is None:
            error_code = {401: "GatedRepo", 403: "GatedRepo", 404: "EntryNotFound"}.get(status)
        if error_code == "GatedRepo":
            message = (_GATED_403 if status == 403 else _GATED_401).format(repo=repo)
        elif error_code == "RepoNotFound":
            message = "Repository not found"
        elif error_code == "RevisionNotFound":
            message = f"Invalid rev id: {self._entry.revision}"
        else:
            message = _STATUS_MESSAGES.get(status) or self.responses.get(status, ("Error",))[0]
        self._send_error(status, error_code, message, head=head)

    # -- the Hub -----------------------------------------------------------------------------

    def _serve_resolve(self, *, head: bool) -> None:
        match = _RESOLVE.fullmatch(urlsplit(self.path).path)
        if match is None:
            self._send_error(404, None, "Not Found", head=head)
            return
        repo_key, revision, filename = (unquote(match[g]) for g in ("repo", "rev", "file"))
        entry, error_code, commit = self.server.hub._resolve(repo_key, revision, filename)
        if entry is None:
            if error_code == "RepoNotFound":
                # The Hub answers 401 to anonymous callers so private repos do not leak.
                status = 404 if self.headers.get("Authorization") else 401
                self._send_error(status, error_code, "Repository not found", head=head)
            elif error_code == "RevisionNotFound":
                self._send_error(404, error_code, f"Invalid rev id: {revision}", head=head)
            else:
                self._send_error(404, error_code, "Entry not found", head=head, commit=commit)
            return
        self._entry = entry
        faults = entry.faults
        status = self.server.hub._take_status(faults, "hub")
        if status is not None:
            self._send_fault_status(status, head=head)
            return
        etag = faults.etag_override or entry.sha256
        size = entry.size if faults.size_override is None else faults.size_override
        self._start(
            302,
            [
                ("Location", f"{self.server.hub.cdn_endpoint}/cdn/{entry.sha256}"),
                ("X-Repo-Commit", commit),
                ("X-Linked-Etag", f'"{etag}"'),
                ("X-Linked-Size", str(size)),
                ("ETag", f'"{entry.git_oid}"'),
                ("Content-Length", "0"),
            ],
        )

    # -- the CDN -----------------------------------------------------------------------------

    def _serve_cdn(self, *, head: bool) -> None:
        hub = self.server.hub
        match = _CDN.fullmatch(urlsplit(self.path).path)
        entry = hub._blob(match["sha"]) if match else None
        if entry is None:
            self._send_error(404, None, "Not Found", head=head)
            return
        self._entry = entry
        faults = entry.faults
        status = hub._take_status(faults, "cdn")
        if status is not None:
            self._send_fault_status(status, head=head)
            return

        size = entry.size
        start, end = 0, size - 1
        wanted = self.headers.get("Range")
        partial = False
        if wanted and not faults.ignore_range:
            span = _parse_range(wanted, size)
            if span is None:
                self._start(416, [("Content-Range", f"bytes */{size}"), ("Content-Length", "0")])
                return
            if span != "all":
                (start, end), partial = span, True
        length = end - start + 1
        basename = entry.filename.rsplit("/", 1)[-1]
        headers = [
            ("Content-Type", "application/octet-stream"),
            ("Content-Length", str(length)),
            ("Accept-Ranges", "bytes"),
            ("ETag", f'"{entry.sha256}"'),
            ("Content-Disposition", f"inline; filename*=UTF-8''{quote(basename)}; filename=\"{basename}\";"),
        ]
        if partial:
            headers.append(("Content-Range", f"bytes {start}-{end}/{size}"))
        self._start(206 if partial else 200, headers)
        if head:
            return

        limit, cut = length, None
        if hub._take_body_fault(faults):
            if faults.stall > 0 and hub._pause(faults.stall):
                return
            for kind, after in (("drop", faults.drop_after), ("reset", faults.reset_after)):
                if after is not None and after < limit:
                    limit, cut = after, kind
            if faults.short_body is not False:
                stop = size // 2 if faults.short_body is True else int(faults.short_body)
                if stop - start < limit:
                    limit, cut = max(0, stop - start), "short"
        self._write_body(entry, start, limit, flip=faults.wrong_bytes)
        if cut == "drop":
            self.connection.shutdown(socket.SHUT_RDWR)
            self.connection.close()
            self.close_connection = True
        elif cut == "reset":
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
            self.close_connection = True
        elif cut == "short":
            self.close_connection = True  # socketserver closes it in order after we return

    def _write_body(self, entry: FileEntry, start: int, length: int, *, flip: bool) -> None:
        hub = self.server.hub
        rate = hub._throttle
        chunk = _CHUNK if rate is None else max(1024, min(_CHUNK, rate // 20))
        for piece in entry.iter_bytes(start, length, chunk):
            if flip:
                piece = piece.translate(_FLIP)
            self._rec.bytes_sent += len(piece)
            self.wfile.write(piece)
            rate = hub._throttle  # a test may change it mid-body
            if rate is not None and hub._pause(len(piece) / rate):
                return
            if hub._closing.is_set():
                return


def _parse_range(header: str, size: int) -> tuple[int, int] | str | None:
    """(start, end) inclusive for one ``bytes=`` range, or None if it cannot be satisfied.

    A malformed or multi-range header is ignored, as HTTP allows: "all" means send a 200.
    """
    match = _RANGE.fullmatch(header)
    if match is None or (not match[1] and not match[2]):
        return "all"
    if not match[1]:  # suffix: the last N bytes
        n = int(match[2])
        return (max(0, size - n), size - 1) if n > 0 and size > 0 else None
    start = int(match[1])
    if match[2] and int(match[2]) < start:
        return "all"
    if start >= size:
        return None
    return start, min(int(match[2]), size - 1) if match[2] else size - 1


def _hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def main(argv: list[str] | None = None) -> int:
    """Serve files until SIGTERM or SIGINT; print the endpoint as the first line of stdout."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--serve-file",
        nargs=3,
        action="append",
        required=True,
        metavar=("REPO_ID", "FILENAME", "PATH"),
        help="serve PATH as FILENAME of REPO_ID (repeatable)",
    )
    parser.add_argument("--throttle", type=int, default=None, metavar="BPS", help="CDN bytes per second")
    parser.add_argument("--revision", default="main")
    parser.add_argument("--commit", default=None, help="40-hex commit the revision points at")
    args = parser.parse_args(argv)

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    with FakeHub(throttle=args.throttle) as hub:
        for repo_id, filename, path in args.serve_file:
            hub.add_file(repo_id, filename, path=Path(path), revision=args.revision, commit=args.commit)
        print(hub.endpoint, flush=True)
        while not stop.wait(0.2):
            pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
