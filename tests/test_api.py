"""The Python API (`llmlocal.load`) with the real SmolLM2 model, and the lazy imports behind it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import llmlocal
from llmlocal.errors import ContextOverflowError, UnknownModelError, UsageError
from tests.models import SMOLLM2_SHA256

SKY = "Reply with one word: what colour is the sky?"
SYSTEM = {"role": "system", "content": "You are a terse assistant who answers in one short sentence."}


@pytest.fixture(scope="module")
def lm(_seed_blobs: Path):
    """One loaded model for the module. The per-test home does not exist yet at module scope, so the
    model is found in the session's seed store; after loading nothing reads the home again."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LLMLOCAL_HOME", str(_seed_blobs))
        model = llmlocal.load("smollm2-135m", ctx=1024)
    with model:
        yield model


# ---------------------------------------------------------------- lazy imports


HEAVY = ("llama_cpp", "huggingface_hub")


def modules_after(code: str) -> list[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport json, sys\n"
                          f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"],
                         capture_output=True, text=True, env=os.environ.copy())
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_import_llmlocal_is_light() -> None:
    assert modules_after("import llmlocal; llmlocal.__version__; llmlocal.__all__") == []


@pytest.mark.parametrize("argv", [["--help"], ["models"], ["complete", "--help"]])
def test_cli_help_and_models_do_not_import_heavy_modules(argv) -> None:
    # The real entry point in a real process; -X importtime lists every module it imported.
    out = subprocess.run([sys.executable, "-X", "importtime", "-m", "llmlocal", *argv],
                         capture_output=True, text=True, env=os.environ.copy())
    assert out.returncode == 0, out.stderr
    imported = {line.rsplit("|", 1)[-1].strip() for line in out.stderr.splitlines() if line.startswith("import time:")}
    assert "llmlocal.cli" in imported  # the listing works, so an absence means something
    assert not [m for m in imported if m.split(".")[0] in HEAVY]


def test_api_names_are_exported() -> None:
    assert {"load", "LocalModel", "pull"} <= set(llmlocal.__all__)
    assert llmlocal.load is llmlocal.api.load and "load" in dir(llmlocal)
    with pytest.raises(AttributeError):
        llmlocal.no_such_thing  # noqa: B018


# ---------------------------------------------------------------- generation


def test_model_identity(lm) -> None:
    assert lm.name == "smollm2-135m" and lm.sha256 == SMOLLM2_SHA256
    assert lm.n_ctx == 1024 and lm.threads >= 1 and not lm.closed


def test_complete_stream_and_chat(lm) -> None:
    text = lm.complete(SKY, temperature=0, max_tokens=16)
    assert isinstance(text, str) and text.strip()
    assert lm.last.text == text and lm.last.finish_reason in {"stop", "length"}
    pieces = list(lm.stream(SKY, temperature=0, max_tokens=16))
    assert all(isinstance(p, str) for p in pieces) and "".join(pieces) == text
    reply = lm.chat([SYSTEM, {"role": "user", "content": "What is 2+2?"}], temperature=0, max_tokens=16)
    assert isinstance(reply, str) and reply.strip()


def test_complete_matches_the_cli(lm, installed) -> None:
    from click.testing import CliRunner

    from llmlocal.cli import cli

    result = CliRunner().invoke(cli, ["complete", SKY, "--temperature", "0", "-n", "16", "--json"])
    assert result.exit_code == 0, result.output
    assert lm.complete(SKY, temperature=0, max_tokens=16) == json.loads(result.stdout)["text"]


def test_sampling_arguments(lm) -> None:
    text = lm.complete("Write one sentence about the sea.", temperature=0.8, seed=5, max_tokens=12,
                       top_k=20, top_p=0.9, min_p=0.05, repeat_penalty=1.05)
    assert lm.last.params["seed"] == 5 and lm.last.params["top_k"] == 20
    assert lm.complete("Write one sentence about the sea.", temperature=0.8, seed=5, max_tokens=12,
                       top_k=20, top_p=0.9, min_p=0.05, repeat_penalty=1.05) == text
    assert lm.complete(SKY, temperature=0, max_tokens=3) and lm.last.finish_reason == "length"
    with pytest.raises(TypeError, match="temprature"):
        lm.complete(SKY, temprature=0)
    with pytest.raises(UsageError, match="temperature"):
        lm.complete(SKY, temperature=-1)


def test_stop_as_a_string_or_a_list(lm) -> None:
    full = lm.complete("Write one sentence about the sea.", temperature=0, max_tokens=24)
    word = " " + full.split()[2]
    cut = full[: full.index(word)]
    assert lm.complete("Write one sentence about the sea.", temperature=0, max_tokens=24, stop=word) == cut
    assert lm.complete("Write one sentence about the sea.", temperature=0, max_tokens=24, stop=[word]) == cut


def test_raw_and_system(lm) -> None:
    raw = lm.complete("The capital of France is", raw=True, temperature=0, max_tokens=8)
    assert raw and lm.last.prompt_tokens == len(lm.tokenize("The capital of France is"))
    assert lm.complete(SKY, system="Answer in French.", temperature=0, max_tokens=8)
    with pytest.raises(UsageError, match="^'system' needs a chat template; it cannot be used with 'raw'"):
        lm.complete(SKY, raw=True, system="x")  # named as Python spells it: the core names no CLI flag


