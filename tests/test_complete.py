"""`llmlocal complete` with the real models through the real CLI.

Click's CliRunner is enough where only stdin/stdout/stderr matter; a real process is used where
the process boundary is the point (reproducibility across runs, a pipe on stdin, a crash that
must not be a segfault). Generation uses small -n so the suite stays quick on a busy CPU.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest
from click.testing import CliRunner

from llmlocal import generate, hardware
from llmlocal.cli import cli
from llmlocal.decoding import StopFilter as _StopFilter
from llmlocal.generate import Generator
from llmlocal.runtime import LoadOptions, Model, SamplingParams
from tests.models import SMOLLM2_SHA256

SKY = "Reply with one word: what colour is the sky?"
SEA = "Write one sentence about the sea."
GREEDY = ["--temperature", "0"]


def invoke(*args: str, input: str | None = None, env: dict | None = None):
    return CliRunner().invoke(cli, list(args), input=input, env=env)


def invoke_json(*args: str, **kw) -> dict:
    result = invoke("complete", "--json", *args, **kw)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def run_llmlocal(*args: str, input: str | None = None) -> subprocess.CompletedProcess:
    """A real `llmlocal` process (same interpreter, so the editable install and venv apply)."""
    return subprocess.run([sys.executable, "-m", "llmlocal", *args], input=input, capture_output=True,
                          text=True, env=os.environ.copy())


def assert_clean_error(stderr: str, pattern: str) -> None:
    """One `Error:` line matching ``pattern``, then at most a hint line, and no traceback."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr, stderr
    errors = [line for line in lines if line.startswith("Error: ")]
    assert len(errors) == 1 and re.search(pattern, errors[0]), stderr
    assert all(line.startswith(("Error: ", "  hint: ", "note: ")) for line in lines), stderr


@pytest.fixture(scope="module")
def model(smollm2: Path):
    """One SmolLM2 context shared by the in-process tests of this module (loaded straight from its file)."""
    with Model(smollm2, LoadOptions(n_ctx=1024)) as m:
        yield m


def chat_tokens(model: Model, text: str) -> list[int]:
    return generate.tokenize_prompt(model, generate.build_prompt(model, text, raw=False), raw=False)


def run_stream(gen: Generator, tokens: list[int], params: SamplingParams) -> tuple[list[str], generate.Completion]:
    stream = gen.stream(tokens, params)
    chunks = list(stream)
    return chunks, stream.completion


# ---------------------------------------------------------------- reproducibility and streaming


@pytest.mark.slow
@pytest.mark.parametrize("sampling", [["--temperature", "0"], ["--temperature", "0.8", "--seed", "1234"]],
                         ids=["greedy", "seeded"])
def test_same_seed_same_text_across_processes(installed, sampling) -> None:
    runs = [run_llmlocal("complete", SEA, "-n", "16", "--json", *sampling) for _ in range(2)]
    for r in runs:
        assert r.returncode == 0, r.stderr
    first, second = (json.loads(r.stdout) for r in runs)
    assert first["text"] and first["text"] == second["text"]
    assert first["usage"] == second["usage"]
    if "--seed" in sampling:
        assert first["params"]["seed"] == second["params"]["seed"] == 1234


@pytest.mark.slow
def test_seed_changes_sampled_text(installed) -> None:
    # The control for the test above: if the seed were ignored (or sampling greedy), every seed
    # would give the same text and "same seed, same text" would prove nothing.
    texts = {invoke_json(SEA, "-n", "16", "--temperature", "0.8", "--seed", str(seed))["text"]
             for seed in (1, 2, 3)}
    assert len(texts) >= 2


def test_streamed_text_equals_json_text(installed) -> None:
    streamed = invoke("complete", SEA, "-n", "16", *GREEDY)
    assert streamed.exit_code == 0, streamed.output
    as_json = invoke_json(SEA, "-n", "16", *GREEDY)
    assert streamed.stdout == as_json["text"] + "\n"


def test_generator_chunks_join_to_completion_text(model) -> None:
    gen = Generator(model)
    chunks, result = run_stream(gen, chat_tokens(model, SEA), SamplingParams(temperature=0, max_tokens=16))
    assert len(chunks) > 1 and "".join(chunks) == result.text
    gen.reset()
    assert gen.complete(chat_tokens(model, SEA), SamplingParams(temperature=0, max_tokens=16)).text == result.text


# ---------------------------------------------------------------- input


def test_prompt_from_a_pipe(installed) -> None:
    piped = run_llmlocal("complete", "-n", "8", *GREEDY, "--json", input=SKY + "\n")
    assert piped.returncode == 0, piped.stderr
    dash = invoke_json("-", "-n", "8", *GREEDY, input=SKY + "\n")
    assert json.loads(piped.stdout)["text"] == dash["text"] != ""


def test_stdin_dash_reads_the_prompt(installed) -> None:
    # The same prompt given on stdin and as an argument is the same completion.
    assert invoke_json("-", "-n", "8", *GREEDY, input=SKY)["text"] == invoke_json(SKY, "-n", "8", *GREEDY)["text"]


# ---------------------------------------------------------------- --json


