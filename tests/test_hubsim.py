"""The imitation Hub (tests/hubsim.py) speaks the real huggingface_hub client's language.

No mocks: every test runs huggingface_hub's own download code against FakeHub over 127.0.0.1.
The tests also pin down what the client does with each fault, since store.py is built on those
facts (see /work/shared/hub-facts.md): it resumes a dropped body only in 10 MiB steps, retries
a Hub 5xx but not a CDN 5xx or a reset, and never checks the bytes it wrote.

huggingface_hub reads HF_HOME and HF_ENDPOINT when it is imported, so each call passes
``endpoint=``, ``cache_dir=`` and ``token=False`` explicitly; conftest.py also points HF_HOME at a
temporary directory for anything read at call time.
"""

from __future__ import annotations

import hashlib
import http.client
import random
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from huggingface_hub import constants, get_hf_file_metadata, hf_hub_download, hf_hub_url
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from tests.hubsim import FakeHub

pytestmark = pytest.mark.skipif(
    constants.HF_HUB_OFFLINE, reason="HF_HUB_OFFLINE is set: huggingface_hub refuses all requests"
)

MiB = 2**20
REPO = "bartowski/SmolLM2-135M-Instruct-GGUF"
FILE = "SmolLM2-135M-Instruct-Q4_1.gguf"
HUBSIM = Path(__file__).with_name("hubsim.py")


@pytest.fixture(scope="module")
def big() -> bytes:
    """16 MiB of random bytes: above the client's 10 MiB read size, so a resume uses a Range."""
    return random.Random(0).randbytes(16 * MiB)


@pytest.fixture
def hub():
    with FakeHub() as hub:
        yield hub
    assert hub.errors == []  # no exception escaped a handler thread


def download(hub: FakeHub, tmp_path: Path, *, repo: str = REPO, filename: str = FILE, **kwargs) -> Path:
    return Path(
        hf_hub_download(
            repo, filename, endpoint=hub.endpoint, cache_dir=tmp_path / "cache", token=False, **kwargs
        )
    )


def metadata(hub: FakeHub, *, repo: str = REPO, filename: str = FILE, revision: str | None = None):
    return get_hf_file_metadata(hf_hub_url(repo, filename, revision=revision, endpoint=hub.endpoint), token=False)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def cdn_log(hub: FakeHub) -> list[tuple[str | None, int, int]]:
    return [(r.range, r.status, r.bytes_sent) for r in hub.requests_for(FILE, role="cdn")]


def test_download_returns_the_bytes_and_a_pinned_commit_needs_no_request(hub, tmp_path, big):
    entry = hub.add_file(REPO, FILE, big)

    assert download(hub, tmp_path).read_bytes() == big
    assert [(r.method, r.role, r.status) for r in hub.requests] == [("HEAD", "hub", 302), ("GET", "cdn", 200)]
    assert hub.bytes_sent(FILE) == len(big)

    hub.clear_requests()
    assert download(hub, tmp_path, revision=entry.commit).read_bytes() == big
    assert hub.requests == []


def test_metadata_gives_sha256_size_and_commit_without_a_cdn_request(hub, big):
    entry = hub.add_file(REPO, FILE, big)

    meta = metadata(hub)

    assert (meta.etag, meta.size, meta.commit_hash) == (sha256(big), len(big), entry.commit)
    assert meta.location == f"{hub.cdn_endpoint}/cdn/{entry.sha256}"
    assert {r.role for r in hub.requests} == {"hub"}


def test_overrides_change_what_the_hub_advertises(hub, big):
    hub.add_file(REPO, FILE, big)
    hub.set_fault(FILE, etag_override="0" * 64, size_override=7)

    meta = metadata(hub)

    assert (meta.etag, meta.size) == ("0" * 64, 7)


def test_without_x_linked_etag_the_client_falls_back_to_the_pointer_etag(hub, big):
    entry = hub.add_file(REPO, FILE, big)
    hub.set_fault(FILE, missing_header="X-Linked-Etag")

    assert metadata(hub).etag == entry.git_oid != entry.sha256


def test_a_new_commit_moves_the_branch_and_the_old_commit_still_serves_old_bytes(hub):
    old = hub.add_file(REPO, FILE, b"old bytes", commit="1" * 40)
    other = hub.add_file(REPO, "README.md", b"readme")
    new = hub.add_file(REPO, FILE, b"new bytes!", commit="2" * 40)

    assert metadata(hub).etag == new.sha256
    assert metadata(hub, revision=old.commit).etag == old.sha256
    assert metadata(hub, filename="README.md").commit_hash == new.commit != other.commit


