"""`llmlocal serve` in a real process on a free loopback port, driven by the official `openai` client.

Nothing is mocked: the server loads the real SmolLM2 and Gemma 3 270M GGUFs through llama.cpp,
uvicorn serves real HTTP, and the client is the one users point at OpenAI. Raw HTTP (urllib)
is used only where the client would hide what is checked (status codes, error bodies, a
client that vanishes mid-stream).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

# Real server processes and Ray clusters: the full suite only (pytest -m "not slow" skips them).
pytestmark = pytest.mark.slow

openai = pytest.importorskip("openai")

SAMPLE = Path(__file__).parent / "data" / "sms_sample.tsv"


class ServerProcess:
    """``llmlocal serve --port 0 ...`` in a subprocess; ``url`` is read from its ready line."""

    def __init__(self, home: Path, *args: str, env: dict | None = None) -> None:
        environ = {**os.environ, "LLMLOCAL_HOME": str(home), "HF_HOME": str(home.parent / "hf"),
                   "HF_HUB_OFFLINE": "1", **(env or {})}
        for var in ("LLMLOCAL_MODEL", "LLMLOCAL_API_KEY", "LLMLOCAL_DEBUG"):
            if var not in (env or {}):
                environ.pop(var, None)
        self.proc = subprocess.Popen([sys.executable, "-m", "llmlocal", "serve", "--port", "0", *args],
                                     env=environ, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        while True:
            line = self.proc.stderr.readline()
            if not line:
                self.proc.wait()
                raise AssertionError(f"server exited {self.proc.returncode}:\n" + "".join(self.lines))
            self.lines.append(line)
            if " serving on " in line:
                self.base = line.split(" serving on ")[1].split()[0].removesuffix("/v1")
                break
        self.url = self.base + "/v1"
        threading.Thread(target=lambda: self.lines.extend(self.proc.stderr), daemon=True).start()

    def stop(self) -> int:
        self.proc.terminate()
        return self.proc.wait(timeout=120)

    def health(self) -> dict:
        with urllib.request.urlopen(self.base + "/health") as r:
            return json.load(r)

    def model_health(self, name: str) -> dict:
        return next(m for m in self.health()["models"] if m["model"] == name)


def http(server: ServerProcess, method: str, path: str, body: bytes | dict | None = None,
         headers: dict | None = None) -> tuple[int, dict]:
    """(status, JSON body) of one raw request."""
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    req = urllib.request.Request(server.base + path, data=data, method=method,
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def _home(tmp_path_factory, seed: Path) -> Path:
    home = tmp_path_factory.mktemp("serve") / "llmlocal"
    for sub in ("blobs", "manifests"):
        (home / sub).mkdir(parents=True)
        for f in (seed / sub).iterdir():
            (os.link if f.suffix == ".gguf" else shutil.copy)(f, home / sub / f.name)
    return home


@pytest.fixture(scope="module")
def server(tmp_path_factory, _seed_blobs):
    s = ServerProcess(_home(tmp_path_factory, _seed_blobs), "-m", "smollm2-135m", "--parallel", "4",
                      "--ctx", "1024", "--max-body-mb", "0.05")
    yield s
    # A graceful stop on SIGTERM exits 0, as systemd and supervisors read it.
    assert s.stop() == 0, "".join(s.lines)
    assert "Traceback" not in "".join(s.lines) and "unloading" not in "".join(s.lines)


@pytest.fixture
def client(server):
    # No retries: a 5xx must fail the test, not be papered over.
    return openai.OpenAI(base_url=server.url, api_key="not-needed", max_retries=0, timeout=600)


CHAT = [{"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Name three colours of the rainbow."}]


# ---------------------------------------------------------------- the OpenAI endpoints


def test_models_lists_installed_models(client):
    ids = [m.id for m in client.models.list()]
    assert ids == ["gemma3-270m-base", "smollm2-135m"]
    assert client.models.retrieve("smollm2-135m").owned_by == "llmlocal"


def test_chat_completion(client):
    r = client.chat.completions.create(model="smollm2-135m", messages=CHAT, temperature=0, max_tokens=40)
    choice = r.choices[0]
    assert r.object == "chat.completion" and r.model == "smollm2-135m"
    assert choice.message.role == "assistant" and choice.message.content.strip()
    assert choice.finish_reason in ("stop", "length")
    assert r.usage.completion_tokens > 0 and r.usage.prompt_tokens > 10
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_stream_reassembles_to_the_non_streamed_reply(client):
    kw = dict(model="smollm2-135m", messages=CHAT, temperature=0, max_tokens=48)
    whole = client.chat.completions.create(**kw)
    pieces, reasons, usage = [], [], None
    for chunk in client.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True}):
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
            if choice.finish_reason:
                reasons.append(choice.finish_reason)
    assert "".join(pieces) == whole.choices[0].message.content
    assert reasons == [whole.choices[0].finish_reason]
    assert usage is not None and usage.completion_tokens == whole.usage.completion_tokens
    assert len([p for p in pieces if p]) > 3  # really streamed, not one lump


def test_completion_is_the_raw_prompt_and_defaults_to_16_tokens(client):
    r = client.completions.create(model="smollm2-135m", prompt="The capital of France is", temperature=0)
    assert r.object == "text_completion" and r.choices[0].text
    assert r.usage.prompt_tokens == 5  # no chat template around it
    assert r.usage.completion_tokens <= 16
    stop = client.completions.create(model="smollm2-135m", prompt="1, 2, 3, 4,", temperature=0, max_tokens=30,
                                     stop=[" 7"])
    assert " 7" not in stop.choices[0].text and stop.choices[0].finish_reason == "stop"


def test_a_second_model_loads_on_demand_and_a_base_model_has_no_chat(client, server):
    r = client.completions.create(model="gemma3-270m-base", prompt="The capital of France is", temperature=0,
                                  max_tokens=8)
    assert r.model == "gemma3-270m-base" and r.choices[0].text
    with pytest.raises(openai.BadRequestError, match="no chat template"):
        client.chat.completions.create(model="gemma3-270m-base", messages=CHAT)
    assert {m["model"] for m in server.health()["models"]} == {"smollm2-135m", "gemma3-270m-base"}


def test_embeddings_equal_the_embed_command(client, installed):
    from llmlocal import loader
    from llmlocal.classify import embedding

    texts = ["I will be home soon", "WINNER! Claim your free prize now"]
    r = client.embeddings.create(model="smollm2-135m", input=texts)  # the client asks for base64
    got = np.array([d.embedding for d in r.data])
    as_floats = client.embeddings.create(model="smollm2-135m", input=texts, encoding_format="float")
    assert np.allclose(got, np.array([d.embedding for d in as_floats.data]), atol=1e-6)
    loaded = loader.load("smollm2-135m", embeddings=True, n_seq_max=16)
    try:
        want = embedding.embed_texts(loaded.model, texts).vectors
    finally:
        loaded.close()
    assert got.shape == want.shape == (2, 576)
    assert np.abs(got - want).max() < 1e-5  # float32 on the wire
    assert r.usage.prompt_tokens > 0


def test_classify_gives_the_classify_commands_probabilities(client, installed):
    from llmlocal import classify

    rows = [line.split("\t") for line in SAMPLE.read_text(encoding="utf-8").splitlines()[1:]]
    examples, items = rows[:12], rows[12:20]
    body = {"model": "smollm2-135m", "input": [t for _, _, t in items],
            "examples": [{"text": t, "label": label} for _, label, t in examples]}
    r = client.post("/classify", body=body, cast_to=object)
    assert r["object"] == "list" and set(r["labels"]) == {"spam", "ham"}
    assert [d["index"] for d in r["data"]] == list(range(len(items)))

    job = classify.Job(items=[classify.Item(id=i, text=t) for i, (_, _, t) in enumerate(items)],
                       labels=r["labels"], examples=[classify.Example(text=t, label=label) for _, label, t in examples])
    contexts = classify.open_contexts("smollm2-135m")
    try:
        result = classify.run(contexts, job)
        want = result.predictions
    finally:
        contexts.close()
    assert r["method"] == result.method and r["auto"]["chosen"] == result.method  # auto, as the command's default
    assert len(r["data"]) == len(want)
    for got, expected in zip(r["data"], want):
        assert got["label"] == expected.label
        for label in r["labels"]:
            assert abs(got["probabilities"][label] - expected.probabilities[label]) < 1e-4
    again = client.post("/classify", body=body, cast_to=object)  # reuses the cached classifier
    assert again["data"] == r["data"]
    embed = client.post("/classify", body={**body, "method": "embed"}, cast_to=object)
    assert embed["method"] == "embed" and len(embed["data"]) == len(items)


# ---------------------------------------------------------------- bad requests


def test_malformed_json_is_a_400_with_an_openai_error_body(server):
    status, body = http(server, "POST", "/v1/chat/completions", b'{"model": "smollm2-135m", "messages": [')
    assert status == 400
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert "not valid JSON" in body["error"]["message"] and body["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("body, param, words", [
    ({"model": "smollm2-135m"}, "messages", "messages"),
    ({"model": "smollm2-135m", "messages": []}, "messages", "non-empty"),
    ({"model": "smollm2-135m", "messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role", "role"),
    ({"model": "smollm2-135m", "messages": CHAT, "temperature": "hot"}, "temperature", "number"),
    ({"model": "smollm2-135m", "messages": CHAT, "n": 0}, "n", "between 1 and 128"),
    ({"model": "smollm2-135m", "messages": CHAT, "max_tokens": -1}, "max_tokens", ">= 0"),
])
def test_invalid_fields_are_400s_naming_the_field(server, body, param, words):
    status, reply = http(server, "POST", "/v1/chat/completions", body)
    assert status == 400, reply
    assert reply["error"]["param"] == param and words in reply["error"]["message"]


@pytest.mark.parametrize("raw, words", [
    (b'{"model": "smollm2-135m", "messages": [{"role": "user", "content": "hi"}], "temperature": NaN}',
     "NaN is not a JSON value"),
    (b'{"model": "smollm2-135m", "prompt": "hi", "top_p": Infinity}', "Infinity is not a JSON value"),
    (b"[" * 20_000 + b"]" * 20_000, "nests deeper than 64 levels"),
    (b'{"model": "smollm2-135m", "prompt": "hi", "user": ' + b"[" * 100 + b"]" * 100 + b"}",
     "nests deeper than 64 levels"),
])
def test_non_json_numbers_and_hostile_nesting_are_400s(server, raw, words):
    for path in ("/v1/chat/completions", "/v1/completions"):
        status, body = http(server, "POST", path, raw)
        assert status == 400 and words in body["error"]["message"], body
    assert server.health()["status"] == "ok"


@pytest.mark.parametrize("field, value, words", [
    ("temperature", 2.5, "between 0 and 2"), ("top_k", 2**40, "<= 2147483647"), ("seed", True, "integer"),
    ("repeat_penalty", -1, "> 0"), ("min_p", 1.5, "in [0, 1]"), ("max_completion_tokens", -4, ">= 0"),
])
def test_sampling_fields_follow_the_shared_rules(server, field, value, words):
    body = {"model": "smollm2-135m", "messages": CHAT, field: value}
    status, reply = http(server, "POST", "/v1/chat/completions", json.dumps(body).encode())
    assert status == 400 and reply["error"]["param"] == field and words in reply["error"]["message"], reply


def test_classify_errors_name_json_fields_not_the_servers_flags(server):
    body = {"model": "smollm2-135m", "input": ["hi"], "method": "embed", "calibrate": True,
            "examples": [{"text": "a", "label": "x"}, {"text": "b", "label": "y"}]}
    status, reply = http(server, "POST", "/v1/classify", body)
    assert status == 400 and reply["error"]["message"].startswith("'calibrate' applies to the prompt method")
    assert "--" not in reply["error"]["message"]


def test_unknown_and_not_installed_models_are_404s(client, server):
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="no-such-model", messages=CHAT)
    assert err.value.code == "model_not_found"
    status, body = http(server, "POST", "/v1/completions", {"model": "qwen2.5-0.5b", "prompt": "hi"})
    assert status == 404 and "llmlocal pull qwen2.5-0.5b" in body["error"]["message"]
    status, body = http(server, "POST", "/v1/completions", {"model": "/etc/passwd", "prompt": "hi"})
    assert status == 404  # a client cannot make the server open files


def test_oversize_body_is_a_413(server):
    status, body = http(server, "POST", "/v1/completions",
                        {"model": "smollm2-135m", "prompt": "x" * 60_000})  # over --max-body-mb 0.05
    assert status == 413 and body["error"]["code"] == "request_too_large"


def test_prompt_longer_than_the_context_is_a_400_and_max_tokens_is_capped(client):
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model="smollm2-135m", prompt="word " * 1500)
    assert err.value.code == "context_length_exceeded" and "1024" in str(err.value)
    r = client.completions.create(model="smollm2-135m", prompt="word " * 1000, max_tokens=500, temperature=0)
    assert r.usage.prompt_tokens + r.usage.completion_tokens <= 1024


def test_unknown_endpoint_and_wrong_method_are_json_errors(server):
    status, body = http(server, "GET", "/v1/nothing-here")
    assert status == 404 and body["error"]["code"] == "unknown_url"
    status, body = http(server, "GET", "/v1/chat/completions")
    assert status == 405 and "error" in body


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory, _seed_blobs):
    s = ServerProcess(_home(tmp_path_factory, _seed_blobs), env={"LLMLOCAL_API_KEY": "s3cret-key"})
    yield s
    s.stop()


def test_api_key_is_required_when_set(keyed_server):
    wrong = openai.OpenAI(base_url=keyed_server.url, api_key="guess", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as err:
        wrong.models.list()
    assert err.value.code == "invalid_api_key"
    status, _ = http(keyed_server, "POST", "/v1/completions", {"prompt": "hi"})  # no header at all
    assert status == 401
    right = openai.OpenAI(base_url=keyed_server.url, api_key="s3cret-key", max_retries=0)
    assert "smollm2-135m" in [m.id for m in right.models.list()]
    assert keyed_server.health()["status"] == "ok"  # /health stays open for scripts


# ---------------------------------------------------------------- concurrency


def test_a_client_that_disconnects_mid_stream_frees_its_slot(server):
    before = server.model_health("smollm2-135m")["cancelled"]
    host, port = server.base.removeprefix("http://").split(":")
    body = json.dumps({"model": "smollm2-135m", "prompt": "Once upon a time", "max_tokens": 900,
                       "stream": True, "temperature": 0.8}).encode()
    sock = socket.create_connection((host, int(port)))
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    received = b""
    while received.count(b"data: ") < 3:  # the role chunk and two pieces of text
        received += sock.recv(4096)
    sock.close()
    # The engine notices at its next step; poll for it (a liveness bound, not a speed claim).
    for _ in range(600):
        h = server.model_health("smollm2-135m")
        if h["cancelled"] == before + 1 and h["active"] == 0:
            break
        time.sleep(0.1)
    assert h["cancelled"] == before + 1 and h["active"] == 0


def test_sixteen_concurrent_streaming_clients_share_the_engine(server):
    """16 clients x 4 streamed requests: every one completes, none fails, and they really decoded
    together (the engine saw all 4 slots busy at once). Tokens/s is reported, not asserted."""
    results = asyncio.run(_load(server.url, clients=16, per_client=4, max_tokens=16))
    assert len(results) == 64
    assert all(r["error"] is None for r in results), [r["error"] for r in results if r["error"]]
    assert all(r["finish_reason"] in ("stop", "length") and r["tokens"] > 0 for r in results)
    assert server.model_health("smollm2-135m")["peak_parallel"] == 4
    assert server.model_health("smollm2-135m")["active"] == 0
    sequential = asyncio.run(_load(server.url, clients=1, per_client=4, max_tokens=16))
    rate = lambda rs: sum(r["tokens"] for r in rs) / (max(r["end"] for r in rs) - min(r["start"] for r in rs))  # noqa: E731
    print(f"\n64 streamed requests: {rate(results):.1f} tok/s aggregate vs {rate(sequential):.1f} one at a time")


async def _load(url: str, *, clients: int, per_client: int, max_tokens: int) -> list[dict]:
    client = openai.AsyncOpenAI(base_url=url, api_key="not-needed", max_retries=0, timeout=600)
    prompts = ["Write a short poem about the sea.", "Give me a tip for learning to cook.",
               "What is a good name for a cat?", "Describe a sunset in one sentence."]

    async def one(c: int, k: int) -> dict:
        start = time.perf_counter()
        out = {"start": start, "error": None, "tokens": 0, "finish_reason": None, "ttft": None}
        try:
            stream = await client.chat.completions.create(
                model="smollm2-135m", messages=[{"role": "user", "content": prompts[(c + k) % 4]}],
                max_tokens=max_tokens, temperature=0.7, seed=c * 10 + k, stream=True,
                stream_options={"include_usage": True})
            async for chunk in stream:
                if chunk.usage is not None:
                    out["tokens"] = chunk.usage.completion_tokens
                for choice in chunk.choices:
                    if choice.delta.content and out["ttft"] is None:
                        out["ttft"] = time.perf_counter() - start
                    if choice.finish_reason:
                        out["finish_reason"] = choice.finish_reason
        except Exception as exc:  # counted, not raised: the test reports every failure
            out["error"] = f"{exc.__class__.__name__}: {exc}"
        out["end"] = time.perf_counter()
        return out

    async def run_client(c: int) -> list[dict]:
        return [await one(c, k) for k in range(per_client)]

    try:
        per = await asyncio.gather(*(run_client(c) for c in range(clients)))
    finally:
        await client.close()
    return [r for rs in per for r in rs]


def test_a_port_in_use_is_one_clear_line(tmp_path):
    from click.testing import CliRunner

    from llmlocal.cli import cli

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    try:
        result = CliRunner().invoke(cli, ["serve", "--port", str(taken.getsockname()[1])])
    finally:
        taken.close()
    assert result.exit_code == 2
    assert "cannot listen on 127.0.0.1" in result.output and "--port" in result.output
    assert "Traceback" not in result.output


# ---------------------------------------------------------------- fuzzing the JSON handling

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-2**70, max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)
_FIELDS = ["model", "messages", "prompt", "input", "labels", "examples", "temperature", "top_p", "top_k",
           "min_p", "repeat_penalty", "seed", "stop", "stream", "stream_options", "n", "logprobs",
           "response_format", "tools", "method", "calibrate", "max_examples", "abstain_below", "encoding_format",
           "presence_penalty", "logit_bias", "user", "echo", "suffix", "x-unknown"]
_BASES = {
    "/v1/chat/completions": {"model": "smollm2-135m", "messages": [{"role": "user", "content": "hi"}]},
    "/v1/completions": {"model": "smollm2-135m", "prompt": "hi"},
    "/v1/embeddings": {"model": "smollm2-135m", "input": "hi"},
    "/v1/classify": {"model": "smollm2-135m", "input": "hi", "labels": ["a", "b"]},
}


@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(path=st.sampled_from(sorted(_BASES)), changes=st.dictionaries(st.sampled_from(_FIELDS), _json_values,
                                                                     max_size=3))
def test_fuzzed_request_bodies_never_get_a_500(server, path, changes):
    """Random field values on valid requests (loopback, bounded count): a 4xx or a 200, never a 5xx."""
    body = {**_BASES[path], **changes}
    # Keep successful generations short: the point is the request handling, not decoding.
    for key in ("max_tokens", "max_completion_tokens"):
        body[key] = 2
    body["stream"] = False
    raw = json.dumps(body, allow_nan=True).encode()
    status, reply = http(server, "POST", path, raw)
    assert status < 500, (body, reply)
    if status >= 400:
        assert set(reply["error"]) == {"message", "type", "param", "code"}


def test_the_server_is_alive_after_the_fuzzing(server, client):
    assert server.health()["status"] == "ok"
    r = client.chat.completions.create(model="smollm2-135m", messages=CHAT, temperature=0, max_tokens=4)
    assert r.choices[0].message.content
