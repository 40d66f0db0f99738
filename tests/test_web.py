"""The web page (`llmlocal serve`'s / and /classify) in a real headless Chromium, on a real server.

Nothing is mocked: a ``llmlocal serve`` process loads the real SmolLM2 (and Gemma 3 270M base on
demand) through llama.cpp, and Playwright drives Debian's Chromium through the flows a person
would: chat with streaming, stop, regenerate, edit, reload, export and import, switch models, the
context filling up, a document index's sources, classifying a CSV, a wrong API key. The browser
fixture refuses every request outside the server's origin and records them all, so each flow
also proves the page needs nothing from the network. Each flow leaves a screenshot in
test-output/; with LLMLOCAL_UPDATE_SCREENSHOTS=1 the README's two are rewritten in docs/.

The fast tier (not slow) checks the served files themselves and the pure request rules.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from llmlocal.serve import app as server_app
from llmlocal.serve import openai_format as oai
from tests.browser import output_dir

WEB = Path(server_app.__file__).resolve().parent.parent / "web"
DOCS = Path(__file__).resolve().parent.parent / "docs"
SAMPLE = Path(__file__).parent / "data" / "sms_sample.tsv"
CTX = 512  # small, so a few long turns fill it
QUESTION = "Name three colours of the rainbow, as a list."
XSS = ('Look <script>window.__pwned=1</script> and <img src=x onerror="window.__pwned=2"> and '
       '[click me](javascript:window.__pwned=3) and [JS too](JaVaScRiPt:window.__pwned=4) and '
       '[a real link](https://example.com/docs) and `<b>code</b>`\n\n```html\n<script>window.__pwned=5</script>\n```')


def _shot(page, name: str, *, docs: str | None = None) -> None:
    page.screenshot(path=str(output_dir() / name))
    if docs and os.environ.get("LLMLOCAL_UPDATE_SCREENSHOTS") == "1":
        DOCS.mkdir(exist_ok=True)
        page.screenshot(path=str(DOCS / docs))


# ---------------------------------------------------------------- fast: the files and the rules


def test_the_page_is_only_its_own_files():
    """No inline script or style (the CSP would refuse them), nothing from another origin, no
    eval or HTML parsing of text: what the page runs is what these files say."""
    names = sorted(p.name for p in WEB.iterdir())
    assert {"index.html", "classify.html", "style.css", "chat.js", "classify.js", "markdown.js", "common.js",
            "tables.js", "icon.svg"} <= set(names)
    for path in WEB.iterdir():
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", text), path.name  # no other origin
        assert "@import" not in text and "url(" not in text, path.name
        if path.suffix == ".html":
            assert not re.search(r"<script(?![^>]*\bsrc=\"/web/)", text), path.name  # no inline script
            assert not re.search(r"\son\w+=", text) and " style=" not in text and "<style" not in text, path.name
        if path.suffix == ".js":
            for banned in ("innerHTML", "outerHTML", "insertAdjacentHTML", "eval(", "new Function", "document.write"):
                assert banned not in text, (path.name, banned)


def test_cors_origins_are_checked():
    assert server_app.check_origin("http://LOCALHOST:3000") == "http://localhost:3000"
    assert server_app.check_origin("https://example.org/") == "https://example.org"
    for bad in ("*", "localhost:3000", "http://a.example/path", "ftp://a.example", "http://u@a.example"):
        with pytest.raises(Exception, match="--cors"):
            server_app.check_origin(bad)


def test_page_url_reaches_a_wildcard_address_through_loopback():
    assert server_app.page_url("0.0.0.0", 8080) == "http://127.0.0.1:8080/"
    assert server_app.page_url("::", 9) == "http://[::1]:9/"
    assert server_app.page_url("127.0.0.1", 5) == "http://127.0.0.1:5/"


def test_the_chat_extension_is_checked_and_absent_from_plain_requests():
    chat = {"messages": [{"role": "user", "content": "hi"}]}
    assert oai.parse_chat_extension(chat, ["docs"]) is None
    assert oai.parse_chat_extension({**chat, "llmlocal": {"index": "docs"}}, ["docs"]).index == "docs"
    cases = [({"llmlocal": "docs"}, ["docs"], 400), ({"llmlocal": {"k": 3}}, ["docs"], 400),
             ({"llmlocal": {"index": "other"}}, ["docs"], 404), ({"llmlocal": {"index": "docs"}}, [], 404),
             ({"llmlocal": {"index": "docs"}, "messages": [{"role": "assistant", "content": "x"}]}, ["docs"], 400)]
    for extra, indexes, status in cases:
        with pytest.raises(oai.ApiError) as err:
            oai.parse_chat_extension({**chat, **extra}, indexes)
        assert err.value.status == status, extra


def test_classify_gold_must_match_the_inputs():
    body = {"input": ["a", "b"], "labels": ["x", "y"]}
    assert oai.parse_classify({**body, "gold": ["x", None]}).gold == ["x", None]
    assert oai.parse_classify({**body, "gold": ["x", ""]}).gold == ["x", None]
    for gold in (["x"], "x", [1, 2]):
        with pytest.raises(oai.ApiError, match="'gold'"):
            oai.parse_classify({**body, "gold": gold})


def test_evaluation_is_the_eval_commands_report():
    # Hand-made predictions are enough: evaluation() only passes them to metrics.report.
    from llmlocal.classify import metrics
    from llmlocal.classify.types import Prediction

    preds = [Prediction(id=i, label=label, confidence=c, probabilities={}, top=label)
             for i, (label, c) in enumerate([("x", 0.9), ("y", 0.6), ("x", 0.7)])]
    report = oai.evaluation(["x", "y"], preds, ["x", None, "y"])
    want = metrics.report(["x", "y"], ["x", "x"], ["x", "y"], confidence=[0.9, 0.7], top=["x", "x"])
    assert report == {**want, "rows": [0, 2]}
    assert oai.evaluation(["x", "y"], preds, [None, None, None]) is None
    with pytest.raises(oai.ApiError, match="does not know: z"):
        oai.evaluation(["x", "y"], preds, ["z", None, None])


# ---------------------------------------------------------------- the servers


slow = pytest.mark.slow


def _server(tmp_path_factory, seed, *args, env=None):
    from tests.test_serve import ServerProcess, _home

    return ServerProcess(_home(tmp_path_factory, seed), *args, env=env)


def _index(home: Path, tmp: Path) -> None:
    docs = tmp / "docs"
    docs.mkdir()
    (docs / "guide.md").write_text("# Guide\n\n## Password\n\nThe default password of the router is acme-4242.\n"
                                   "\n## Lights\n\nThe blue light means the router is updating.\n", encoding="utf-8")
    env = {**os.environ, "LLMLOCAL_HOME": str(home), "HF_HOME": str(home.parent / "hf"), "HF_HUB_OFFLINE": "1"}
    subprocess.run([sys.executable, "-m", "llmlocal", "index", "acme", str(docs), "-q"], env=env, check=True,
                   capture_output=True)


@pytest.fixture(scope="module")
def server(tmp_path_factory, _seed_blobs):
    from tests.test_serve import ServerProcess, _home

    home = _home(tmp_path_factory, _seed_blobs)
    _index(home, tmp_path_factory.mktemp("docs"))
    s = ServerProcess(home, "-m", "smollm2-135m", "--parallel", "2", "--ctx", str(CTX), "--index", "acme")
    yield s
    assert s.stop() == 0, "".join(s.lines)
    assert "Traceback" not in "".join(s.lines)


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory, _seed_blobs):
    s = _server(tmp_path_factory, _seed_blobs, "--cors", "http://localhost:3000", "--ctx", str(CTX),
                env={"LLMLOCAL_API_KEY": "s3cret-key"})
    yield s
    s.stop()


def raw(base: str, path: str, *, method: str = "GET", body: dict | None = None,
        headers: dict | None = None) -> tuple[int, dict, bytes]:
    """(status, headers with lower-case names, body) of one request."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base + path, data=data, method=method,
                                 headers={**({"Content-Type": "application/json"} if data else {}), **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=300) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def _open(browser_page, server, path: str = "/", *, width: int = 1280, height: int = 800):
    browser_page.allow_origin(server.base)
    page = browser_page.page
    page.set_default_timeout(20_000)
    page.set_viewport_size({"width": width, "height": height})
    page.goto(server.base + path)
    return page