@pytest.mark.slow
def test_dropped_connection_resumes_in_process_with_a_range(hub, tmp_path, big):
    hub.add_file(REPO, FILE, big)
    hub.set_fault(FILE, drop_after=12 * MiB, times=1)

    assert download(hub, tmp_path).read_bytes() == big

    # The client writes whole 10 MiB reads only, so it resumes from the last full one.
    resumed_at = 12 * MiB // constants.DOWNLOAD_CHUNK_SIZE * constants.DOWNLOAD_CHUNK_SIZE
    assert cdn_log(hub) == [(None, 200, 12 * MiB), (f"bytes={resumed_at}-", 206, len(big) - resumed_at)]


@pytest.mark.slow
def test_a_server_that_ignores_range_still_yields_the_right_bytes(hub, tmp_path, big):
    hub.add_file(REPO, FILE, big)
    hub.set_fault(FILE, drop_after=12 * MiB, times=1, ignore_range=True)

    assert download(hub, tmp_path).read_bytes() == big
    assert [status for _, status, _ in cdn_log(hub)] == [200, 200]


CASES = {
    # name: (repo, filename, revision, faults, hf_hub_download raises, get_hf_file_metadata raises)
    "unknown repo": ("org/missing", FILE, None, {}, RepositoryNotFoundError, RepositoryNotFoundError),
    "unknown file": (REPO, "missing.gguf", None, {}, RemoteEntryNotFoundError, RemoteEntryNotFoundError),
    "unknown revision": (REPO, FILE, "v9", {}, RevisionNotFoundError, RevisionNotFoundError),
    "gated, anonymous": (REPO, FILE, None, {"status": (401, None)}, GatedRepoError, GatedRepoError),
    "gated, no access": (REPO, FILE, None, {"status": (403, None)}, GatedRepoError, GatedRepoError),
    # Without X-Error-Code a 404 is just an HTTP error, which hf_hub_download reports as "not cached".
    "bare 404": (REPO, FILE, None, {"status": (404, None), "error_code": ""}, LocalEntryNotFoundError, HfHubHTTPError),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_each_error_maps_to_its_exception_class(hub, tmp_path, case):
    repo, filename, revision, faults, download_error, metadata_error = case
    hub.add_file(REPO, FILE, b"weights")
    hub.set_fault(FILE, **faults)

    with pytest.raises(download_error) as raised:
        download(hub, tmp_path, repo=repo, filename=filename, revision=revision)
    assert type(raised.value) is download_error  # exact: GatedRepoError subclasses RepositoryNotFoundError

    with pytest.raises(HfHubHTTPError) as raised:
        metadata(hub, repo=repo, filename=filename, revision=revision)
    assert type(raised.value) is metadata_error


def test_missing_repo_commit_header_is_reported_as_not_found_locally(hub, tmp_path):
    hub.add_file(REPO, FILE, b"weights")
    hub.set_fault(FILE, missing_header="X-Repo-Commit")

    with pytest.raises(LocalEntryNotFoundError, match="X-Repo-Commit"):
        download(hub, tmp_path)
    assert metadata(hub).commit_hash is None


def test_refused_connection_raises_the_transport_error_from_metadata():
    with FakeHub() as gone:
        endpoint = gone.endpoint
    # hf_hub_download would retry this for 1+2+4+8+8 s before LocalEntryNotFoundError: not run here.
    with pytest.raises(Exception) as raised:
        get_hf_file_metadata(hf_hub_url(REPO, FILE, endpoint=endpoint), token=False)
    assert type(raised.value).__name__ == "ConnectError"


@pytest.mark.slow
def test_hub_server_errors_recover_through_the_clients_retry(hub, tmp_path, big):
    hub.add_file(REPO, FILE, big)
    hub.set_fault(FILE, status=(500, 2))

    assert download(hub, tmp_path).read_bytes() == big
    # One HEAD without retries, then a retrying round: 500, 1 s backoff, 302.
    assert [r.status for r in hub.requests_for(FILE, role="hub")] == [500, 500, 302]


def test_cdn_server_error_is_not_retried(hub, tmp_path):
    hub.add_file(REPO, FILE, b"weights")
    hub.set_fault(FILE, status=(500, 1), where="cdn")

    with pytest.raises(HfHubHTTPError) as raised:
        download(hub, tmp_path)
    assert raised.value.response.status_code == 500
    assert len(cdn_log(hub)) == 1


def test_connection_reset_mid_body_is_not_retried(hub, tmp_path, big):
    hub.add_file(REPO, FILE, big)
    hub.set_fault(FILE, reset_after=12 * MiB, times=1)

    with pytest.raises(Exception) as raised:
        download(hub, tmp_path)
    assert type(raised.value).__name__ == "ReadError"
    assert len(cdn_log(hub)) == 1


@pytest.mark.slow
def test_short_body_fails_after_the_clients_retries_and_leaves_no_partial_file(hub, tmp_path):
    data = random.Random(1).randbytes(MiB)
    hub.add_file(REPO, FILE, data)
    hub.set_fault(FILE, short_body=True)

    with pytest.raises(Exception) as raised:
        download(hub, tmp_path)  # five retries, 1 s apart

    assert type(raised.value).__name__ == "RemoteProtocolError"
    assert cdn_log(hub) == [(None, 200, len(data) // 2)] * 6
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.name.endswith(".incomplete")]


def test_wrong_bytes_of_the_right_size_pass_unnoticed(hub, tmp_path, big):
    entry = hub.add_file(REPO, FILE, big)
    hub.set_fault(FILE, wrong_bytes=True)

    got = download(hub, tmp_path).read_bytes()

    assert len(got) == entry.size
    assert sha256(got) != entry.sha256  # huggingface_hub does not verify: our store must


def test_cdn_answers_ranges_and_head(hub):
    entry = hub.add_file(REPO, FILE, bytes(range(256)) * 4)
    conn = http.client.HTTPConnection("127.0.0.1", int(hub.cdn_endpoint.rsplit(":", 1)[1]), timeout=5)

    def get(method: str = "GET", **headers: str) -> tuple[int, str | None, bytes]:
        conn.request(method, f"/cdn/{entry.sha256}", headers=headers)
        response = conn.getresponse()
        return response.status, response.getheader("Content-Range"), response.read()

    assert get(Range="bytes=1000-") == (206, "bytes 1000-1023/1024", bytes(range(232, 256)))
    assert get(Range="bytes=2-4") == (206, "bytes 2-4/1024", b"\x02\x03\x04")
    assert get(Range="bytes=1024-") == (416, "bytes */1024", b"")
    assert get("HEAD") == (200, None, b"")
    hub.set_fault(FILE, ignore_range=True)
    assert get(Range="bytes=2-4")[:2] == (200, None)
    assert hub.requests[-1].bytes_sent == 1024
    conn.close()


def test_close_returns_promptly_with_stuck_and_stalled_clients(big):
    hub = FakeHub(throttle=64 * 1024)
    entry = hub.add_file(REPO, FILE, big)
    port = int(hub.cdn_endpoint.rsplit(":", 1)[1])
    request = f"GET /cdn/{entry.sha256} HTTP/1.1\r\nHost: cdn\r\n\r\n".encode()
    slow_reader = socket.create_connection(("127.0.0.1", port))
    slow_reader.sendall(request)
    hub.set_fault(FILE, stall=60)
    stalled = socket.create_connection(("127.0.0.1", port))
    stalled.sendall(request)
    time.sleep(0.3)

    started = time.monotonic()
    hub.close()

    assert time.monotonic() - started < 2
    assert not [t for t in threading.enumerate() if t.name.startswith("fakehub") or "process_request" in t.name]
    assert hub.errors == []
    slow_reader.close()
    stalled.close()


def test_standalone_process_serves_a_file_until_terminated(tmp_path):
    data = random.Random(2).randbytes(3 * MiB)
    (tmp_path / "model.gguf").write_bytes(data)
    command = [sys.executable, str(HUBSIM), "--serve-file", REPO, FILE, str(tmp_path / "model.gguf")]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as server:
        try:
            endpoint = server.stdout.readline().strip()
            assert endpoint.startswith("http://127.0.0.1:")
            path = hf_hub_download(REPO, FILE, endpoint=endpoint, cache_dir=tmp_path / "cache", token=False)
            assert Path(path).read_bytes() == data
        finally:
            server.terminate()
            server.wait(timeout=5)
    assert server.returncode == 0  # SIGTERM is a clean shutdown
