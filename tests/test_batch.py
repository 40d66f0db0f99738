"""`llmlocal batch`: input formats, per-line errors, resume after a real SIGINT or SIGKILL.

Real processes where the process boundary is the point (signals, a torn last line, stdin, a
directory that cannot be written); Click's CliRunner where only arguments and output matter.
Parsing and the output scan are pure functions, tested without a model. Generation is short
(-n 8) so the suite stays quick on a busy CPU; no test measures time.

The resume tests run at --parallel 2. Resuming changes which sequences share a decode, and
with more than two sequences per decode llama.cpp's batched kernels round differently enough
that a temperature-0 near-tie can flip (benchmarks/batch_bench.py --agreement measures it);
with one or two, each sequence's arithmetic is the same as alone, so outputs must be identical.
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
from click.testing import CliRunner

from llmlocal import batch
from llmlocal.batch import BatchItem, inspect_output, read_items
from llmlocal.cli import cli
from llmlocal.errors import ForeignOutputError, InputFormatError, ModelClosedError, UsageError
from tests.models import SMOLLM2_SHA256

SYSTEM = "Answer in one short sentence."
GREEDY = ["--temperature", "0", "-n", "8"]


def job_lines() -> list[str]:
    """50 lines: plain prompts, chat messages, a system prompt, raw text, per-line limits, one bad line."""
    topics = ["the sea", "bread", "owls", "rain", "chess", "the moon", "bees", "trains", "coffee", "maps"]
    lines = []
    for i in range(49):
        topic = topics[i % len(topics)]
        kind = i % 5
        if kind == 0:
            rec = {"id": f"q{i}", "prompt": f"Write one sentence about {topic}."}
        elif kind == 1:
            rec = {"id": f"q{i}", "messages": [{"role": "user", "content": f"What do you know about {topic}?"}]}
        elif kind == 2:
            rec = {"id": f"q{i}", "prompt": f"Describe {topic}.", "system": SYSTEM}
        elif kind == 3:
            rec = {"id": f"q{i}", "prompt": f"Here is a fact about {topic}:", "raw": True}
        else:
            rec = {"id": f"q{i}", "prompt": f"List words related to {topic}.", "max_tokens": 4, "stop": [","]}
        lines.append(json.dumps(rec))
    lines.insert(25, '{"id": "broken", "prompt": "no closing brace"')
    return lines


def write_job(path: Path) -> Path:
    path.write_text("\n".join(job_lines()) + "\n", encoding="utf-8")
    return path


def read_output(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def by_id(records: list[dict]) -> dict:
    return {json.dumps(r["id"]): r for r in records}


def essence(records: list[dict]) -> list[tuple]:
    """What must not depend on how a job was run: not timings, nor how much prompt was shared."""
    return [(r["id"], r["text"], r["finish_reason"], r.get("error"),
             r.get("usage") and (r["usage"]["prompt_tokens"], r["usage"]["completion_tokens"])) for r in records]


def llmlocal_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "llmlocal", *args]


def run_llmlocal(*args: str, input: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(llmlocal_cmd(*args), input=input, capture_output=True, text=True, env=os.environ.copy())


def wait_for_lines(path: Path, n: int, proc: subprocess.Popen) -> None:
    """Until ``path`` has ``n`` finished lines (or the process ended: the caller then sees it)."""
    while proc.poll() is None:
        if path.exists() and path.read_bytes().count(b"\n") >= n:
            return
        time.sleep(0.02)


@pytest.fixture(scope="module")
def model_arg() -> list[str]:
    """The real SmolLM2 GGUF, by path: module-scoped runs need no per-test store."""
    from tests.models import smollm2_path

    return ["-m", str(smollm2_path())]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, model_arg) -> dict:
    """The 50-line job run once, uninterrupted, at --parallel 2 (what resumed runs must reproduce)."""
    d = tmp_path_factory.mktemp("reference")
    out = d / "out.jsonl"
    proc = run_llmlocal("batch", str(write_job(d / "in.jsonl")), "-o", str(out), *model_arg, *GREEDY, "-p", "2")
    assert proc.returncode == 0, proc.stderr
    meta = json.loads(Path(f"{out}.meta.json").read_text())
    return {"records": read_output(out), "stderr": proc.stderr, "meta": meta}


# ---------------------------------------------------------------- input parsing (no model)


def test_jsonl_kinds_overrides_and_a_malformed_line(tmp_path):
    items = read_items(write_job(tmp_path / "in.jsonl"))
    assert len(items) == 50
    bad = items[25]
    assert bad.line == 26 and bad.id == 26 and "not valid JSON" in bad.error
    assert items[1].messages[0]["content"].startswith("What do you know")
    assert items[2].system == SYSTEM and items[3].raw is True
    assert items[4].max_tokens == 4 and items[4].stop == (",",)
    assert all(i.error is None for i in items if i is not bad)


@pytest.mark.parametrize("line, problem", [
    ('[1, 2]', "expected a JSON object, found an array"),
    ('{"id": [1], "prompt": "a"}', "'id' must be a string or an integer"),
    ('{"prompt": "\\ud800"}', "'prompt' holds a lone surrogate"),
    ('{"prompt": "a", "temperature": 1' + "0" * 400 + '}', "'temperature' must be"),
    ('{"id": 1}', "exactly one of"),
    ('{"prompt": "a", "messages": [{"role": "user", "content": "b"}]}', "exactly one of"),
    ('{"prompt": 5}', "'prompt' must be a string"),
    ('{"messages": [{"role": "user"}]}', "'messages' must be"),
    ('{"prompt": "a", "max_tokens": -1}', "'max_tokens' must be"),
    ('{"prompt": "a", "max_tokens": true}', "'max_tokens' must be"),
    ('{"prompt": "a", "temperature": "hot"}', "'temperature' must be"),
    ('{"prompt": "a", "stop": [1]}', "'stop' must be"),
    ('{"messages": [{"role": "user", "content": "b"}], "raw": true}', "'raw' cannot"),
])
def test_each_bad_field_is_that_line_s_error(tmp_path, line, problem):
    path = tmp_path / "in.jsonl"
    path.write_text('{"prompt": "fine"}\n' + line + "\n", encoding="utf-8")
    good, bad = read_items(path)
    assert good.error is None and good.id == 1
    assert problem in bad.error and bad.error.startswith("line 2")


def test_plain_text_ids_are_line_numbers_and_blank_lines_are_skipped(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("first prompt\n\n{not json, just text}\r\nthird\n", encoding="utf-8")
    items = read_items(path)
    assert [(i.id, i.prompt) for i in items] == [(1, "first prompt"), (3, "{not json, just text}"), (4, "third")]


def test_format_sniffing_and_duplicate_ids(tmp_path):
    path = tmp_path / "noext"
    path.write_text('\n{"id": "a", "prompt": "x"}\n{"id": "a", "prompt": "y"}\n{"id": 1, "prompt": "z"}\n'
                    '{"id": "1", "prompt": "w"}\n', encoding="utf-8")
    items = read_items(path)
    assert [i.error is None for i in items] == [True, False, True, True]  # 1 and "1" are different ids
    assert "duplicate id" in items[1].error and "line 2" in items[1].error
    assert read_items(path, format="text")[0].prompt == '{"id": "a", "prompt": "x"}'


def test_invalid_utf8_is_one_line_s_error(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'{"prompt": "ok"}\n{"prompt": "\xff"}\n')
    assert read_items(path)[1].error == "line 2: not valid UTF-8 (byte 0xff at column 13)"


def test_missing_input_is_a_clean_error(tmp_path):
    with pytest.raises(InputFormatError, match="no such file"):
        read_items(tmp_path / "nope.jsonl")


# ---------------------------------------------------------------- output scan (no model)


def ours(out: Path) -> Path:
    """A batch sidecar beside ``out``, as a run that wrote it would leave."""
    Path(f"{out}.meta.json").write_text(json.dumps({"format": batch.FORMAT, "params": {}}), encoding="utf-8")
    return out


def test_torn_last_line_is_found_and_nothing_is_changed(tmp_path):
    out = ours(tmp_path / "out.jsonl")
    good = b'{"id": "a", "text": "x"}\n{"id": 2, "text": "y"}\n'
    out.write_bytes(good + b'{"id": "c", "te')
    state = inspect_output(out)
    assert state.done == {'"a"', "2"} and state.lines == 2
    assert state.keep_bytes == len(good) and state.torn_bytes == len(b'{"id": "c", "te')
    assert out.read_bytes().endswith(b'"te')  # only reading


def test_zeros_after_a_power_cut_count_as_torn(tmp_path):
    out = ours(tmp_path / "out.jsonl")
    out.write_bytes(b'{"id": "a", "text": "x"}\n' + b"\0" * 40 + b"\n")
    state = inspect_output(out)
    assert state.lines == 1 and state.torn_bytes == 41


def test_a_damaged_middle_line_is_refused(tmp_path):
    out = ours(tmp_path / "out.jsonl")
    out.write_bytes(b'{"id": "a", "text": "x"}\nnot json\n{"id": "b", "text": "y"}\n')
    with pytest.raises(ForeignOutputError, match="out.jsonl:2"):
        inspect_output(out)


# ---------------------------------------------------------------- whole jobs with the real model


@pytest.mark.slow
def test_full_job_one_line_per_input_line(reference):
    records = reference["records"]
    ids = [r["id"] for r in records]
    assert len(records) == 50 and len(set(map(json.dumps, ids))) == 50
    assert ids[25] == 26 and ids[:3] == ["q0", "q1", "q2"]  # --ordered: input order
    bad = records[25]
    assert bad["finish_reason"] == "error" and bad["text"] is None and "not valid JSON" in bad["error"]
    good = [r for r in records if r is not bad]
    assert all(r["text"] is not None and r["usage"]["completion_tokens"] <= 8 for r in good)
    assert all(set(r["timing"]) >= {"prompt_seconds", "gen_seconds"} for r in good)
    limited = [r for r in good if int(r["id"][1:]) % 5 == 4]
    assert all(r["usage"]["completion_tokens"] <= 4 and "," not in r["text"] for r in limited)
    meta = reference["meta"]
    assert meta["sha256"] == SMOLLM2_SHA256 and meta["format"] == "llmlocal-batch/1"
    assert meta["params"]["temperature"] == 0 and meta["params"]["max_tokens"] == 8
    assert "done: 50 of 50 lines" in reference["stderr"]
    assert "49 succeeded, 1 failed, 0 skipped" in reference["stderr"]


@pytest.mark.slow  # needs the 50-line reference job
def test_batch_text_equals_complete_for_each_prompt_kind(reference, model_arg):
    """Temperature 0: a line's text is what `llmlocal complete` prints for the same prompt alone."""
    records = by_id(reference["records"])
    cases = [("q0", ["Write one sentence about the sea."]),
             ("q2", ["Describe owls.", "--system", SYSTEM]),
             ("q3", ["Here is a fact about rain:", "--raw"])]
    for rid, args in cases:
        result = CliRunner().invoke(cli, ["complete", "--json", *model_arg, *GREEDY, *args])
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["text"] == records[json.dumps(rid)]["text"], rid