def _ready(page) -> None:
    """Until the page has its models (and indexes) from the server."""
    page.wait_for_selector("body[data-ready]", state="attached")


def _outside_requests(browser_page, server) -> list[str]:
    return browser_page.network_requests()


def _settings(page, *, temperature="0", max_tokens="24", seed="7", system: str | None = None):
    if page.locator("#settings").is_hidden():
        page.click("#settings-toggle")
    page.fill("#temperature", temperature)
    page.fill("#max-tokens", max_tokens)
    page.fill("#seed", seed)
    if system is not None:
        page.fill("#system", system)
    page.locator("#seed").dispatch_event("change")
    page.locator("#temperature").dispatch_event("change")
    page.locator("#max-tokens").dispatch_event("change")
    page.click("#settings-toggle")


def _wait_idle(page, timeout: float = 120_000) -> None:
    """Until no reply is being generated (the Send button is back)."""
    page.wait_for_function("() => !document.body.classList.contains('busy')", timeout=timeout)


def _stored(page) -> list[dict]:
    return page.evaluate("() => JSON.parse(localStorage.getItem('llmlocal.conversations'))")


def _import(page, tmp_path: Path, transcript: dict, name: str = "saved.json") -> None:
    path = tmp_path / name
    path.write_text(json.dumps(transcript), encoding="utf-8")
    page.set_input_files("#import-file", str(path))
    page.wait_for_selector('#notice[data-kind="imported"]')


