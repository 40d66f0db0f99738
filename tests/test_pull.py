"""`llmlocal pull` against an imitation Hub, one fault at a time: exit code, error line, disk.

Every test runs the real huggingface_hub client inside `llmlocal pull` (Click's CliRunner, or a
real process where a signal, a second process or a full disk is the point) against
tests/hubsim.FakeHub on 127.0.0.1, then asserts the exit code, the single ``Error:`` line and
exactly which files the store holds. Two facts about the client (huggingface_hub 2.4.0, see
/work/shared/hub-facts.md) set the numbers below:

- http_get writes whole reads of ``DOWNLOAD_CHUNK_SIZE`` only, which store.py sets to 1 MiB
  (``RESUME_STEP``; the library's default is 10 MiB), so a partial file grows in 1 MiB steps and
  every resume starts at a multiple of 1 MiB; bytes in flight are lost. Faults cut at half a MiB
  past a step, so what is kept does not depend on timing.
- it retries a dropped connection (FIN) in-process, 6 tries 1 s apart, but not a reset (RST) or
  a CDN 5xx; store.py retries a Hub 5xx (backoff 1, 2, 4 ... s) but not a refused connection.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from llmlocal.catalog import ModelSpec, entry_toml
from llmlocal.cli import cli
from llmlocal.store import RESUME_STEP
from tests.hubsim import FakeHub

MiB = 2**20
STEP = RESUME_STEP  # where a resume can start (huggingface_hub's DOWNLOAD_CHUNK_SIZE, set by store.py)
HALF = MiB // 2
REPO = "llmlocal-test/Fake-GGUF"
FILE = "fake.Q4_0.gguf"
NAME = "fake"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def small() -> bytes:
    """1 MiB of random bytes, for faults that do not need a resume."""
    return random.Random(1).randbytes(MiB)


@pytest.fixture(scope="module")
def big() -> bytes:
    """16 MiB of random bytes: many resume steps, so a resume sends a Range."""
    return random.Random(2).randbytes(16 * MiB)


@pytest.fixture
def hub(monkeypatch):
    with FakeHub() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        yield hub
    assert hub.errors == []  # no exception escaped a handler thread


@pytest.fixture
def procs():
    """Processes a test starts; killed at teardown if a failed assertion left them running."""
    started: list[subprocess.Popen] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def add_entry(home: Path, data: bytes, *, name: str = NAME, repo: str = REPO, file: str = FILE,
              revision: str = "main", size: int | None = None) -> None:
    """Pin ``data`` in the user catalogue under ``name``."""
    spec = ModelSpec(name=name, file=file, sha256=sha256(data), repo=repo, revision=revision,
                     size=len(data) if size is None else size)
    home.mkdir(parents=True, exist_ok=True)
    with open(home / "models.toml", "a", encoding="utf-8") as fh:
        fh.write(entry_toml(spec) + "\n")


def publish(hub: FakeHub, home: Path, data: bytes, **catalog):
    """Serve ``data`` as REPO/FILE and pin it in the catalogue as NAME."""
    entry = hub.add_file(REPO, FILE, data)
    add_entry(home, data, **catalog)
    return entry


def pull(*args: str):
    return CliRunner().invoke(cli, ["pull", *args])


def assert_error(result, *fragments: str) -> str:
    """Exit 1 and exactly one ``Error:`` line (holding ``fragments``) on stderr; no traceback."""
    assert result.exit_code == 1, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, result.stderr
    for fragment in fragments:
        assert fragment in errors[0]
    assert "Traceback" not in result.output and result.stdout == ""
    return errors[0]


def on_disk(home: Path) -> dict:
    """Every file in the store's blobs (with its size) and manifests directories."""
    def files(sub: str) -> dict[str, int]:
        d = home / sub
        return {p.name: p.stat().st_size for p in sorted(d.iterdir())} if d.is_dir() else {}
    return {"blobs": files("blobs"), "manifests": sorted(files("manifests"))}


def installed(data: bytes) -> dict:
    return {"blobs": {f"sha256-{sha256(data)}.gguf": len(data)}, "manifests": [f"{NAME}.json"]}


def partial_only(data: bytes, kept: int) -> dict:
    return {"blobs": {f"sha256-{sha256(data)}.partial": kept}, "manifests": []}