def test_json_fields(installed) -> None:
    out = invoke_json(SKY, "-n", "8", *GREEDY, "--seed", "7")
    assert out["model"] == "smollm2-135m"
    assert re.fullmatch(r"[0-9a-f]{64}", out["sha256"]) and out["sha256"] == SMOLLM2_SHA256
    assert isinstance(out["text"], str) and out["text"]
    assert out["finish_reason"] in {"stop", "length"}
    usage = out["usage"]
    assert usage["prompt_tokens"] > 0 and 0 < usage["completion_tokens"] <= 8
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    timings = out["timings"]
    for key in ("load_seconds", "prompt_seconds", "gen_seconds", "gen_tokens_per_second"):
        assert isinstance(timings[key], (int, float)) and timings[key] >= 0, key
    assert timings["load_seconds"] > 0 and timings["gen_tokens_per_second"] > 0
    params = out["params"]
    assert {f.name for f in fields(SamplingParams)} <= set(params)
    assert params["seed"] == 7 and params["temperature"] == 0 and params["max_tokens"] == 8
    assert params["n_ctx"] > 0 and params["threads"] >= 1


def test_json_records_a_fresh_seed(installed) -> None:
    seed = invoke_json(SKY, "-n", "4")["params"]["seed"]
    assert isinstance(seed, int) and seed >= 0  # so a sampled result can be reproduced


# ---------------------------------------------------------------- context


LONG = "The history of Rome. " * 160 + "Summarise this in one sentence."


def test_prompt_longer_than_context_is_one_clean_error(installed) -> None:
    result = invoke("complete", LONG, "--ctx", "256", "-n", "8", *GREEDY)
    assert result.exit_code == 1
    assert_clean_error(result.stderr, r"^Error: prompt is \d+ tokens but the context holds 256\b")
    assert "  hint: " in result.stderr and "--truncate" in result.stderr
    assert result.stdout == ""


def test_truncate_drops_the_start_and_says_so(installed) -> None:
    result = invoke("complete", LONG, "--ctx", "256", "-n", "8", *GREEDY, "--truncate", "--json")
    assert result.exit_code == 0, result.output
    note = re.search(r"note: prompt truncated: dropped the first (\d+) tokens to fit the 256-token context",
                     result.stderr)
    assert note, result.stderr
    out = json.loads(result.stdout)  # the note stays off stdout, so the JSON parses
    assert out["params"]["truncated_tokens"] == int(note.group(1)) > 0
    assert out["usage"]["prompt_tokens"] <= 256 - 8


# ---------------------------------------------------------------- base model and chat template


def test_raw_prompt_on_a_base_model(installed) -> None:
    result = invoke("complete", "-m", "gemma3-270m-base", "--raw", "The capital of France is", *GREEDY, "-n", "8")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip()


def test_base_model_without_raw_points_to_raw(installed) -> None:
    result = invoke("complete", "-m", "gemma3-270m-base", "The capital of France is", *GREEDY, "-n", "8")
    assert result.exit_code == 2  # a usage error: the request needs --raw
    assert_clean_error(result.stderr, r"has no chat template")
    assert "--raw" in result.stderr


# ---------------------------------------------------------------- stop sequences