# ---------------------------------------------------------------- plain HTTP: headers, --no-ui, the extension


@slow
def test_every_response_has_the_security_headers_and_no_cors(server):
    cases = [("/", "text/html"), ("/classify", "text/html"), ("/web/chat.js", "text/javascript"),
             ("/web/style.css", "text/css"), ("/web/icon.svg", "image/svg+xml"), ("/v1/models", "application/json"),
             ("/health", "application/json"), ("/v1/nothing", "application/json")]
    for path, kind in cases:
        status, headers, _ = raw(server.base, path, headers={"Origin": "http://evil.example"})
        assert status == (404 if path == "/v1/nothing" else 200), path
        assert headers["content-type"].startswith(kind), path
        assert headers["content-security-policy"] == server_app.CSP
        for directive in ("default-src 'self'", "script-src 'self'", "connect-src 'self'", "frame-ancestors 'none'"):
            assert directive in headers["content-security-policy"]
        assert "unsafe" not in headers["content-security-policy"]
        assert headers["x-content-type-options"] == "nosniff" and headers["referrer-policy"] == "no-referrer"
        assert not any(h.startswith("access-control-") for h in headers), (path, headers)
    status, headers, _ = raw(server.base, "/v1/chat/completions", method="OPTIONS",
                             headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"})
    assert status == 405 and "access-control-allow-origin" not in headers
    for path in ("/web/..%2fserve%2fapp.py", "/web/%2e%2e", "/web/chat.py", "/web/.hidden.js", "/web/missing.js"):
        status, headers, body = raw(server.base, path)
        assert status == 404 and b"__future__" not in body, path
    for _ in range(100):  # the line after the ready line, read by the server's stderr thread
        if any(line.startswith(f"Open {server.base}/ in your browser") for line in server.lines):
            break
        time.sleep(0.05)
    assert any(line.startswith(f"Open {server.base}/ in your browser") for line in server.lines)


@slow
def test_cors_is_only_for_the_named_origin(keyed_server):
    base = keyed_server.base
    status, headers, _ = raw(base, "/v1/models", method="OPTIONS", headers={
        "Origin": "http://localhost:3000", "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "authorization"})
    assert status == 204 and headers["access-control-allow-origin"] == "http://localhost:3000"
    assert "authorization" in headers["access-control-allow-headers"]
    status, headers, _ = raw(base, "/v1/models", headers={"Origin": "http://localhost:3000",
                                                           "Authorization": "Bearer s3cret-key"})
    assert status == 200 and headers["access-control-allow-origin"] == "http://localhost:3000"
    status, headers, _ = raw(base, "/v1/models", method="OPTIONS", headers={
        "Origin": "http://localhost:3001", "Access-Control-Request-Method": "GET"})
    assert status == 405 and "access-control-allow-origin" not in headers
    status, _, _ = raw(base, "/v1/models")
    assert status == 401
    status, headers, _ = raw(base, "/")  # the page loads without the key; what it calls does not
    assert status == 200 and headers["content-security-policy"] == server_app.CSP


@slow
def test_no_ui_serves_the_api_only(tmp_path_factory, _seed_blobs):
    s = _server(tmp_path_factory, _seed_blobs, "--no-ui")
    try:
        for path in ("/", "/classify", "/web/chat.js", "/web/style.css"):
            status, headers, body = raw(s.base, path)
            assert status == 404 and json.loads(body)["error"]["code"] == "unknown_url", path
            assert headers["x-content-type-options"] == "nosniff"
        assert raw(s.base, "/v1/models")[0] == 200
    finally:
        s.stop()
    assert not any("in your browser" in line for line in s.lines)


@slow
def test_open_starts_the_browser_at_the_page(tmp_path_factory, _seed_blobs, tmp_path):
    # webbrowser runs $BROWSER's command with the URL: here, one that writes it down.
    seen = tmp_path / "opened.txt"
    browser = f"{sys.executable} -c \"import sys; open(sys.argv[2], 'w').write(sys.argv[1])\" %s {seen}"
    s = _server(tmp_path_factory, _seed_blobs, "--open", env={"BROWSER": browser})
    try:
        for _ in range(200):
            if seen.exists() and seen.read_text():
                break
            time.sleep(0.05)
        assert seen.read_text() == s.base + "/"
    finally:
        s.stop()


@slow
def test_the_index_extension_answers_with_sources_and_plain_requests_are_unchanged(server):
    question = [{"role": "user", "content": "What is the default password of the router?"}]
    base = {"model": "smollm2-135m", "messages": question, "max_tokens": 16, "temperature": 0, "seed": 1}
    status, _, body = raw(server.base, "/v1/chat/completions", method="POST", body=base)
    plain = json.loads(body)
    assert status == 200 and "llmlocal" not in plain
    status, _, body = raw(server.base, "/v1/chat/completions", method="POST",
                          body={**base, "llmlocal": {"index": "acme"}})
    answered = json.loads(body)
    assert status == 200, answered
    sources = answered["llmlocal"]["sources"]
    assert answered["llmlocal"]["index"] == "acme" and sources[0]["number"] == 1
    assert "acme-4242" in sources[0]["text"] and re.search(r"guide\.md:\d+-\d+$", sources[0]["where"])
    # The model saw the sources: a longer prompt than the question alone.
    assert answered["usage"]["prompt_tokens"] > plain["usage"]["prompt_tokens"] + 10
    status, _, body = raw(server.base, "/v1/chat/completions", method="POST",
                          body={**base, "llmlocal": {"index": "acme"}, "stream": True})
    chunks = [json.loads(line[6:]) for line in body.decode().splitlines() if line.startswith("data: {")]
    assert chunks[-1]["choices"] == [] and chunks[-1]["llmlocal"]["sources"] == sources
    status, _, body = raw(server.base, "/v1/chat/tokens", method="POST", body=base)
    assert status == 200 and json.loads(body) == {"object": "chat.tokens", "model": "smollm2-135m",
                                                  "prompt_tokens": plain["usage"]["prompt_tokens"],
                                                  "context_per_request": CTX}
    status, _, body = raw(server.base, "/v1/indexes")
    assert [x["id"] for x in json.loads(body)["data"]] == ["acme"]


# ---------------------------------------------------------------- the chat page


@slow
def test_chat_streams_regenerates_edits_and_survives_a_reload(server, browser_page):
    page = _open(browser_page, server)
    _ready(page)
    _settings(page, max_tokens="40")
    # Record what the reply looks like at each render: tokens must arrive one render at a time.
    page.evaluate("""() => { window.__lengths = [];
        new MutationObserver(() => { const r = document.querySelector('.message.assistant:last-child .content');
            if (r) window.__lengths.push(r.textContent.length); })
        .observe(document.getElementById('messages'), {childList: true, subtree: true, characterData: true}); }""")
    page.fill("#prompt", QUESTION)
    page.press("#prompt", "Enter")
    page.wait_for_selector(".message.assistant")
    _wait_idle(page)
    lengths = page.evaluate("window.__lengths")
    assert len({n for n in lengths if n}) >= 3, lengths  # streamed, not one lump
    conv = _stored(page)[0]
    reply = conv["messages"][1]["content"]
    assert reply.strip() and conv["messages"][0]["content"] == QUESTION
    # The page sent what a plain client would: the same reply for the same request.
    status, _, body = raw(server.base, "/v1/chat/completions", method="POST", body={
        "model": "smollm2-135m", "messages": [{"role": "user", "content": QUESTION}],
        "temperature": 0, "seed": 7, "max_tokens": 40})
    assert status == 200 and json.loads(body)["choices"][0]["message"]["content"] == reply
    meter = page.inner_text("#meter")
    assert re.fullmatch(r"\d+ / 512 tokens", meter), meter
    assert int(meter.split()[0]) == json.loads(body)["usage"]["total_tokens"]
    _shot(page, "web-chat.png")

    page.click(".message.assistant .regenerate")  # temperature 0, same seed: the same reply again
    _wait_idle(page)
    assert [m["content"] for m in _stored(page)[0]["messages"]][1] == reply
    page.click(".message.user .edit")
    page.fill(".edit-box", "Name one colour.")
    page.click(".resend")
    page.wait_for_function("() => document.querySelector('.message.user .content').textContent === 'Name one colour.'")
    _wait_idle(page)
    messages = _stored(page)[0]["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant"] and messages[0]["content"] == "Name one colour."

    page.reload()
    page.wait_for_selector(".message.assistant")
    assert page.inner_text(".message.user .content") == "Name one colour."
    assert page.locator("#conversations li").count() == 1
    assert "Name one colour." in page.inner_text("#conversations li.active")

    page.set_viewport_size({"width": 390, "height": 844})  # a phone: the sidebar folds away
    page.wait_for_function("() => document.getElementById('sidebar').getBoundingClientRect().right <= 0")
    _shot(page, "web-chat-phone.png")
    page.click("#toggle-sidebar")
    page.wait_for_function("() => document.getElementById('sidebar').getBoundingClientRect().x >= 0")
    _shot(page, "web-chat-phone-sidebar.png")
    assert _outside_requests(browser_page, server) == []


@slow
def test_real_replies_render_as_markdown(server, browser_page):
    """SmolLM2's own Markdown (a numbered list; a fenced code block and inline code) as elements,
    at temperature 0 and a fixed seed. This conversation is the README's screenshot."""
    page = _open(browser_page, server)
    _ready(page)
    _settings(page, max_tokens="120")
    for question in ("Give me three tips for learning to cook, as a numbered list.",
                     "Write a Python function that adds two numbers, in a code block."):
        page.fill("#prompt", question)
        page.press("#prompt", "Enter")
        page.wait_for_function(f"() => document.querySelectorAll('.message.assistant').length === "
                               f"{1 if 'cook' in question else 2}")
        _wait_idle(page)
    tips, code = page.locator(".message.assistant .content").all()
    replies = [m["content"] for m in _stored(page)[0]["messages"][1::2]]
    # Which Markdown the model writes is its own; what the page makes of it is checked here.
    if re.search(r"^1\. .*\n+2\. .*\n+3\. ", replies[0], re.M):
        assert tips.locator("ol > li").count() == 3
    if "```" in replies[1]:
        block = replies[1].split("```")[1].split("\n", 1)[1].rstrip("\n")
        assert code.locator("pre code").first.inner_text().rstrip("\n") == block
    assert tips.locator("ol > li").count() + code.locator("pre code").count() > 0, replies  # some Markdown came
    page.evaluate("document.getElementById('messages').scrollTop = 0")
    _shot(page, "web-chat-markdown.png", docs="web-chat.png")
    page.emulate_media(color_scheme="dark")
    _shot(page, "web-chat-dark.png")


@slow
def test_stop_cancels_the_generation_on_the_server(server, browser_page):
    page = _open(browser_page, server)
    _ready(page)
    _settings(page, temperature="0.8", max_tokens="400")
    before = server.model_health("smollm2-135m")["cancelled"]
    page.fill("#prompt", "Write a long story about a dragon who learns to bake bread.")
    page.click("#send")
    page.wait_for_function("() => document.querySelector('.message.assistant .content')?.textContent.length > 20")
    page.click("#stop")
    _wait_idle(page)
    for _ in range(300):  # the engine notices at its next step: a liveness bound, not a speed claim
        health = server.model_health("smollm2-135m")
        if health["cancelled"] > before and health["active"] == 0:
            break
        time.sleep(0.1)
    assert health["cancelled"] == before + 1 and health["active"] == 0
    assert page.locator(".message.assistant .tag", has_text="stopped").count() == 1
    stored = _stored(page)[0]["messages"]
    assert stored[1]["stopped"] is True and len(stored[1]["content"]) > 20  # the text so far is kept
    _shot(page, "web-chat-stopped.png")


@slow
def test_export_and_import_are_the_repls_transcripts_and_model_text_is_inert(server, browser_page, tmp_path):
    from llmlocal.chat import _parse_transcript

    saved = {"model": "smollm2-135m", "system": "Be brief.",
             "messages": [{"role": "user", "content": "Show me <img src=x onerror=\"window.__pwned=6\"> <b>bold</b>"},
                          {"role": "assistant", "content": XSS}],
             "params": {"temperature": 0.0, "top_p": 0.9, "top_k": 40, "min_p": 0.05, "repeat_penalty": 1.1,
                        "seed": 3, "max_tokens": 64}}  # ChatSession.to_dict's shape
    _parse_transcript("saved.json", saved)  # what the REPL's /load accepts
    page = _open(browser_page, server)
    _ready(page)
    _import(page, tmp_path, saved)
    assert "top_p" in page.inner_text("#notice")  # said, not silently dropped
    assert page.evaluate("window.__pwned") is None
    messages = page.locator("#messages")
    assert messages.locator("script, img, iframe, object").count() == 0
    assert page.locator(".message.user .content").inner_text().startswith("Show me <img src=x")
    assert messages.locator("a").count() == 1
    assert messages.locator("a").get_attribute("href") == "https://example.com/docs"  # never clicked
    assert messages.locator("a").get_attribute("rel") == "noopener noreferrer"
    refused = messages.locator(".refused-link")
    assert refused.all_inner_texts() == ["click me", "JS too"]
    assert messages.locator("[href^='javascript' i]").count() == 0
    assert messages.locator("pre code").inner_text() == "<script>window.__pwned=5</script>"
    assert messages.locator("p code").inner_text() == "<b>code</b>"
    assert not any(url.endswith("/x") for url in browser_page.requests)  # the <img src=x> was never made
    _shot(page, "web-chat-xss.png")

    with page.expect_download() as info:
        page.click("#export")
    exported = json.loads(Path(info.value.path()).read_text(encoding="utf-8"))
    system, msgs, params = _parse_transcript("exported.json", exported)
    assert (system, msgs) == (saved["system"], saved["messages"])
    assert params == {"temperature": 0.0, "seed": 3, "max_tokens": 64}
    assert exported["model"] == "smollm2-135m"

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"messages": [{"role": "assistant", "content": "hi"}]}), encoding="utf-8")
    page.set_input_files("#import-file", str(bad))
    page.wait_for_selector('#notice[data-kind="import-error"]')
    assert "should be from the user" in page.inner_text("#notice")
    assert page.locator("#conversations li").count() == 1
    assert page.evaluate("window.__pwned") is None
    assert _outside_requests(browser_page, server) == []


