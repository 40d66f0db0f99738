"""--kv-type: a q8_0 or q4_0 KV cache in real llama.cpp contexts, its size, and its effect on
the model's predictions; the option through the CLI, the API and provenance."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import llmlocal
from llmlocal import gguf, hardware, runtime
from llmlocal.cli import cli
from llmlocal.errors import InvalidParameterError
from tests.models import SMOLLM2_SHA256

# llama.cpp's own accounting, logged when a context is created.
_KV_LINE = re.compile(r"llama_kv_cache: size =\s+([\d.]+) MiB")


def load_logged(path: Path, kv_type: str, caplog, *, n_ctx: int = 512) -> tuple[runtime.Model, float]:
    """A model with a ``kv_type`` cache and the KV size llama.cpp says it allocated, in MiB."""
    runtime.set_verbose(True)
    try:
        with caplog.at_level(logging.INFO, logger=runtime.LLAMA_LOG):
            caplog.clear()
            # One thread: on a busy 2-core machine two spin-waiting threads slow each other 10x.
            model = runtime.Model(path, runtime.LoadOptions(n_ctx=n_ctx, kv_type=kv_type, n_threads=1))
    finally:
        runtime.set_verbose(False)
    sizes = [float(m.group(1)) for r in caplog.records if (m := _KV_LINE.search(r.getMessage()))]
    assert len(sizes) == 1, caplog.text[-2000:]
    return model, sizes[0]


def greedy(model: runtime.Model, prompt: list[int], n: int) -> list[int]:
    model.eval_prompt(prompt)
    sampler = model.sampler(llmlocal.sampling.SamplingParams(temperature=0, repeat_penalty=1.0))
    out: list[int] = []
    try:
        for _ in range(n):
            token = sampler.sample()
            out.append(token)
            model.decode_one(token, len(prompt) + len(out) - 1)
    finally:
        sampler.close()
    return out


def forced_argmax(model: runtime.Model, tokens: list[int], start: int) -> list[int]:
    """The model's top token after each of ``tokens[start - 1:-1]``, given the true prefix."""
    model.kv_clear()
    model.decode(tokens, list(range(len(tokens))), [0] * len(tokens), [True] * len(tokens))
    return [int(np.argmax(model.logits(i))) for i in range(start - 1, len(tokens) - 1)]


@pytest.mark.slow
def test_quantised_caches_are_smaller_and_predict_like_f16(smollm2: Path, caplog) -> None:
    prompt_text = ("<|im_start|>user\nWrite two sentences about the sea.<|im_end|>\n<|im_start|>assistant\n")
    f16, f16_mib = load_logged(smollm2, "f16", caplog)
    with f16:
        prompt = f16.tokenize(prompt_text, add_special=False)
        reference = prompt + greedy(f16, prompt, 48)
        # Both sides of each comparison below are computed the same way, in one batch: llama.cpp's
        # batched kernels round differently from one-token decoding (see runtime.py).
        f16_top = forced_argmax(f16, reference, len(prompt))
    # What the estimate says is what llama.cpp allocates: 2, 34/32 and 18/32 bytes per value.
    estimate = gguf.estimate_memory(gguf.read_gguf(smollm2), 512)
    assert f16_mib * 2**20 == estimate.kv_cache_bytes

    agreement = {}
    for kv_type, ratio in (("q8_0", 17 / 32), ("q4_0", 9 / 32)):
        model, mib = load_logged(smollm2, kv_type, caplog)
        with model:
            assert model.options.kv_type == kv_type
            assert mib == pytest.approx(f16_mib * ratio, abs=0.01)
            assert mib * 2**20 == pytest.approx(
                gguf.estimate_memory(model.info, 512, kv_type=kv_type).kv_cache_bytes, abs=0.01 * 2**20)
            text = model.detokenize(greedy(model, prompt, 24))
            assert len(text.split()) >= 5, text  # it still writes text
            top = forced_argmax(model, reference, len(prompt))
        agreement[kv_type] = np.mean([a == b for a, b in zip(top, f16_top)])
    # Given the same text so far, a q8_0 cache almost always picks f16's next token (measured:
    # 47 of 48); q4_0 drifts more (42 of 48). Free-running, the texts part ways after a sentence
    # or so, as any change in rounding makes them do.
    assert agreement["q8_0"] >= 0.95, agreement
    assert agreement["q4_0"] >= 0.8, agreement


def test_a_bad_kv_type_is_refused_before_loading(smollm2: Path) -> None:
    with pytest.raises(InvalidParameterError, match="kv_type.*must be one of f16, q8_0, q4_0, got 'q8'") as err:
        llmlocal.load(str(smollm2), kv_type="q8")
    assert err.value.field == "kv_type"
    with pytest.raises(InvalidParameterError):
        runtime.Model(smollm2, runtime.LoadOptions(kv_type="f32"))