def test_chat_reuses_the_shared_prefix(lm, _seed_blobs) -> None:
    first = [SYSTEM, {"role": "user", "content": "What is 2+2?"}]
    second = [SYSTEM, {"role": "user", "content": "Name a fruit."}]
    lm.complete("An unrelated prompt to move the cache away.", raw=True, temperature=0, max_tokens=2)
    lm.chat(first, temperature=0, max_tokens=8)
    assert lm.last.cached_tokens == 0
    reply = lm.chat(second, temperature=0, max_tokens=8)
    system_tokens = len(lm.tokenize(SYSTEM["content"]))
    assert system_tokens < lm.last.cached_tokens < lm.last.prompt_tokens
    # Re-used KV entries give the same answer as a fresh evaluation of the whole prompt.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LLMLOCAL_HOME", str(_seed_blobs))
        fresh = llmlocal.load("smollm2-135m", ctx=1024)
    with fresh:
        assert fresh.chat(second, temperature=0, max_tokens=8) == reply and fresh.last.cached_tokens == 0


def test_chat_continues_a_conversation(lm) -> None:
    messages = [SYSTEM, {"role": "user", "content": "What is 2+2?"}]
    answer = lm.chat(messages, temperature=0, max_tokens=12)
    messages += [{"role": "assistant", "content": answer}, {"role": "user", "content": "And 3+3?"}]
    assert lm.chat(messages, temperature=0, max_tokens=12)
    assert lm.last.cached_tokens > 0


def test_bad_messages(lm) -> None:
    for bad in ([], "hi", [{"role": "user"}], [{"role": "user", "content": 3}]):
        with pytest.raises(UsageError, match="messages"):
            lm.chat(bad)


def test_stream_is_checked_before_the_first_piece(lm) -> None:
    with pytest.raises(ContextOverflowError, match="context holds 1024"):
        lm.stream("word " * 2000)
    with pytest.raises(UsageError, match="top_p"):
        lm.stream(SKY, top_p=0)


def test_one_stream_at_a_time(lm) -> None:
    it = lm.stream(SKY, temperature=0, max_tokens=8)
    next(it)
    with pytest.raises(UsageError, match="still running"):
        lm.complete(SKY)
    it.close()
    assert lm.complete(SKY, temperature=0, max_tokens=4)
    # An abandoned stream does not leave the model busy, or its cache out of step.
    for _piece in lm.stream(SKY, temperature=0, max_tokens=8):
        break
    assert lm.complete(SKY, temperature=0, max_tokens=16) == lm.complete(SKY, temperature=0, max_tokens=16)


def test_tokenize(lm) -> None:
    tokens = lm.tokenize("Hello world")
    assert tokens and all(isinstance(t, int) for t in tokens)
    assert lm.detokenize(tokens) == "Hello world"


# ---------------------------------------------------------------- lifetime and errors


def test_close_then_use_is_a_clear_error(_seed_blobs, monkeypatch) -> None:
    monkeypatch.setenv("LLMLOCAL_HOME", str(_seed_blobs))
    with llmlocal.load() as m:
        assert m.complete(SKY, temperature=0, max_tokens=2)
        it = m.stream(SKY, temperature=0, max_tokens=8)
        next(it)
    assert m.closed
    for call in (lambda: m.complete(SKY), lambda: m.stream(SKY), lambda: m.chat([{"role": "user", "content": "hi"}]),
                 lambda: m.tokenize("hi"), lambda: next(it)):
        with pytest.raises(UsageError, match="model 'smollm2-135m' is closed"):
            call()
    m.close()  # twice is fine
    assert m.name == "smollm2-135m" and "closed" in repr(m)


def test_load_errors(installed) -> None:
    with pytest.raises(UnknownModelError) as err:
        llmlocal.load("smollm-135")
    assert "smollm2-135m" in err.value.suggestions
    with pytest.raises(UsageError, match="no chat template"):
        with llmlocal.load("gemma3-270m-base") as base:
            base.complete("The capital of France is", max_tokens=4)


def test_batch_yields_one_completion_per_prompt_in_order_matching_complete(lm) -> None:
    prompts = [SKY, "Name one fruit.", [SYSTEM, {"role": "user", "content": "Say hello."}]]
    results = lm.batch(prompts, parallel=2, temperature=0, max_tokens=12)
    assert iter(results) is results  # an iterator: results arrive as they finish
    got = list(results)
    assert [r.finish_reason in ("stop", "length") for r in got] == [True] * 3
    assert got[0].text == lm.complete(SKY, temperature=0, max_tokens=12)
    assert got[2].text == lm.chat(prompts[2], temperature=0, max_tokens=12)


def test_batch_refuses_bad_input_before_running(lm) -> None:
    with pytest.raises(UsageError):
        lm.batch("one prompt")
    with pytest.raises(ContextOverflowError):
        lm.batch(["ok", "word " * 5000])