@slow
def test_old_turns_that_no_longer_fit_are_left_out_and_the_page_says_so(server, browser_page, tmp_path):
    long = " ".join(["The quick brown fox jumps over the lazy dog."] * 10)  # ~100 tokens
    turns = []
    for i in range(4):
        turns += [{"role": "user", "content": f"Story {i}: {long}"},
                  {"role": "assistant", "content": f"Noted {i}. {long}"}]
    page = _open(browser_page, server)
    _ready(page)
    _import(page, tmp_path, {"model": "smollm2-135m", "system": None, "messages": turns,
                             "params": {"temperature": 0, "seed": 1, "max_tokens": 16}})
    assert page.locator(".message.outside").count() == 0
    page.fill("#prompt", "Thanks, that is all.")
    page.press("#prompt", "Enter")
    page.wait_for_selector('#notice[data-kind="context-notice"]')
    _wait_idle(page)
    notice = page.inner_text("#notice")
    assert re.search(r"\d older turns? no longer fits? in the 512-token context", notice), notice
    dropped = _stored(page)[0]["first"]
    assert dropped >= 2 and page.locator(".message.outside").count() == dropped
    assert _stored(page)[0]["messages"][-1]["content"].strip()  # and the reply came
    used, ctx = re.fullmatch(r"(\d+) / (\d+) tokens", page.inner_text("#meter")).groups()
    assert int(ctx) == CTX and int(used) <= CTX
    _shot(page, "web-chat-context.png")