@pytest.mark.parametrize("argv", [["complete", "hi"], ["chat"], ["bench"], ["serve"], ["embed", "in.txt"],
                                  ["batch", "in.txt", "-o", "o.jsonl"], ["info", "smollm2-135m"]])
def test_a_bad_kv_type_is_a_usage_error(argv) -> None:
    result = CliRunner().invoke(cli, [*argv, "--kv-type", "q5_1"])
    assert result.exit_code == 2
    assert "Invalid value for '--kv-type': 'q5_1' is not one of 'f16', 'q8_0', 'q4_0'." in result.output


def test_info_estimate_follows_the_kv_type(installed) -> None:
    def memory(*extra: str) -> dict:
        result = CliRunner().invoke(cli, ["info", "smollm2-135m", "--ctx", "4096", "--json", *extra])
        assert result.exit_code == 0, result.output
        return json.loads(result.output)["memory"]

    f16, q8, q4 = memory(), memory("--kv-type", "q8_0"), memory("--kv-type", "q4_0")
    assert (f16["kv_type"], q8["kv_type"], q4["kv_type"]) == ("f16", "q8_0", "q4_0")
    assert f16["kv_cache_bytes"] == 90 * 2**20 and q4["kv_cache_bytes"] == 90 * 2**20 * 9 // 32
    assert q4["total_bytes"] < q8["total_bytes"] < f16["total_bytes"]
    assert f16["weights_bytes"] == q4["weights_bytes"]
    text = CliRunner().invoke(cli, ["info", "smollm2-135m", "--ctx", "4096", "--kv-type", "q4_0"]).output
    assert "+ q4_0 KV cache 26.5 MB +" in text, text


@pytest.mark.slow
def test_complete_records_the_kv_type(installed) -> None:
    result = CliRunner().invoke(cli, ["complete", "Say hi.", "--kv-type", "q8_0", "--ctx", "512", "-n", "4",
                                      "--temperature", "0", "--json", "-t", "1"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["sha256"] == SMOLLM2_SHA256 and out["params"]["kv_type"] == "q8_0"
    assert out["params"]["n_ctx"] == 512 and out["usage"]["completion_tokens"] >= 1


@pytest.mark.slow
def test_batch_records_the_kv_type_and_a_resume_keeps_it(installed, tmp_path) -> None:
    (tmp_path / "in.txt").write_text("Say hi.\nSay bye.\n")
    out = tmp_path / "out.jsonl"
    base = ["batch", str(tmp_path / "in.txt"), "-o", str(out), "-n", "3", "--temperature", "0", "-q",
            "--ctx", "256", "-p", "2", "-t", "1"]
    first = CliRunner().invoke(cli, [*base, "--kv-type", "q4_0"])
    assert first.exit_code == 0, first.output
    meta = json.loads((tmp_path / "out.jsonl.meta.json").read_text())
    assert meta["params"]["kv_type"] == "q4_0"
    (tmp_path / "in.txt").write_text("Say hi.\nSay bye.\nSay yes.\n")
    resumed = CliRunner().invoke(cli, base)  # no --kv-type: the job's own
    assert resumed.exit_code == 0, resumed.output
    assert len(out.read_text().splitlines()) == 3
    changed = CliRunner().invoke(cli, [*base, "--kv-type", "f16"])
    assert changed.exit_code != 0 and 'kv_type was "q4_0", now "f16"' in changed.output


def test_api_model_reports_its_kv_type(installed) -> None:
    with llmlocal.load("smollm2-135m", ctx=256, kv_type="q8_0") as model:
        assert model.kv_type == "q8_0" and model.n_ctx == 256


@pytest.mark.slow
def test_bench_says_which_threads_and_why(installed) -> None:
    result = CliRunner().invoke(cli, ["bench", "-p", "4", "-g", "2", "-r", "1", "--kv-type", "q8_0", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    default = hardware.default_threads()
    assert (out["threads"], out["threads_reason"], out["kv_type"]) == (default.count, default.reason, "q8_0")
    text = CliRunner().invoke(cli, ["bench", "-p", "8", "-g", "4", "-r", "1", "-t", "1"]).stdout
    assert text.startswith("model      smollm2-135m (1 threads: as asked; f16 KV cache)\n"), text


@pytest.mark.slow
def test_server_pool_loads_every_context_with_the_kv_type(installed) -> None:
    # What `serve --kv-type q8_0` hands the pool: its generation context and, loaded on first
    # use, its embedding context both get that cache.
    from llmlocal.serve.pool import ModelPool, PoolOptions

    pool = ModelPool(PoolOptions(parallel=2, ctx=256, threads=1, kv_type="q8_0"))
    try:
        resident = pool.acquire("smollm2-135m")
        try:
            assert resident.model.options.kv_type == "q8_0"
            assert resident.embed(["a short text"]).shape[0] == 1
            assert all(aux.model.options.kv_type == "q8_0" for aux in resident._aux.values())
        finally:
            pool.release(resident)
    finally:
        pool.close()