def partial_bytes(home: Path, data: bytes) -> bytes:
    return (home / "blobs" / f"sha256-{sha256(data)}.partial").read_bytes()


def assert_blob(home: Path, data: bytes) -> None:
    assert on_disk(home) == installed(data)
    assert sha256((home / "blobs" / f"sha256-{sha256(data)}.gguf").read_bytes()) == sha256(data)


def cdn_log(hub: FakeHub) -> list[tuple[str | None, int, int]]:
    return [(r.range, r.status, r.bytes_sent) for r in hub.requests_for(FILE, role="cdn")]


def resolve_log(hub: FakeHub) -> list[int]:
    """Statuses of the Hub's resolve requests (the agent-harness probe left out)."""
    return [r.status for r in hub.requests if r.role == "hub" and "/resolve/" in r.path]


# ------------------------------------------------------------------ success


def test_pull_installs_verified_blob_and_second_pull_makes_no_request(hub, home, small):
    entry = publish(hub, home, small)

    result = pull(NAME)

    assert result.exit_code == 0, result.output
    assert "fake  1.0 MB / 1.0 MB (100%)" in result.stderr  # the progress line
    assert f"fake: installed and verified (1.0 MB from hub, sha256 {sha256(small)[:12]}" in result.stderr
    assert result.stdout == ""
    assert_blob(home, small)
    manifest = json.loads((home / "manifests" / "fake.json").read_text())
    assert (manifest["sha256"], manifest["repo"], manifest["commit"], manifest["source"]) == (
        sha256(small), REPO, entry.commit, "hub")
    assert cdn_log(hub) == [(None, 200, len(small))]
    listing = CliRunner().invoke(cli, ["ls"])
    assert listing.stdout.splitlines()[1].split()[:4] == ["fake", "1.0", "MB", "hub"]

    hub.clear_requests()
    again = pull(NAME)

    assert again.exit_code == 0 and "fake: already installed" in again.stderr
    assert hub.requests == []  # not even a HEAD


@pytest.mark.slow
def test_connection_dropped_once_is_resumed_in_process(hub, home, big):
    publish(hub, home, big)
    hub.set_fault(FILE, drop_after=12 * MiB + HALF, times=1)

    # A real process: huggingface_hub's own log handler writes to the process's stderr, which
    # CliRunner does not capture. Its "Error while downloading ... Trying to resume" stays quiet.
    result = subprocess.run([sys.executable, "-m", "llmlocal", "pull", NAME, "--quiet"],
                            capture_output=True, text=True, env=dict(os.environ))

    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [
        f"fake: installed and verified (16.8 MB from hub, sha256 {sha256(big)[:12]}…)"]
    assert cdn_log(hub) == [(None, 200, 12 * MiB + HALF), (f"bytes={12 * MiB}-", 206, len(big) - 12 * MiB)]
    assert_blob(home, big)