@slow
def test_switching_models(server, browser_page):
    page = _open(browser_page, server)
    _ready(page)
    assert page.locator("#model option").all_inner_texts() == ["gemma3-270m-base", "smollm2-135m"]
    assert page.input_value("#model") == "smollm2-135m"  # the server's default (-m), not the first listed
    _settings(page, max_tokens="8")
    page.select_option("#model", "gemma3-270m-base")
    page.fill("#prompt", "Hello")
    page.click("#send")
    page.wait_for_selector('#notice[data-kind="send-error"]', timeout=120_000)
    assert "gemma3-270m-base has no chat template" in page.inner_text("#notice")
    assert page.input_value("#prompt") == "Hello"  # given back, not lost
    page.select_option("#model", "smollm2-135m")
    page.click("#send")
    page.wait_for_selector(".message.assistant")
    _wait_idle(page)
    assert page.inner_text(".message.assistant .who") == "smollm2-135m"
    assert _stored(page)[0]["model"] == "smollm2-135m"


@slow
def test_replies_from_an_index_show_their_sources(server, browser_page):
    page = _open(browser_page, server)
    _ready(page)
    _settings(page, max_tokens="16")
    page.click("#settings-toggle")
    page.select_option("#index", "acme")
    page.click("#settings-toggle")
    page.fill("#prompt", "What is the default password of the router?")
    page.click("#send")
    page.wait_for_selector(".message.assistant .sources li")
    _wait_idle(page)
    source = page.locator(".message.assistant .sources li").first
    assert re.fullmatch(r"\[1\] \S*guide\.md:\d+-\d+", source.locator(".where").inner_text())
    assert "acme-4242" in source.locator("blockquote").inner_text()
    # The conversation keeps what the person typed; the server built the prompt with the sources.
    assert _stored(page)[0]["messages"][0]["content"] == "What is the default password of the router?"
    _shot(page, "web-chat-sources.png")