@pytest.mark.slow
def test_stop_cuts_before_the_stop_text(installed) -> None:
    full = invoke_json(SEA, "-n", "20", *GREEDY)["text"]
    words = full.split()
    assert len(words) >= 4, full
    stop = " " + words[len(words) // 2]
    expected = full[: full.index(stop)]
    out = invoke_json(SEA, "-n", "20", *GREEDY, "--stop", stop)
    assert out["text"] == expected and stop not in out["text"]
    assert out["finish_reason"] == "stop"
    streamed = invoke("complete", SEA, "-n", "20", *GREEDY, "--stop", stop)
    assert streamed.stdout == expected + "\n"
    # Of two stop sequences, the one that appears first wins.
    early = words[1]
    both = invoke_json(SEA, "-n", "20", *GREEDY, "--stop", stop, "--stop", early)
    assert both["text"] == full[: full.index(early)]


def test_stop_split_across_tokens_is_caught(model) -> None:
    gen = Generator(model)
    tokens = chat_tokens(model, SEA)
    chunks, full = run_stream(gen, tokens, SamplingParams(temperature=0, max_tokens=20))
    # A stop made of the end of one token's text and the start of the next one's.
    k = next(i for i in range(2, len(chunks) - 1) if len(chunks[i]) >= 2 and len(chunks[i + 1]) >= 2)
    stop = chunks[k][-2:] + chunks[k + 1][:2]
    expected = full.text[: full.text.index(stop)]
    pieces, cut = run_stream(gen, tokens, SamplingParams(temperature=0, max_tokens=20, stop=(stop,)))
    assert cut.text == "".join(pieces) == expected
    assert stop not in "".join(pieces) and cut.finish_reason == "stop"


# _StopFilter is pure string logic, so feeding it chunks by hand tests it completely; the two
# tests above show it wired to the real model.


def feed_all(stops: tuple[str, ...], chunks: list[str]) -> tuple[str, _StopFilter]:
    """Feed chunks as Generator.stream does: stop feeding at a match, flush at the end otherwise."""
    f = _StopFilter(stops)
    out = ""
    for chunk in chunks:
        out += f.feed(chunk)
        if f.stopped:
            return out, f
    return out + f.flush(), f


def test_stop_filter_holds_a_partial_match_until_decided() -> None:
    f = _StopFilter(("END",))
    assert f.feed("abc E") == "abc "
    assert f.feed("N") == ""
    assert f.feed("D and more") == "" and f.stopped and f.text == "abc "


def test_stop_filter_releases_a_false_start() -> None:
    f = _StopFilter(("END",))
    assert f.feed("EN") == ""
    assert f.feed("TRY") == "ENTRY" and not f.stopped


def test_stop_filter_flushes_a_held_prefix_at_the_end() -> None:
    out, f = feed_all(("END",), ["the E"])
    assert out == "the E" and not f.stopped


def test_stop_filter_overlapping_start() -> None:
    assert feed_all(("ab",), ["a", "a", "b", "c"])[0] == "a"


def test_stop_filter_earliest_stop_wins() -> None:
    assert feed_all(("world", "lo w"), ["hel", "lo wor", "ld"])[0] == "hel"


def test_stop_filter_any_chunking_gives_the_same_cut() -> None:
    text = "Once upon a time<|end|> there was more"
    stops = ("<|end|>", "time to")
    for i in range(len(text) + 1):
        for j in range(i, len(text) + 1):
            out, f = feed_all(stops, [text[:i], text[i:j], text[j:]])
            assert out == "Once upon a time" and f.stopped, (i, j)


def test_stop_filter_without_stops_passes_everything() -> None:
    assert feed_all((), ["a", "", "bc"])[0] == "abc"
    assert feed_all(("",), ["a", "bc"])[0] == "abc"


# ---------------------------------------------------------------- models that cannot run


def test_unknown_model_suggests_names(installed) -> None:
    result = invoke("complete", "-m", "smollm-135", "hi")
    assert result.exit_code == 1
    assert_clean_error(result.stderr, r"unknown model 'smollm-135'; did you mean 'smollm2-135m'")


def test_truncated_gguf_is_a_clean_error_not_a_crash(installed, smollm2, tmp_path) -> None:
    data = smollm2.read_bytes()
    broken = tmp_path / "half.gguf"
    broken.write_bytes(data[: len(data) // 2])
    result = run_llmlocal("complete", "-m", str(broken), "hi", "-n", "4")
    assert result.returncode == 1, (result.returncode, result.stderr)  # -11 would be a segfault
    assert_clean_error(result.stderr, r"half\.gguf: truncated")
    assert result.stdout == ""


def test_non_gguf_file_is_a_clean_error(installed, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("notes.gguf").write_text("my shopping list\n", encoding="utf-8")
    result = invoke("complete", "-m", "notes.gguf", "hi")
    assert result.exit_code == 1
    assert_clean_error(result.stderr, r"notes\.gguf: not a GGUF file")


def test_context_too_large_for_ram(installed) -> None:
    result = invoke("complete", "--ctx", "100000000", "hi", "-n", "4")
    assert result.exit_code == 1
    assert_clean_error(result.stderr,
                       r"needs about [\d.]+ GiB at context 100000000 .* but only [\d.]+ GiB is available")
    assert "smaller --ctx" in result.stderr


# ---------------------------------------------------------------- threads and the default model


def test_threads_default_to_physical_cores_and_honour_the_option(installed) -> None:
    assert invoke_json(SKY, "-n", "2", *GREEDY)["params"]["threads"] == hardware.physical_cores()
    assert invoke_json(SKY, "-n", "2", *GREEDY, "--threads", "1")["params"]["threads"] == 1


def test_llama_context_gets_the_thread_count(smollm2) -> None:
    # --json reports what we asked for; this checks llama.cpp's context was really given it.
    import llama_cpp

    for asked, expected in ((None, hardware.physical_cores()), (1, 1)):
        with Model(smollm2, LoadOptions(n_ctx=256, n_threads=asked)) as m:
            assert llama_cpp.llama_n_threads(m._ctx) == expected
            assert llama_cpp.llama_n_threads_batch(m._ctx) == expected


def test_default_model(installed) -> None:
    assert invoke_json(SKY, "-n", "2", *GREEDY)["model"] == "smollm2-135m"
    out = invoke_json("The capital of France is", "--raw", "-n", "2", *GREEDY,
                      env={"LLMLOCAL_MODEL": "gemma3-270m-base"})
    assert out["model"] == "gemma3-270m-base"


# ---------------------------------------------------------------- finish reasons


def test_finish_reason_length_when_max_tokens_is_hit(installed) -> None:
    out = invoke_json(SEA, "-n", "3", *GREEDY)
    assert out["finish_reason"] == "length" and out["usage"]["completion_tokens"] == 3


def test_finish_reason_stop_at_end_of_turn(installed) -> None:
    out = invoke_json(SKY, "-n", "64", *GREEDY)
    assert out["finish_reason"] == "stop" and out["usage"]["completion_tokens"] < 64