def test_a_pull_talks_only_to_the_download_server(hub, home, small):
    """huggingface_hub 2.x asks {HF_ENDPOINT}/api/agent-harnesses for its User-Agent unless
    telemetry is off; a fresh process without the flag proves store.py switches it off."""
    publish(hub, home, small)
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_DISABLE_TELEMETRY"}
    result = subprocess.run([sys.executable, "-m", "llmlocal", "pull", NAME, "--quiet"],
                            capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert [r.path for r in hub.requests if r.role == "hub" and "/resolve/" not in r.path] == []


@pytest.mark.slow
def test_hub_500_twice_is_retried(hub, home, small):
    publish(hub, home, small)
    hub.set_fault(FILE, status=(500, 2))

    result = pull(NAME, "--quiet")

    assert result.exit_code == 0, result.output
    assert resolve_log(hub) == [500, 500, 302]
    assert "fake: the Hub answered 500; retrying for up to 23 s" in result.stderr  # not a silent wait
    assert_blob(home, small)


def _gguf_header() -> bytes:
    """A GGUF header with no tensors: what follows it is ignored, so any bytes make a valid file."""
    arch, value = b"general.architecture", b"fake"
    return (b"GGUF" + struct.pack("<IQQQ", 3, 0, 1, len(arch)) + arch + struct.pack("<IQ", 8, len(value))
            + value)


def test_unpinned_hf_reference_prints_and_records_the_computed_hash(hub, home, small):
    small = _gguf_header() + small  # unpinned bytes are installed only if they are a GGUF
    hub.add_file(REPO, FILE, small)
    ref = f"hf:{REPO}/{FILE}"

    result = pull(ref, "--quiet")

    assert result.exit_code == 0, result.output
    assert f"{ref}: sha256 {sha256(small)} (not pinned; pass --sha256 {sha256(small)} to pin it)" in result.stderr
    (manifest,) = (home / "manifests").glob("*.json")
    assert json.loads(manifest.read_text())["sha256"] == sha256(small)
    assert (home / "blobs" / f"sha256-{sha256(small)}.gguf").read_bytes() == small


def test_unpinned_hf_reference_to_a_file_that_is_not_a_gguf_installs_nothing(hub, home, small):
    hub.add_file(REPO, "README.md", small)
    ref = f"hf:{REPO}/README.md"

    result = pull(ref, "--quiet")

    assert result.exit_code == 1
    assert result.stderr.splitlines()[-2:] == [
        f"Error: {ref}: not a GGUF file (starts with {small[:4]!r}); nothing was installed",
        "  hint: only GGUF model files can be pulled: check the file name in the reference"]
    assert on_disk(home) == {"blobs": {}, "manifests": []}


# ------------------------------------------------------------------ transfer faults


@pytest.mark.slow
def test_connection_dropped_every_time_before_one_step_keeps_nothing_to_resume(hub, home, big):
    """Each try ends before the client's first 1 MiB write: 6 tries, an empty partial, and the
    next pull starts again from byte 0."""
    publish(hub, home, big)
    hub.set_fault(FILE, drop_after=HALF)

    result = pull(NAME, "--quiet")

    assert_error(result, "the connection broke off while downloading 'fake': RemoteProtocolError")
    assert cdn_log(hub) == [(None, 200, HALF)] * 6
    assert on_disk(home) == partial_only(big, 0)

    hub.set_fault(FILE)
    hub.clear_requests()
    again = pull(NAME, "--quiet")

    assert again.exit_code == 0, again.output
    assert cdn_log(hub) == [(None, 200, len(big))]
    assert_blob(home, big)


@pytest.mark.slow
def test_a_link_that_drops_every_4_mib_still_completes(hub, home, big):
    """With huggingface_hub's 10 MiB writes this pull could never finish: every try lost its
    bytes. With 1 MiB writes each try keeps 4 MiB and the next one resumes after them."""
    publish(hub, home, big)
    hub.set_fault(FILE, drop_after=4 * MiB + HALF)

    result = subprocess.run([sys.executable, "-m", "llmlocal", "pull", NAME, "--quiet"],
                            capture_output=True, text=True, env=dict(os.environ))

    assert result.returncode == 0, result.stderr
    assert cdn_log(hub) == [(None, 200, 4 * MiB + HALF), (f"bytes={4 * MiB}-", 206, 4 * MiB + HALF),
                            (f"bytes={8 * MiB}-", 206, 4 * MiB + HALF), (f"bytes={12 * MiB}-", 206, 4 * MiB)]
    assert_blob(home, big)


@pytest.mark.slow
def test_reset_mid_body_keeps_the_partial_and_the_next_pull_resumes(hub, home, big):
    publish(hub, home, big)
    hub.throttle(16 * MiB)  # paced, so the client has read most of what was sent when the RST lands
    hub.set_fault(FILE, reset_after=14 * MiB + HALF)

    result = pull(NAME, "--quiet")

    assert_error(result, "the connection broke off while downloading 'fake': ReadError")
    assert "  hint: run the same pull again to resume" in result.stderr
    assert cdn_log(hub) == [(None, 200, 14 * MiB + HALF)]  # a reset is not retried in-process
    # A RST discards what the client had not read yet, so how much reached disk varies a little.
    kept = len(partial_bytes(home, big))
    assert kept % STEP == 0 and 8 * MiB <= kept <= 14 * MiB
    assert on_disk(home) == partial_only(big, kept)
    assert partial_bytes(home, big) == big[:kept]

    hub.set_fault(FILE)
    hub.throttle(None)
    hub.clear_requests()
    again = pull(NAME, "--quiet")

    assert again.exit_code == 0, again.output
    assert f"resuming fake from {kept:,} bytes" in again.stderr
    assert f"installed and verified (resumed at {kept / 1e6:.1f} MB, 16.8 MB from hub" in again.stderr
    assert cdn_log(hub) == [(f"bytes={kept}-", 206, len(big) - kept)]
    assert_blob(home, big)


@pytest.mark.slow
def test_short_body_every_time_keeps_the_partial_and_resumes_once_fixed(hub, home, big):
    publish(hub, home, big)
    hub.set_fault(FILE, short_body=12 * MiB + HALF)  # the CDN object is truncated at 12.5 MiB

    result = pull(NAME, "--quiet")

    assert_error(result, "the connection broke off while downloading 'fake': RemoteProtocolError")
    assert cdn_log(hub) == [(None, 200, 12 * MiB + HALF)] + [(f"bytes={12 * MiB}-", 206, HALF)] * 5
    assert on_disk(home) == partial_only(big, 12 * MiB)
    assert partial_bytes(home, big) == big[:12 * MiB]

    hub.set_fault(FILE)
    hub.clear_requests()
    again = pull(NAME, "--quiet")

    assert again.exit_code == 0, again.output
    assert cdn_log(hub) == [(f"bytes={12 * MiB}-", 206, len(big) - 12 * MiB)]
    assert_blob(home, big)


@pytest.mark.slow
def test_ignored_range_on_resume_rewinds_the_partial_and_verifies(hub, home, big):
    publish(hub, home, big)
    hub.throttle(16 * MiB)
    hub.set_fault(FILE, reset_after=14 * MiB + HALF)
    assert pull(NAME, "--quiet").exit_code == 1
    kept = len(partial_bytes(home, big))
    assert kept >= STEP and on_disk(home) == partial_only(big, kept)

    hub.throttle(None)
    hub.set_fault(FILE, ignore_range=True)
    hub.clear_requests()
    result = pull(NAME, "--quiet")

    assert result.exit_code == 0, result.output
    assert cdn_log(hub) == [(f"bytes={kept}-", 200, len(big))]  # asked to resume, got it all
    assert_blob(home, big)


def test_same_size_wrong_bytes_fail_the_checksum_and_are_deleted(hub, home, small):
    publish(hub, home, small)
    hub.set_fault(FILE, wrong_bytes=True)
    flipped = small.translate(bytes(range(255, -1, -1)))

    result = pull(NAME, "--quiet")

    assert_error(result, f"checksum mismatch for 'fake': expected sha256 {sha256(small)}, "
                         f"got {sha256(flipped)}; the bad bytes were deleted")
    assert "  hint: the upstream file may have changed" in result.stderr
    assert cdn_log(hub) == [(None, 200, len(small))]
    assert on_disk(home) == {"blobs": {}, "manifests": []}


def test_cdn_503_is_not_retried_and_leaves_only_an_empty_partial(hub, home, small):
    publish(hub, home, small)
    hub.set_fault(FILE, status=(503, None), where="cdn")

    result = pull(NAME, "--quiet")

    assert_error(result, f"the Hub answered 503 for {REPO}/{FILE}@main")
    assert cdn_log(hub) == [(None, 503, len(b'{"error": "Service Unavailable"}'))]
    assert on_disk(home) == partial_only(small, 0)


# ------------------------------------------------------------------ refused before any byte


@pytest.mark.parametrize(
    ("where", "message", "status"),
    [
        ({"file": "missing.Q4_0.gguf"}, f"file missing.Q4_0.gguf not found in {REPO}@main", 404),
        ({"revision": "v9"}, f"revision 'v9' not found in {REPO}", 404),
        ({"repo": "nobody/Nothing-GGUF"},
         "repository nobody/Nothing-GGUF not found on the Hub (or it is private)", 401),
    ],
    ids=["EntryNotFound", "RevisionNotFound", "RepoNotFound"],
)
def test_missing_file_revision_or_repo(hub, home, small, where, message, status):
    hub.add_file(REPO, FILE, small)
    add_entry(home, small, **where)

    result = pull(NAME, "--quiet")

    assert_error(result, message)
    assert resolve_log(hub) == [status]  # a 4xx is not retried; no CDN request
    assert on_disk(home) == {"blobs": {}, "manifests": []}


def test_gated_repo_says_to_accept_the_licence_and_set_hf_token(hub, home, small):
    publish(hub, home, small)
    hub.set_fault(FILE, status=(401, None))  # X-Error-Code: GatedRepo

    result = pull(NAME, "--quiet")

    assert_error(result, f"'fake' is gated on the Hub ({REPO})")
    assert f"  hint: accept its licence at https://huggingface.co/{REPO} and set HF_TOKEN" in result.stderr
    assert on_disk(home) == {"blobs": {}, "manifests": []}


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        ({"etag_override": "0" * 64}, "the Hub's sha256 (etag) for 'fake' is " + "0" * 64 + ", the catalogue pins "),
        ({"size_override": MiB + 1}, f"the Hub's size for 'fake' is {MiB + 1}, the catalogue pins {MiB}"),
    ],
    ids=["etag", "size"],
)
def test_upstream_change_is_caught_before_download(hub, home, small, fault, message):
    publish(hub, home, small)
    hub.set_fault(FILE, **fault)

    result = pull(NAME, "--quiet")

    assert_error(result, message, "nothing was downloaded")
    assert cdn_log(hub) == []
    assert on_disk(home) == {"blobs": {}, "manifests": []}