@slow
def test_a_wrong_api_key_is_refused_and_the_right_one_works(keyed_server, browser_page):
    page = _open(browser_page, keyed_server)
    page.wait_for_selector("#key-dialog[open]")
    assert "--api-key" in page.inner_text("#key-error")
    page.wait_for_selector("#send:disabled")
    assert page.locator("#model option").count() == 0
    page.fill("#key-input", "guess")
    page.click("#key-form button[type=submit]")
    page.wait_for_function("() => document.getElementById('key-error').textContent.includes('refused')")
    assert page.locator("#key-dialog[open]").count() == 1
    assert "Incorrect or missing API key" in page.inner_text("#key-error")
    _shot(page, "web-wrong-key.png")
    page.fill("#key-input", "s3cret-key")
    page.click("#key-form button[type=submit]")
    _ready(page)
    assert page.locator("#key-dialog[open]").count() == 0 and not page.locator("#send").is_disabled()
    page.reload()  # asked once: kept for this origin
    _ready(page)
    assert page.locator("#key-dialog[open]").count() == 0
    assert _outside_requests(browser_page, keyed_server) == []


# ---------------------------------------------------------------- the classify page


def _sms_rows() -> list[tuple[str, str]]:
    rows = [line.split("\t") for line in SAMPLE.read_text(encoding="utf-8").splitlines()[1:]]
    return [(label, text) for _, label, text in rows]