@pytest.mark.slow
@pytest.mark.parametrize("parallel", ["1", "4"])
def test_parallel_1_and_4_agree_with_2(reference, model_arg, tmp_path, parallel):
    """One and four sequences per decode against two: count the lines whose text differs (rare)."""
    out = tmp_path / f"p{parallel}.jsonl"
    proc = run_llmlocal("batch", str(write_job(tmp_path / "in.jsonl")), "-o", str(out), *model_arg, *GREEDY,
                        "-p", parallel, "--unordered", "-q")
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    ref, got = by_id(reference["records"]), by_id(read_output(out))
    assert ref.keys() == got.keys()
    differ = [k for k in ref if ref[k]["text"] != got[k]["text"]]
    assert len(differ) <= 2, differ  # measured: 0 of 50 here at -n 8, at -p 1 and -p 4


@pytest.mark.slow
def test_sigint_stops_cleanly_and_a_rerun_completes_the_job(reference, model_arg, tmp_path):
    job, out = write_job(tmp_path / "in.jsonl"), tmp_path / "out.jsonl"
    args = ["batch", str(job), "-o", str(out), *model_arg, *GREEDY, "-p", "2"]
    proc = subprocess.Popen(llmlocal_cmd(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_lines(out, 5, proc)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "run the same command again to resume" in stderr
    partial = read_output(out)  # every line whole
    assert 5 <= len(partial) < 50
    assert [r["id"] for r in partial] == [r["id"] for r in reference["records"][: len(partial)]]

    again = run_llmlocal(*args)
    assert again.returncode == 0, again.stderr
    assert f"{len(partial)} skipped (from an earlier run)" in again.stderr
    assert essence(read_output(out)) == essence(reference["records"])  # same lines, same order, each id once


@pytest.mark.slow
def test_sigkill_torn_line_is_cut_and_redone(reference, model_arg, tmp_path):
    job, out = write_job(tmp_path / "in.jsonl"), tmp_path / "out.jsonl"
    args = ["batch", str(job), "-o", str(out), *model_arg, *GREEDY, "-p", "2", "--unordered"]
    proc = subprocess.Popen(llmlocal_cmd(*args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_lines(out, 6, proc)
    proc.kill()
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    # One write per line makes a torn line unlikely from a kill; a power cut can still leave one,
    # so cut the last line in half as it would be.
    data = out.read_bytes()
    last_start = data.rstrip(b"\n").rfind(b"\n") + 1
    out.write_bytes(data[: last_start + (len(data) - last_start) // 2])
    cut_id = json.loads(data[last_start:])["id"]
    kept = data[:last_start].count(b"\n")

    again = run_llmlocal(*args)
    assert again.returncode == 0, again.stderr
    assert "cut off an incomplete last line" in again.stderr
    records = read_output(out)
    assert len(records) == 50 and len({json.dumps(r["id"]) for r in records}) == 50
    assert sorted(essence(records), key=str) == sorted(essence(reference["records"]), key=str)
    assert json.dumps(cut_id) in {json.dumps(r["id"]) for r in records[kept:]}  # redone, not kept torn


@pytest.mark.slow
def test_resume_adds_only_new_ids(model_arg, tmp_path):
    job, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    job.write_text('{"id": 1, "prompt": "Hi"}\n', encoding="utf-8")
    assert run_llmlocal("batch", str(job), "-o", str(out), *model_arg, *GREEDY, "-q").returncode == 0
    first = out.read_bytes()
    with job.open("a", encoding="utf-8") as fh:
        fh.write('{"id": 2, "prompt": "Bye"}\n')
    proc = run_llmlocal("batch", str(job), "-o", str(out), *model_arg, *GREEDY)
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes().startswith(first) and [r["id"] for r in read_output(out)] == [1, 2]


@pytest.mark.slow
def test_resume_refuses_other_parameters_or_model_without_force(installed, tmp_path):
    job, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    job.write_text('{"id": 1, "prompt": "The sky is"}\n{"id": 2, "prompt": "Grass is"}\n', encoding="utf-8")
    base = ["batch", str(job), "-o", str(out), "--raw", "--temperature", "0"]
    first = CliRunner().invoke(cli, [*base, "-m", "smollm2-135m", "-n", "4", "-q"])
    assert first.exit_code == 0, first.output
    out.write_bytes(out.read_bytes().split(b"\n")[0] + b"\n")  # as if stopped after one line
    before = out.read_bytes()

    other_params = CliRunner().invoke(cli, [*base, "-m", "smollm2-135m", "-n", "5"])
    assert other_params.exit_code == 1
    assert "max_tokens was 4, now 5" in other_params.stderr and "--force" in other_params.stderr
    other_model = CliRunner().invoke(cli, [*base, "-m", "gemma3-270m-base", "-n", "4"])
    assert other_model.exit_code == 1
    assert "model smollm2-135m sha256" in other_model.stderr and "refusing to mix" in other_model.stderr
    assert out.read_bytes() == before  # refused before touching anything

    forced = CliRunner().invoke(cli, [*base, "-m", "gemma3-270m-base", "-n", "4", "--force", "-q"])
    assert forced.exit_code == 0, forced.output
    assert [r["id"] for r in read_output(out)] == [1, 2]
    meta = json.loads(Path(f"{out}.meta.json").read_text())
    assert meta["model"] == "gemma3-270m-base" and meta["earlier"][0]["model"] == "smollm2-135m"


def test_output_without_sidecar_is_not_mixed_into(model_arg, tmp_path):
    out = tmp_path / "out.jsonl"
    out.write_text('{"id": 1, "text": "someone else\'s"}\n', encoding="utf-8")
    (tmp_path / "in.txt").write_text("Hi\n", encoding="utf-8")
    result = CliRunner().invoke(cli, ["batch", str(tmp_path / "in.txt"), "-o", str(out), *model_arg])
    assert result.exit_code == 1 and "no out.jsonl.meta.json" in result.stderr


@pytest.mark.slow
def test_stdin_plain_text(model_arg, tmp_path):
    out = tmp_path / "out.jsonl"
    proc = run_llmlocal("batch", "-", "-o", str(out), *model_arg, *GREEDY, "-s", SYSTEM,
                        input="What is bread?\n\nWhat is rain?\n")
    assert proc.returncode == 0, proc.stderr
    records = read_output(out)
    assert [r["id"] for r in records] == [1, 3] and all(r["text"] for r in records)
    assert json.loads(Path(f"{out}.meta.json").read_text())["input"] == "-"


def test_a_prompt_too_long_is_that_line_s_error(model_arg, tmp_path):
    job, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    job.write_text(json.dumps({"id": "long", "prompt": "word " * 300}) + "\n"
                   + json.dumps({"id": "short", "prompt": "Hi"}) + "\n", encoding="utf-8")
    # llama.cpp rounds each sequence's context up to 256 cells; 300 words is more than that.
    result = CliRunner().invoke(cli, ["batch", str(job), "-o", str(out), *model_arg, *GREEDY, "--ctx", "128", "-q"])
    assert result.exit_code == 0, result.output
    long, short = read_output(out)
    assert long["error_type"] == "ContextOverflowError" and "context holds 256" in long["error"]
    assert short["text"] and short["finish_reason"] in ("stop", "length")


def test_output_in_a_read_only_directory_fails_before_any_work(tmp_path):
    if os.geteuid() != 0 or not shutil.which("chattr"):
        pytest.skip("needs root and chattr to make a directory unwritable for root")
    locked = tmp_path / "locked"
    locked.mkdir()
    if subprocess.run(["chattr", "+i", str(locked)], capture_output=True).returncode != 0:
        pytest.skip("this filesystem does not support chattr +i")
    try:
        # An unknown model proves the check comes first: resolving it would be a different error.
        proc = run_llmlocal("batch", "-", "-o", str(locked / "out.jsonl"), "-m", "no-such-model",
                            input="Hi\n")
    finally:
        subprocess.run(["chattr", "-i", str(locked)], check=True)
    assert proc.returncode == 1
    assert proc.stderr.startswith(f"Error: cannot write {locked / 'out.jsonl'}: "), proc.stderr
    assert "hint:" in proc.stderr and "Traceback" not in proc.stderr
    assert list(locked.iterdir()) == []


def test_usage_errors(tmp_path):
    (tmp_path / "in.txt").write_text("Hi\n", encoding="utf-8")
    for args, message in ((["-o", "-"], "give -o FILE"), (["-o", str(tmp_path / "o"), "-p", "0"], "--parallel"),
                          (["-o", str(tmp_path / "missing" / "o")], "does not exist")):
        result = CliRunner().invoke(cli, ["batch", str(tmp_path / "in.txt"), *args])
        assert result.exit_code in (1, 2) and message in result.stderr, result.stderr


def test_run_batch_is_usable_without_the_cli(smollm2, tmp_path):
    """The core function: items in, lines out, a summary back."""
    from llmlocal.runtime import LoadOptions, Model, SamplingParams

    items = [BatchItem(line=1, id="x", prompt="Hi"), BatchItem(line=2, id="y", error="bad line")]
    settings = batch.JobSettings(params=SamplingParams(temperature=0, max_tokens=4, seed=1), ctx=256)
    with Model(smollm2, LoadOptions(n_ctx=512, n_seq_max=2, kv_unified=False)) as m:
        summary = batch.run_batch(m, items, tmp_path / "o.jsonl", settings=settings, parallel=2, progress=False)
    assert (summary.completed, summary.failed, summary.skipped) == (2, 1, 0)
    assert [r["id"] for r in read_output(tmp_path / "o.jsonl")] == ["x", "y"]


# ---------------------------------------------------------------- failures mid-job: clean, in order, resumable


def _limit_file_size(limit: int):
    """For subprocess's preexec_fn: writes past ``limit`` bytes fail with EFBIG, as a full disk fails
    with ENOSPC (Python ignores SIGXFSZ, so the write returns the error instead of killing us)."""
    import resource

    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


@pytest.fixture
def tiny_disk(tmp_path):
    """A 200 KiB tmpfs, nearly filled, so a job's output runs out of space after a few lines.

    Mounting needs root (CI runs as root); elsewhere the file-size-limit variant of the same
    test covers the same code path, so this one is skipped rather than faked.
    """
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root; test_a_failed_write_... [rlimit] covers the same path")
    mount = tmp_path / "tiny"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(mount)],
                      capture_output=True).returncode != 0:
        pytest.skip("this machine does not allow mounting a tmpfs")
    filler = mount / "filler"
    filler.write_bytes(b"\0" * (200 - 8) * 1024)  # two 4 KiB pages left: the sidecar and about 14 lines
    try:
        yield mount, filler
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def _fill_job(path: Path, n: int) -> Path:
    path.write_text("".join(json.dumps({"id": i, "prompt": f"Write a long sentence about the number {i}."}) + "\n"
                            for i in range(n)), encoding="utf-8")
    return path


@pytest.mark.parametrize("how", ["tmpfs", "rlimit"])
def test_a_failed_write_is_one_clean_error_and_the_job_resumes(how, model_arg, tmp_path, request):
    """Issue #12: a full disk printed its error, then the engine's clean-up touched the freed model
    (exit 139). Now: exit 1, one Error line and a true hint, and the same command finishes the job."""
    if how == "tmpfs":
        mount, filler = request.getfixturevalue("tiny_disk")
        out, job, preexec = mount / "out.jsonl", _fill_job(tmp_path / "in.jsonl", 20), None
    else:
        out, job, preexec = tmp_path / "out.jsonl", _fill_job(tmp_path / "in.jsonl", 8), _limit_file_size(1200)
    args = ["batch", str(job), "-o", str(out), *model_arg, "--temperature", "0", "-n", "12", "-p", "2", "-q"]
    proc = subprocess.run(llmlocal_cmd(*args), capture_output=True, text=True, preexec_fn=preexec,
                          env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    reason = "No space left on device" if how == "tmpfs" else "File too large"
    assert proc.stderr.startswith(f"Error: cannot write {out}: {reason}\n"), proc.stderr
    assert "hint: " in proc.stderr and "run the same job again with the same output" in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.count("Error:") == 1
    kept = out.read_bytes().count(b"\n")
    assert 0 < kept < (20 if how == "tmpfs" else 8)

    if how == "tmpfs":
        filler.unlink()
    again = run_llmlocal(*args)
    assert again.returncode == 0, again.stderr
    records = read_output(out)
    assert sorted(r["id"] for r in records) == list(range(20 if how == "tmpfs" else 8))
    assert all(r["text"] for r in records)


_CLOSE_ORDER_SCRIPT = """
import gc, sys
from llmlocal.engine import Engine, Request
from llmlocal.runtime import LoadOptions, Model, SamplingParams
from llmlocal.errors import ModelClosedError

model = Model(sys.argv[1], LoadOptions(n_ctx=512, n_seq_max=2, kv_unified=False))
tokens = model.tokenize("Hello there", add_special=True)
run = Engine(model, 2).run([Request(tokens, SamplingParams(temperature=0, max_tokens=4, seed=1)) for _ in range(4)])
next(run)
model.close()  # the caller's clean-up ran first (as a finally: around the whole job does)
model.close()
run.close()  # then the engine frees its slots: nothing left to free, no call into freed memory
try:
    model.decode(tokens, list(range(len(tokens))), [0] * len(tokens), [False] * len(tokens))
except ModelClosedError as exc:
    print("refused:", exc)
"""


def test_an_engine_outliving_its_model_cleans_up_without_a_crash(smollm2):
    """A job's engine closed after its model (the order a garbage collector may pick) is safe."""
    proc = subprocess.run([sys.executable, "-c", _CLOSE_ORDER_SCRIPT, str(smollm2)], capture_output=True, text=True)
    assert proc.returncode == 0, (proc.returncode, proc.stderr)
    assert "refused: " in proc.stdout and "was closed" in proc.stdout


def test_an_error_mid_job_closes_the_engine_before_the_model(smollm2):
    """run_batch closes its engine before it raises: closing the model right after is safe.
    /dev/full is a real write failure (ENOSPC on every write), no fake needed."""
    from llmlocal.errors import DiskSpaceError
    from llmlocal.runtime import LoadOptions, Model, SamplingParams

    items = [BatchItem(line=i, id=i, prompt="Hi") for i in range(1, 5)]
    settings = batch.JobSettings(params=SamplingParams(temperature=0, max_tokens=4, seed=1), ctx=256)
    model = Model(smollm2, LoadOptions(n_ctx=512, n_seq_max=2, kv_unified=False))
    results = batch.complete_items(model, items, settings, 2)
    with pytest.raises(DiskSpaceError, match="cannot write /dev/full: No space left on device"):
        batch.write_results(4, items, results, "/dev/full", parallel=2, progress=False)
    assert results.gi_frame is None  # closed now, not left suspended for the garbage collector
    model.close()
    with pytest.raises(ModelClosedError):
        next(batch.complete_items(model, items, settings, 2))


# ---------------------------------------------------------------- a file batch did not write is left alone


SIDECARS = {
    "none": None,
    "corrupt": "{not json",
    "foreign": json.dumps({"llmlocal_version": "0.1", "labels": ["a", "b"]}),  # a classify manifest
}


@pytest.mark.parametrize("sidecar", list(SIDECARS))
@pytest.mark.parametrize("content", [b"my notes, one line\n", b'{"id": 1, "label": "spam"}\n'])
def test_a_file_batch_did_not_write_is_never_touched(model_arg, tmp_path, sidecar, content):
    """Issue #12: a one-line notes file was taken for a torn last line, cut and overwritten (exit 0)."""
    out = tmp_path / "notes.jsonl"
    out.write_bytes(content)
    if SIDECARS[sidecar] is not None:
        Path(f"{out}.meta.json").write_text(SIDECARS[sidecar], encoding="utf-8")
    (tmp_path / "in.txt").write_text("Hi\n", encoding="utf-8")
    for extra in ([], ["--force"]):
        result = CliRunner().invoke(cli, ["batch", str(tmp_path / "in.txt"), "-o", str(out), *model_arg, *extra])
        assert result.exit_code == 1, result.output
        assert result.stderr.startswith("Error: ") and "refusing to change it" in result.stderr
        assert "hint: choose a new output file (-o), or remove" in result.stderr
        assert out.read_bytes() == content
        assert Path(f"{out}.meta.json").exists() == (SIDECARS[sidecar] is not None)


def test_an_output_whose_earlier_lines_are_not_records_is_refused(tmp_path):
    out = ours(tmp_path / "out.jsonl")
    out.write_bytes(b"a note\n" + b'{"id": 1, "text": "x"}\n')
    with pytest.raises(ForeignOutputError, match="out.jsonl:1"):
        inspect_output(out)
    out.write_bytes(b'{"id": 1, "text": "x"}\n' + b"a note\n")  # a last line of text, not NUL fill
    with pytest.raises(ForeignOutputError, match="out.jsonl:2"):
        inspect_output(out)


def test_a_device_or_pipe_is_not_an_output(tmp_path):
    fifo = tmp_path / "pipe.jsonl"
    os.mkfifo(fifo)
    (tmp_path / "in.txt").write_text("Hi\n", encoding="utf-8")
    result = CliRunner().invoke(cli, ["batch", str(tmp_path / "in.txt"), "-o", str(fifo)])
    assert result.exit_code == 1 and "is not a regular file" in result.stderr, result.output


# ---------------------------------------------------------------- a run where nothing succeeded


def test_every_line_failing_is_exit_1_with_the_counts(model_arg, tmp_path):
    """Issue #12: random bytes as input exited 0. Every line is still recorded, but the run failed."""
    import random

    rng = random.Random(0)
    noise = tmp_path / "noise.bin"
    noise.write_bytes(b"".join(bytes([0xFF]) + rng.randbytes(30).replace(b"\n", b"") + b"\n" for _ in range(5)))
    out = tmp_path / "out.jsonl"
    result = CliRunner().invoke(cli, ["batch", str(noise), "-o", str(out), *model_arg, *GREEDY])
    assert result.exit_code == 1, result.output
    assert "0 succeeded, 5 failed, 0 skipped" in result.stderr
    assert "Error: none of the 5 line(s) that ran succeeded; the first, line 1 (id 1): line 1: not valid UTF-8" \
        in result.stderr
    assert "hint: batch input is JSON Lines" in result.stderr and "with a new output file" in result.stderr
    assert [r["finish_reason"] for r in read_output(out)] == ["error"] * 5
    again = CliRunner().invoke(cli, ["batch", str(noise), "-o", str(out), *model_arg, *GREEDY])
    assert again.exit_code == 0 and "nothing to do" in again.stderr  # the skipped ids are the hint's truth


def test_an_output_that_is_the_input_is_refused(tmp_path):
    job = tmp_path / "in.jsonl"
    job.write_text('{"prompt": "Hi"}\n', encoding="utf-8")
    result = CliRunner().invoke(cli, ["batch", str(job), "-o", str(job)])
    assert result.exit_code == 2 and "is also an input" in result.stderr, result.output
    assert job.read_text(encoding="utf-8") == '{"prompt": "Hi"}\n'


def test_api_batch_names_the_prompt_and_its_hint_fits_the_api(smollm2):
    """Python API users know list positions, not lines; they have no --ctx or --truncate to pass."""
    import llmlocal
    from llmlocal.errors import ContextOverflowError, UsageError

    with llmlocal.load(str(smollm2), ctx=256) as m:
        with pytest.raises(ContextOverflowError) as err:
            m.batch(["ok", "word " * 400])
        assert str(err.value).startswith("prompts[1]: prompt is ") and "--" not in err.value.hint
        with pytest.raises(UsageError, match=r"^prompts\[1\]: a prompt is a string or a non-empty list"):
            m.batch(["ok", [{"role": "user"}]])
        with pytest.raises(UsageError, match=r"^prompts\[0\]"):
            m.batch([["not a dict"]])


def test_a_csv_input_is_refused_with_a_way_to_read_it(tmp_path):
    path = tmp_path / "prompts.csv"
    path.write_text("id,prompt\n1,Hi\n", encoding="utf-8")
    with pytest.raises(UsageError, match="is CSV by its extension") as err:
        read_items(path)
    assert "--format text" in err.value.hint
    assert [i.prompt for i in read_items(path, format="text")] == ["id,prompt", "1,Hi"]