def test_hf_reference_with_a_wrong_sha256_is_refused(hub, home, small):
    hub.add_file(REPO, FILE, small)
    ref, wrong = f"hf:{REPO}/{FILE}", "f" * 64

    result = pull(ref, "--sha256", wrong, "--quiet")

    assert_error(result, f"the Hub's sha256 (etag) for '{ref}' is {sha256(small)}")
    assert cdn_log(hub) == []

    # Without the LFS etag (X-Linked-Etag) nothing can be checked up front: the bytes are fetched,
    # fail the pin and are deleted.
    hub.set_fault(FILE, missing_header="X-Linked-Etag")
    result = pull(ref, "--sha256", wrong, "--quiet")

    assert_error(result, f"checksum mismatch for '{ref}': expected sha256 {wrong}, got {sha256(small)}")
    assert cdn_log(hub) == [(None, 200, len(small))]
    assert on_disk(home) == {"blobs": {}, "manifests": []}


def test_too_little_disk_space_is_refused_before_download(hub, home, small):
    hub.add_file(REPO, FILE, small)
    hub.set_fault(FILE, size_override=10**15)
    add_entry(home, small, size=10**15)

    result = pull(NAME, "--quiet")

    assert_error(result, "not enough disk space for 'fake': needs 1,000,000,000,000,000 more bytes")
    assert cdn_log(hub) == []
    assert on_disk(home) == {"blobs": {}, "manifests": []}


