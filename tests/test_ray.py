"""`batch --ray` and `classify --ray` on a real local Ray instance (2 CPUs, 127.0.0.1), against the
local commands' own output.

The test starts the Ray head with `ray start`, as a user would start a cluster, and the commands
join it by address; the workers load the real SmolLM2 through llama.cpp. Nothing is mocked,
except in the last test, which hides the installed Ray from one process to see the message a
user without the extra gets.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("ray.data")
import psutil  # noqa: E402  (Ray's own dependency)

# Real server processes and Ray clusters: the full suite only (pytest -m "not slow" skips them).
pytestmark = pytest.mark.slow

SAMPLE = Path(__file__).parent / "data" / "sms_sample.tsv"
ITEMS = 200


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, _seed_blobs):
    """A Ray head on 127.0.0.1 with 2 CPUs, and the llmlocal home its workers and the commands share."""
    root = tmp_path_factory.mktemp("ray")
    home = root / "llmlocal"
    for sub in ("blobs", "manifests"):
        (home / sub).mkdir(parents=True)
        for f in (_seed_blobs / sub).iterdir():
            (os.link if f.suffix == ".gguf" else shutil.copy)(f, home / sub / f.name)
    env = {**os.environ, "LLMLOCAL_HOME": str(home), "HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0",
           # A throwaway loopback cluster: no token to hand around (a real cluster keeps Ray's token auth).
           "RAY_AUTH_MODE": "disabled"}
    env.pop("LLMLOCAL_MODEL", None)
    port = _free_port()
    ray = [sys.executable, "-m", "ray.scripts.scripts"]
    subprocess.run([*ray, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
                    "--num-cpus", "2", "--include-dashboard", "false", "--disable-usage-stats",
                    "--temp-dir", str(root / "ray")], env=env, check=True, capture_output=True)
    try:
        yield {"env": env, "address": f"127.0.0.1:{port}", "home": home, "root": root}
    finally:
        subprocess.run([*ray, "stop", "--force"], env=env, capture_output=True)


def llmlocal(cluster, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "llmlocal", *argv], env=cluster["env"], capture_output=True,
                            text=True)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def _prompts(path: Path) -> Path:
    with path.open("w", encoding="utf-8") as fh:
        for i in range(ITEMS):
            fh.write(json.dumps({"id": f"q{i}", "prompt": f"Write the number {i} in words, then stop."}) + "\n")
    return path


def _comparable(path: Path) -> list[dict]:
    # Timing differs run to run, and cached_tokens depends on which prompts shared a decode.
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        rec.pop("timing", None)
        rec.get("usage", {}).pop("cached_tokens", None)
        out.append(rec)
    return out


@pytest.fixture(scope="module")
def reference(cluster):
    """The 200-line job run locally, the output the Ray runs must equal."""
    work = cluster["root"] / "local"
    work.mkdir()
    prompts = _prompts(work / "prompts.jsonl")
    llmlocal(cluster, "batch", str(prompts), "-o", str(work / "out.jsonl"), "--temperature", "0", "-n", "12",
             "-p", "4", "-q")
    return prompts, _comparable(work / "out.jsonl")


def test_batch_on_ray_equals_the_local_command(cluster, reference, tmp_path):
    prompts, expected = reference
    out = tmp_path / "out.jsonl"
    result = llmlocal(cluster, "batch", str(prompts), "-o", str(out), "--temperature", "0", "-n", "12", "-p", "4",
                      "--ray", cluster["address"], "--workers", "2", "--threads", "1")
    assert _comparable(out) == expected
    meta = json.loads((tmp_path / "out.jsonl.meta.json").read_text())
    assert meta["ray"] == {"address": cluster["address"], "workers": 2} and meta["model"] == "smollm2-135m"
    assert "done: 200 of 200 lines" in result.stderr
    # A re-run has nothing to do, as locally.
    again = llmlocal(cluster, "batch", str(prompts), "-o", str(out), "--temperature", "0", "-n", "12", "-p", "4",
                     "--ray", cluster["address"], "--workers", "2", "--threads", "1")
    assert "nothing to do: all 200 lines" in again.stderr
    assert len(out.read_text().splitlines()) == ITEMS


def test_a_worker_killed_mid_job_still_gives_every_id_once(cluster, reference, tmp_path):
    prompts, expected = reference
    out = tmp_path / "out.jsonl"
    job = subprocess.Popen([sys.executable, "-m", "llmlocal", "batch", str(prompts), "-o", str(out),
                            "--temperature", "0", "-n", "12", "-p", "4", "--ray", cluster["address"],
                            "--workers", "2", "--threads", "1", "-q"],
                           env=cluster["env"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killed = None
    while job.poll() is None and killed is None:
        # Once the first results are written the actors are mid-job: kill one, as a node failure would.
        if out.exists() and out.stat().st_size:
            actors = [p for p in psutil.process_iter(["cmdline"])
                      if "BatchWorker" in " ".join(p.info["cmdline"] or [])]
            if actors:
                killed = actors[0].pid
                os.kill(killed, signal.SIGKILL)
        time.sleep(0.05)
    stdout, stderr = job.communicate()
    assert killed is not None, "the job finished before a worker could be killed"
    assert job.returncode == 0, stderr
    got = _comparable(out)
    assert sorted(r["id"] for r in got) == sorted(f"q{i}" for i in range(ITEMS))  # every id exactly once
    assert got == expected


def _sms_items(path: Path) -> tuple[Path, Path]:
    rows = [line.split("\t") for line in SAMPLE.read_text(encoding="utf-8").splitlines()[1:]]
    examples = path / "examples.csv"
    texts = path / "texts.csv"
    import csv

    with examples.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["text", "label"])
        for _, label, text in rows[:10]:
            w.writerow([text, label])
    with texts.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "text"])
        for i in range(ITEMS):
            _, _, text = rows[10 + i % 30]
            w.writerow([f"t{i}", text if i < 30 else f"{text} ({i})"])
    return examples, texts


def test_classify_on_ray_gives_the_local_probabilities(cluster, tmp_path):
    examples, texts = _sms_items(tmp_path)
    # The prompt method: its probabilities are batch-invariant, so a worker's equal the local ones to
    # 1e-4. (Embedding decodes are not: auto's combined or embed differ by ~1e-3 between batchings.)
    common = ["classify", "--method", "prompt", "-e", str(examples), str(texts), "-q"]
    llmlocal(cluster, *common, "-o", str(tmp_path / "local.jsonl"))
    llmlocal(cluster, *common, "-o", str(tmp_path / "ray.jsonl"), "--ray", cluster["address"], "--workers", "2",
             "--threads", "1")
    local = [json.loads(x) for x in (tmp_path / "local.jsonl").read_text().splitlines()]
    remote = [json.loads(x) for x in (tmp_path / "ray.jsonl").read_text().splitlines()]
    assert len(local) == len(remote) == ITEMS
    for a, b in zip(local, remote, strict=True):
        assert a["id"] == b["id"] and a["label"] == b["label"]
        for label, p in a["probabilities"].items():
            assert abs(p - b["probabilities"][label]) < 1e-4
    meta = json.loads((tmp_path / "ray.jsonl.meta.json").read_text())
    assert meta["model"]["sha256"] and meta["method"] == "prompt"


def test_a_worker_with_other_bytes_fails_loudly(cluster, tmp_path):
    # --model-dir: a home whose smollm2 blob holds different bytes under the expected name.
    bad = tmp_path / "bad-home"
    for sub in ("blobs", "manifests"):
        shutil.copytree(cluster["home"] / sub, bad / sub)
    blob = next((bad / "blobs").glob("sha256-b179*.gguf"))
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF
    blob.unlink()
    blob.write_bytes(bytes(data))
    prompts = tmp_path / "p.txt"
    prompts.write_text("Say hi.\n")
    result = llmlocal(cluster, "batch", str(prompts), "-o", str(tmp_path / "out.jsonl"), "-n", "4", "--ray",
                      cluster["address"], "--workers", "1", "--threads", "1", "--model-dir", str(bad), check=False)
    assert result.returncode == 1
    assert "checksum mismatch for 'smollm2-135m'" in result.stderr
    assert "Traceback" not in result.stderr  # one line, as for a local checksum mismatch
    assert not (tmp_path / "out.jsonl").exists() and not (tmp_path / "out.jsonl.meta.json").exists()


def test_without_ray_the_flag_says_how_to_install_it(tmp_path, installed):
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text("import sys\nsys.modules['ray'] = None  # as if not installed\n")
    (tmp_path / "p.txt").write_text("Say hi.\n")
    env = {**os.environ, "PYTHONPATH": str(hide)}
    result = subprocess.run([sys.executable, "-m", "llmlocal", "batch", str(tmp_path / "p.txt"), "-o",
                             str(tmp_path / "out.jsonl"), "--ray"], env=env, capture_output=True, text=True)
    assert result.returncode == 2
    assert "pip install 'llmlocal[ray]'" in result.stderr and "Traceback" not in result.stderr