@slow
def test_classify_a_csv_with_examples_matches_the_api(server, browser_page, tmp_path):
    rows = _sms_rows()
    spam = [r for r in rows if r[0] == "spam"]
    ham = [r for r in rows if r[0] == "ham"]
    examples = spam[:4] + ham[:4]
    items = [r for r in rows if r not in examples][:30]
    items[3] = (items[3][0], items[3][1] + ' <img src=x onerror="window.__pwned=1"><script>window.__pwned=2</script>')
    with open(tmp_path / "messages.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows((text, label) for label, text in items)
    with open(tmp_path / "examples.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows((text, label) for label, text in examples)

    page = _open(browser_page, server, "/classify")
    _ready(page)
    page.select_option("#model", "smollm2-135m")
    page.select_option("#method", "prompt")  # auto's cross-validation is the pasted-text test's
    page.set_input_files("#input-file", str(tmp_path / "messages.csv"))
    page.set_input_files("#examples-file", str(tmp_path / "examples.csv"))
    page.wait_for_function("() => document.getElementById('input-summary').textContent.includes('30 rows')")
    page.wait_for_function("() => document.getElementById('examples-summary').textContent.includes('8 examples')")
    assert "30 rows, 30 with a label" in page.inner_text("#input-summary")
    page.click("#run")
    page.wait_for_selector("#results:not([hidden]) #predictions tbody tr", timeout=300_000)

    # The same request, straight to the API: the page must show exactly its numbers.
    body = {"model": "smollm2-135m", "input": [t for _, t in items], "method": "prompt",
            "examples": [{"text": t, "label": label} for label, t in examples], "gold": [label for label, _ in items]}
    status, _, raw_body = raw(server.base, "/v1/classify", method="POST", body=body)
    assert status == 200
    want = json.loads(raw_body)
    assert page.inner_text("#method-name") == want["method"]
    table = page.locator("#predictions tbody tr")
    assert table.count() == 30
    shown = table.evaluate_all("""rows => rows.map(r => ({index: +r.dataset.index, label: r.dataset.label,
        text: r.querySelector('td.text').textContent,
        probs: Object.fromEntries([...r.querySelectorAll('.prob')].map(p => [p.dataset.label, +p.dataset.p]))}))""")
    for got in shown:
        row = want["data"][got["index"]]
        assert got["label"] == row["label"] and got["text"] == items[got["index"]][1]
        assert got["probs"] == pytest.approx(row["probabilities"], abs=1e-12)
    ev = want["evaluation"]
    assert page.inner_text('[data-metric="accuracy"]') == f"{ev['accuracy']:.4f}"
    assert page.inner_text('[data-metric="macro_f1"]') == f"{ev['macro_f1']:.4f}"
    assert page.locator("#confusion td.cell").evaluate_all("cs => cs.map(c => +c.dataset.count)") == \
        [c for r in ev["confusion_matrix"]["counts"] for c in r]
    assert page.locator("#reliability rect.bar").count() == sum(1 for b in ev["calibration_bins"] if b["count"])
    # Each bar stands on the frame's bottom edge, as tall as its bin's accuracy (drawn, not only attributes).
    drawn = page.evaluate("""() => {
        const f = document.querySelector('#reliability rect.frame').getBoundingClientRect();
        return [...document.querySelectorAll('#reliability rect.bar')].map(r => { const b = r.getBoundingClientRect();
            return [b.bottom - f.bottom, b.height / f.height]; }); }""")
    accuracies = [b["accuracy"] for b in ev["calibration_bins"] if b["count"]]
    for (offset, height), accuracy in zip(drawn, accuracies):
        assert abs(offset) < 1 and height == pytest.approx(accuracy, abs=0.02)
    for shown_text in (page.inner_text("#method-used"), page.inner_text("#evaluation")):
        assert "null" not in shown_text and "undefined" not in shown_text and "NaN" not in shown_text
    assert page.evaluate("window.__pwned") is None
    assert page.locator("#predictions img, #predictions script").count() == 0
    _shot(page, "web-classify-setup.png")
    page.evaluate("window.scrollTo(0, document.getElementById('results').offsetTop - 70)")
    _shot(page, "web-classify.png", docs="web-classify.png")

    page.click("#sort")  # most confident first
    confidences = table.evaluate_all("rows => rows.map(r => +r.dataset.confidence)")
    assert confidences == sorted(confidences, reverse=True)
    page.click("#sort")
    confidences = table.evaluate_all("rows => rows.map(r => +r.dataset.confidence)")
    assert confidences == sorted(confidences)

    with page.expect_download() as info:
        page.click("#download")
    written = list(csv.DictReader(io.StringIO(Path(info.value.path()).read_text(encoding="utf-8"))))
    assert len(written) == 30
    for line, row in zip(written, want["data"]):
        assert line["label"] == row["label"]
        for label, p in row["probabilities"].items():
            assert float(line[f"p_{label}"]) == pytest.approx(p, abs=1e-12)

    page.set_viewport_size({"width": 390, "height": 844})
    _shot(page, "web-classify-phone.png")
    page.set_viewport_size({"width": 1280, "height": 800})
    page.evaluate("window.scrollTo(0, document.body.scrollHeight)")
    _shot(page, "web-classify-table.png")
    assert _outside_requests(browser_page, server) == []


@slow
def test_classify_pasted_texts_with_labels_and_rows_labelled_on_the_page(server, browser_page):
    page = _open(browser_page, server, "/classify")
    _ready(page)
    page.select_option("#model", "smollm2-135m")
    page.fill("#texts", "WINNER! Claim your free prize now\nSee you at lunch tomorrow\nCall now for cash\n"
              "Ok, running late")
    page.fill("#labels", "spam, ham")
    page.click("#pick summary")
    page.locator(".pick-label").nth(0).fill("spam")
    page.locator(".pick-label").nth(0).dispatch_event("change")
    page.locator(".pick-label").nth(1).fill("ham")
    page.locator(".pick-label").nth(1).dispatch_event("change")
    page.click("#run")  # method auto, the default
    page.wait_for_selector("#results:not([hidden]) #predictions tbody tr")
    assert page.locator("#predictions tbody tr").count() == 2  # the two labelled rows became examples
    assert page.inner_text("#method-name") in ("prompt", "calibrated", "embed", "combined")
    assert "chosen by auto" in page.inner_text("#method-used")
    assert page.locator("#evaluation").is_hidden()  # nothing known to evaluate against
    labels = page.locator("#predictions tbody tr").evaluate_all("rs => rs.map(r => r.dataset.label)")
    assert set(labels) <= {"spam", "ham"}