def test_unreachable_hub_is_one_line(home, small, monkeypatch):
    with socket.socket() as sock:  # a port that was just free: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    add_entry(home, small)

    result = pull(NAME, "--quiet")

    assert_error(result, "cannot reach the Hub for 'fake': ConnectError")
    assert on_disk(home) == {"blobs": {}, "manifests": []}


@pytest.mark.parametrize("how", ["env", "flag"])
def test_offline_pull_of_a_hub_model_makes_no_request(hub, home, small, monkeypatch, how):
    publish(hub, home, small)
    # The --offline flag sets LLMLOCAL_OFFLINE in os.environ; monkeypatch restores it afterwards.
    monkeypatch.setenv("LLMLOCAL_OFFLINE", "1" if how == "env" else "0")
    hub.clear_requests()

    args = ["pull", NAME] if how == "env" else ["--offline", "pull", NAME]
    result = CliRunner().invoke(cli, args)

    assert_error(result, "'fake' is not installed and offline mode forbids downloading it")
    assert hub.requests == []
    assert on_disk(home) == {"blobs": {}, "manifests": []}


# ------------------------------------------------------------------ real processes


def start_pull(tmp_path: Path, procs: list, tag: str) -> tuple[subprocess.Popen, Path]:
    """``python -m llmlocal pull NAME`` in its own process, stderr to a file."""
    err = tmp_path / f"{tag}.stderr"
    with open(err, "w") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "llmlocal", "pull", NAME],
                                stdout=subprocess.DEVNULL, stderr=sink, env=dict(os.environ), cwd=tmp_path)
    procs.append(proc)
    return proc, err


def size_of(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "SIGINT"])
def test_pull_killed_midway_resumes_in_the_next_process(hub, home, tmp_path, procs, sig):
    data = random.Random(3).randbytes(20 * MiB)
    publish(hub, home, data)
    hub.throttle(4 * MiB)
    partial = home / "blobs" / f"sha256-{sha256(data)}.partial"

    proc, err = start_pull(tmp_path, procs, "first")
    while proc.poll() is None and size_of(partial) < 10 * MiB:  # half the file is on disk
        time.sleep(0.02)
    hub.throttle(1024)  # hold the transfer where it is while the signal is delivered
    proc.send_signal(sig)
    proc.wait()

    first_run = hub.bytes_sent(FILE)
    if sig == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL
    else:
        assert proc.returncode == 130
        assert "Interrupted." in err.read_text() and "Traceback" not in err.read_text()
    kept = size_of(partial)  # a step or two more may have landed before the signal
    assert kept % STEP == 0 and 10 * MiB <= kept < len(data)
    assert on_disk(home) == partial_only(data, kept)
    assert partial.read_bytes() == data[:kept]

    hub.throttle(None)
    hub.clear_requests()
    result = pull(NAME, "--quiet")

    assert result.exit_code == 0, result.output
    second_run = hub.bytes_sent(FILE)
    assert cdn_log(hub) == [(f"bytes={kept}-", 206, len(data) - kept)]
    assert_blob(home, data)
    print(f"\n{sig.name}: file {len(data):,} B, first run sent {first_run:,} B and kept {kept:,} B, "
          f"second run fetched {second_run:,} B")


def test_two_concurrent_pulls_download_once(hub, home, tmp_path, procs):
    data = random.Random(4).randbytes(4 * MiB)
    publish(hub, home, data)
    hub.throttle(256 * 1024)  # slow enough that the second process finds the first one busy

    runs = [start_pull(tmp_path, procs, tag) for tag in ("a", "b")]
    while any(p.poll() is None for p, _ in runs) and not any(
            "waiting for another pull" in e.read_text() for _, e in runs):
        time.sleep(0.05)
    hub.throttle(None)
    for proc, _ in runs:
        proc.wait()

    assert [p.returncode for p, _ in runs] == [0, 0]
    stderrs = sorted((e.read_text() for _, e in runs), key=lambda s: "waiting" in s)
    assert "fake: installed and verified" in stderrs[0]
    assert "waiting for another pull of fake to finish..." in stderrs[1]
    assert "fake: already installed" in stderrs[1]
    assert hub.bytes_sent(FILE) == len(data)
    assert len(cdn_log(hub)) == 1
    assert_blob(home, data)


def test_disk_full_mid_download_keeps_a_resumable_partial(hub, home, tmp_path, procs, big, monkeypatch):
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mount = tmp_path / "fs"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        store = mount / "home"
        monkeypatch.setenv("LLMLOCAL_HOME", str(store))
        publish(hub, store, big)
        hub.throttle(4 * MiB)
        # The space pre-check sees 24 MiB free for a 16 MiB file; the filler, written once the
        # transfer has started, leaves room for the first writes but not the rest.
        proc, err = start_pull(tmp_path, procs, "full")
        while proc.poll() is None and not cdn_log(hub):
            time.sleep(0.02)
        (mount / "filler").write_bytes(bytes(10 * MiB))
        hub.throttle(None)
        proc.wait()

        stderr = err.read_text()
        kept = size_of(store / "blobs" / f"sha256-{sha256(big)}.partial")
        assert proc.returncode == 1, stderr
        assert [line for line in stderr.splitlines() if line.startswith("Error: ")] == [
            f"Error: disk full while writing 'fake' ({kept:,} bytes kept for resuming)"]
        assert "Traceback" not in stderr
        assert STEP <= kept < len(big)
        assert on_disk(store) == partial_only(big, kept)
        assert partial_bytes(store, big) == big[:kept]

        (mount / "filler").unlink()
        hub.clear_requests()
        result = pull(NAME, "--quiet")

        assert result.exit_code == 0, result.output
        assert cdn_log(hub) == [(f"bytes={kept}-", 206, len(big) - kept)]
        assert_blob(store, big)
        print(f"\ndisk full: {kept:,} of {len(big):,} B kept, then {len(big) - kept:,} B fetched to finish")
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
