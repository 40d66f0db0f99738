"""``llmlocal serve``: an OpenAI-compatible HTTP API on Starlette + uvicorn.

HTTP only: bodies are checked and shaped by :mod:`llmlocal.openai_format`, models are held by
:mod:`llmlocal.pool`, generation runs on each model's engine thread. Concurrent generation
requests for one model decode together (continuous batching), not one at a time behind a lock.

Every error is an OpenAI error body (``{"error": {"message", "type", "param", "code"}}``) with
OpenAI's status code; a bug is a 500 with one line, never a traceback (that goes to the server's
stderr with ``--debug``). A client that disconnects frees its engine slot at the next step.
This is the only module that imports starlette and uvicorn.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import ipaddress
import json
import logging
import signal
import socket
import threading
import time
import traceback
import webbrowser
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import __version__, classify, generate, loader, store
from ..engine import Failed, Finished, TokenText
from ..engine import Request as EngineRequest
from ..errors import (
    BusyError,
    ContextOverflowError,
    InsufficientMemoryError,
    InvalidParameterError,
    InvalidSchemaError,
    LlmlocalError,
    NotInstalledError,
    UnknownModelError,
    UsageError,
    quoted,
    set_option_style,
)
from ..generate import Completion
from . import openai_format as oai
from .engine_thread import Ticket
from .pool import ModelPool, PoolOptions, Resident

log = logging.getLogger(__name__)

DEFAULT_PORT = 8080
DEFAULT_MAX_BODY = 8 * 1024 * 1024
MAX_BODY_MB = 1024  # a body is held in memory while it is parsed


@dataclass(frozen=True)
class ServerSettings:
    api_key: str | None = None
    max_body: int = DEFAULT_MAX_BODY
    default_model: str | None = None  # for requests that name none
    debug: bool = False
    ui: bool = True  # the web page at / and /classify (serve --no-ui: off)
    cors: tuple[str, ...] = ()  # origins other sites' pages may call the API from (serve --cors)


# ---------------------------------------------------------------- errors


def _api_error(exc: BaseException) -> oai.ApiError:
    """The API's answer to an exception a request raised."""
    if isinstance(exc, oai.ApiError):
        return exc
    hint = getattr(exc, "hint", None)
    message = str(exc) + (f"; {hint}" if hint else "")
    if isinstance(exc, UnknownModelError):
        return oai.ApiError(404, f"The model '{exc.name}' does not exist; `llmlocal models` lists the catalogue",
                            code="model_not_found", param="model")
    if isinstance(exc, NotInstalledError):
        return oai.ApiError(404, f"The model '{exc.name}' is not installed on this server; "
                            f"run `llmlocal pull {exc.name}` on it", code="model_not_found", param="model")
    if isinstance(exc, ContextOverflowError):
        return oai.ApiError(400, message, code="context_length_exceeded")
    if isinstance(exc, InvalidParameterError):
        return oai.ApiError(400, message, param=exc.field)
    if isinstance(exc, (UsageError, InvalidSchemaError)):
        return oai.ApiError(400, message)
    if isinstance(exc, (BusyError, InsufficientMemoryError)):
        return oai.ApiError(503, message, type="server_error", code="overloaded")
    if isinstance(exc, LlmlocalError):
        return oai.ApiError(500, message, type="server_error")
    return oai.ApiError(500, f"internal error: {exc.__class__.__name__}: {exc}", type="server_error")


def _error_response(err: oai.ApiError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if err.status == 401 else None
    return JSONResponse(err.body(), status_code=err.status, headers=headers)


# ---------------------------------------------------------------- request plumbing


async def _read_json(request: Request, limit: int) -> Any:
    """The body as JSON, refusing one over ``limit`` bytes before reading all of it."""
    length = request.headers.get("content-length")
    if length is not None:
        try:
            declared = int(length)
        except ValueError:
            raise oai.ApiError(400, "invalid Content-Length header") from None
        if declared > limit:
            raise oai.ApiError(413, f"request body is {declared} bytes; this server accepts at most {limit} "
                               "(--max-body-mb)", code="request_too_large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise oai.ApiError(413, f"request body exceeds {limit} bytes (--max-body-mb)", code="request_too_large")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.strip():
        raise oai.ApiError(400, "the request body is empty; send a JSON object")
    try:
        body = json.loads(raw, parse_constant=_no_constant)
    except UnicodeDecodeError:
        raise oai.ApiError(400, "the request body is not UTF-8") from None
    except json.JSONDecodeError as exc:
        raise oai.ApiError(400, f"the request body is not valid JSON: {exc.msg} at line {exc.lineno} "
                           f"column {exc.colno}") from None
    except RecursionError:
        raise oai.ApiError(400, f"the request body nests deeper than {MAX_JSON_DEPTH} levels") from None
    _check_depth(body)
    return body


# No OpenAI request nests more than a few levels (a tool schema, a dozen); a limit keeps every
# later step (templates, validation, logging) from recursing on a hostile body.
MAX_JSON_DEPTH = 64


def _no_constant(name: str) -> None:
    # Python's json accepts NaN and Infinity, which JSON (RFC 8259) does not; a NaN temperature
    # would pass every range check.
    raise oai.ApiError(400, f"the request body is not valid JSON: {name} is not a JSON value")


def _check_depth(body: object) -> None:
    stack = [(body, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise oai.ApiError(400, f"the request body nests deeper than {MAX_JSON_DEPTH} levels")
        if isinstance(value, dict):
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value)


async def _until_disconnect(receive: Receive) -> None:
    """Return when the client goes away (the request body has been read by then)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


class _Events:
    """A ticket's engine events, delivered from the engine thread onto this event loop."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue = asyncio.Queue()

    def deliver(self, event: Any) -> None:  # engine thread
        self._loop.call_soon_threadsafe(self._queue.put_nowait, event)

    async def next(self) -> Any:
        return await self._queue.get()


def _tagged(events: _Events, index: int, event: Any) -> None:
    """A ticket's deliver: its events, tagged with the choice they belong to."""
    events.deliver((index, event))


def _sse(payload: dict | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


class _EventStream:
    """A server-sent-event response that notices a client going away while it waits for tokens.

    Starlette's StreamingResponse notices only when a write fails (ASGI 2.4), which for a slow
    generation can be many tokens later; this watches ``http.disconnect`` alongside. ``on_close``
    runs however the stream ends: finished, failed, or abandoned by the client.
    """

    def __init__(self, chunks: AsyncIterator[bytes], on_close: Callable[[], None]) -> None:
        self._chunks, self._on_close = chunks, on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await send({"type": "http.response.start", "status": 200, "headers": [
                (b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"),
                (b"x-accel-buffering", b"no")]})
            async with anyio.create_task_group() as group:
                async def watch() -> None:
                    await _until_disconnect(receive)
                    group.cancel_scope.cancel()

                group.start_soon(watch)
                try:
                    async for chunk in self._chunks:
                        await send({"type": "http.response.body", "body": chunk, "more_body": True})
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
                except OSError:  # the connection broke mid-write
                    pass
                group.cancel_scope.cancel()
        finally:
            await self._chunks.aclose()  # type: ignore[attr-defined]
            self._on_close()


# ---------------------------------------------------------------- the application


class SearchIndex:
    """A document index served by ``serve --index NAME``: its connection and embedding model, one
    request at a time (neither a SQLite connection nor a llama.cpp context takes two threads)."""

    def __init__(self, name: str, *, threads: int | None = None) -> None:
        from .. import documents

        self.name = name
        self.index, self.embedder = documents.open_for_query(name, threads=threads, threads_share=True)
        self.lock = threading.Lock()

    def search(self, query: str, *, k: int, mode: str) -> list:
        from ..documents.job import question_vector

        with self.lock:
            vector = None if mode == "keyword" else question_vector(self.embedder, query)
            return self.index.search(query, vector, k=k, mode=mode)

    def retrieve(self, text: str) -> tuple[str, list]:
        """The user turn ``chat --index`` would send for ``text``, and its sources."""
        from ..documents.job import Retriever

        # chat --index's own retrieval (its k, budget and prompt: their one home), on this index's
        # connection and embedding model rather than a second copy of both.
        retriever = Retriever.over(self.index, self.embedder)
        with self.lock:
            return retriever(text)

    def close(self) -> None:
        with self.lock:
            self.embedder.close()
            self.index.close()


class Api:
    """The endpoints, bound to one pool and its settings."""

    def __init__(self, pool: ModelPool, settings: ServerSettings,
                 indexes: dict[str, SearchIndex] | None = None) -> None:
        self.pool, self.settings = pool, settings
        self.indexes = indexes or {}
        self.started = int(time.time())

    # -- cross-cutting: auth, body, errors

    def _authorised(self, request: Request) -> bool:
        key = self.settings.api_key
        if not key:
            return True
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        # compare_digest: the time taken does not reveal how much of a guessed key was right.
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), key.encode())

    def endpoint(self, handler: Callable[[Request, Any], Awaitable[Response]], *, body: bool = True,
                 auth: bool = True) -> Callable[[Request], Awaitable[Response]]:
        async def wrapped(request: Request) -> Response:
            try:
                # Clients send JSON fields: name those in messages, not the flags of whoever
                # started the server (the context is this request's task, and threads it starts).
                set_option_style(quoted)
                if auth and not self._authorised(request):
                    raise oai.ApiError(401, "Incorrect or missing API key: send 'Authorization: Bearer <key>' "
                                       "with the key the server was started with", code="invalid_api_key")
                payload = await _read_json(request, self.settings.max_body) if body else None
                return await handler(request, payload)
            except Exception as exc:  # every failure is an OpenAI error body, never a traceback
                err = _api_error(exc)
                if err.status >= 500 and self.settings.debug:
                    traceback.print_exception(exc)
                return _error_response(err)

        return wrapped

    def _model_name(self, requested: str | None) -> str:
        name = requested or self.settings.default_model or loader.default_model()
        return name

    async def _acquire(self, requested: str | None) -> Resident:
        return await anyio.to_thread.run_sync(self.pool.acquire, self._model_name(requested))

    # -- endpoints

    async def health(self, request: Request, _body: Any) -> Response:
        loaded = [{"model": r.name, "active": r.worker.outstanding, "parallel": r.worker.engine.n_parallel,
                   "context_per_request": r.n_ctx_seq, "peak_parallel": r.worker.engine.stats.peak_active,
                   "cancelled": r.worker.cancelled} for r in self.pool.loaded()]
        # default_model: what a request naming none gets (the web page preselects it).
        return JSONResponse({"status": "ok", "version": __version__, "models": loaded,
                             "default_model": self._model_name(None)})

    async def models(self, request: Request, _body: Any) -> Response:
        return JSONResponse(oai.models_response(await anyio.to_thread.run_sync(self._installed)))

    async def model(self, request: Request, _body: Any) -> Response:
        name = request.path_params["model"]
        for entry, created in await anyio.to_thread.run_sync(self._installed):
            if entry == name:
                return JSONResponse(oai.model_entry(entry, created))
        raise oai.ApiError(404, f"The model '{name}' does not exist or is not installed", code="model_not_found",
                           param="model")

    def _installed(self) -> list[tuple[str, int]]:
        """Installed models (and resident ones, e.g. a file given with -m), with a creation time."""
        seen: dict[str, int] = {}
        for inst in store.installed_models():
            try:
                created = int(inst.path.stat().st_mtime)
            except OSError:
                created = 0
            seen[inst.name] = created
        for resident in self.pool.loaded():
            seen.setdefault(resident.name, self.started)
        return sorted(seen.items())

    async def chat_completions(self, request: Request, body: Any) -> Response:
        req, extension = await self._chat_request(body)
        return await self._generate(request, req, extension)

    async def _chat_request(self, body: Any) -> tuple[oai.GenerationRequest, dict | None]:
        """A chat request, with llmlocal's extension applied: with ``"llmlocal": {"index": NAME}``
        the last user message goes to the model with the sources retrieved for it."""
        ext = oai.parse_chat_extension(body, list(self.indexes))
        req = oai.parse_chat(body)  # a request that is wrong anyway is refused before retrieving
        if ext is None or ext.index is None:
            return req, None
        served = self.indexes[ext.index]
        content, sources = await anyio.to_thread.run_sync(served.retrieve, oai.last_user_text(body))
        return oai.with_last_user_content(req, content), oai.extension_field(ext.index, sources)

    async def chat_tokens(self, request: Request, body: Any) -> Response:
        """How many tokens a chat request's prompt takes, and the context each request has, so a
        client can leave old turns out before the server would refuse the request."""
        req, _ = await self._chat_request(body)
        resident = await self._acquire(req.model)
        try:
            # No limit here: the count is wanted most when it is over the context.
            tokens = await anyio.to_thread.run_sync(functools.partial(self._prompt_tokens, resident, req, n_ctx=2**62))
            return JSONResponse(oai.tokens_response(resident.name, len(tokens), resident.n_ctx_seq))
        finally:
            self.pool.release(resident)

    async def list_indexes(self, request: Request, _body: Any) -> Response:
        return JSONResponse({"object": "list", "data": [
            {"id": name, "object": "index", "embedding_model": served.embedder.model_name}
            for name, served in self.indexes.items()]})

    async def completions(self, request: Request, body: Any) -> Response:
        return await self._generate(request, oai.parse_completion(body))

    async def _generate(self, request: Request, req: oai.GenerationRequest,
                        extension: dict | None = None) -> Response:
        resident = await self._acquire(req.model)
        try:
            tokens = await anyio.to_thread.run_sync(self._prompt_tokens, resident, req)
            max_tokens = oai.fit_max_tokens(len(tokens), resident.n_ctx_seq, req.max_tokens)
            events = _Events()
            # n choices are n engine requests with one prompt: the engine's prefix sharing evaluates
            # it once and the others copy its KV cells. Events arrive tagged with their choice.
            tickets = [Ticket(EngineRequest(tokens, params), functools.partial(_tagged, events, i))
                       for i, params in enumerate(req.choice_params(replace(req.params, max_tokens=max_tokens)))]
            head = oai.ResponseHead(req.kind, resident.name)
            writers = [oai.ChoiceWriter(req, i) for i in range(req.n)]
        except BaseException:
            self.pool.release(resident)
            raise
        for ticket in tickets:
            resident.worker.submit(ticket)
        if req.stream:
            return _EventStream(self._stream(tickets, events, head, writers, req.include_usage, extension),
                                on_close=lambda: self._end(resident, tickets))  # type: ignore[return-value]
        try:
            completions = await self._wait(request, tickets, events)
        finally:
            self._end(resident, tickets)
        response = head.response([w.whole(c) for w, c in zip(writers, completions)], oai.total_usage(completions))
        if extension is not None:
            response[oai.EXTENSION] = extension
        return JSONResponse(response)

    def _prompt_tokens(self, resident: Resident, req: oai.GenerationRequest, *, n_ctx: int | None = None) -> list[int]:
        model = resident.model
        # What the engine would refuse at submit (an unparsable grammar, a logit bias outside the
        # vocabulary) is refused here, before a stream's 200 is sent. It only reads the vocabulary.
        model.check_sampling(req.params)
        if req.kind == "completion":
            if not req.prompt:
                raise oai.ApiError(400, "'prompt' is empty", param="prompt")
            return generate.prompt_tokens(model, req.prompt, raw=True, n_ctx=resident.n_ctx_seq)[0]
        if resident.template is None:
            raise oai.ApiError(400, f"{resident.name} has no chat template (a base model): use /v1/completions "
                               "with the prompt as-is", param="model")
        assert req.messages is not None  # parse_chat always sets them
        return generate.prompt_tokens(model, req.messages, template=resident.template,
                                      n_ctx=n_ctx or resident.n_ctx_seq)[0]

    def _end(self, resident: Resident, tickets: list[Ticket]) -> None:
        """The request is over (or its client left): free the engine slots and the model."""
        for ticket in tickets:
            resident.worker.cancel(ticket)  # nothing happens if it already finished
        self.pool.release(resident)

    async def _wait(self, request: Request, tickets: list[Ticket], events: _Events) -> list[Completion]:
        """Every choice's finished Completion, or the first failure raised; cancelled if the client
        goes away."""
        done: dict[int, Completion] = {}
        failed: list[BaseException] = []
        async with anyio.create_task_group() as group:
            async def collect() -> None:
                while len(done) < len(tickets):
                    index, event = await events.next()
                    if isinstance(event, Finished):
                        done[index] = event.completion
                    elif isinstance(event, Failed):
                        failed.append(event.error)
                        break
                group.cancel_scope.cancel()

            async def watch() -> None:
                await _until_disconnect(request.receive)
                group.cancel_scope.cancel()  # nobody to answer: _end cancels the tickets

            group.start_soon(collect)
            group.start_soon(watch)
        if failed:
            raise failed[0]
        if len(done) < len(tickets):
            raise oai.ApiError(499, "client closed the request")
        return [done[i] for i in range(len(tickets))]

    async def _stream(self, tickets: list[Ticket], events: _Events, head: oai.ResponseHead,
                      writers: list[oai.ChoiceWriter], include_usage: bool,
                      extension: dict | None = None) -> AsyncIterator[bytes]:
        for writer in writers:
            opening = writer.opening()
            if opening is not None:
                yield _sse(head.chunk(opening))
        done: dict[int, Completion] = {}
        while len(done) < len(tickets):
            index, event = await events.next()
            if isinstance(event, TokenText):
                piece = writers[index].piece(event.text, event.logprobs)
                if piece is not None:
                    yield _sse(head.chunk(piece))
            elif isinstance(event, Finished):
                done[index] = event.completion
                yield _sse(head.chunk(writers[index].closing(event.completion)))
            elif isinstance(event, Failed):
                # The 200 and some text are already sent: the error goes in the stream, as OpenAI's does.
                yield _sse(_api_error(event.error).body())
                break
        else:
            if include_usage:
                yield _sse(head.usage_chunk(oai.total_usage([done[i] for i in range(len(tickets))])))
            if extension is not None:  # last, as the usage chunk is: no choices, llmlocal's field
                yield _sse({**head.usage_chunk({}), "usage": None, oai.EXTENSION: extension})
        yield _sse("[DONE]")

    async def embeddings(self, request: Request, body: Any) -> Response:
        req = oai.parse_embeddings(body)

        def run(resident: Resident) -> dict:
            vectors = resident.embed(req.texts)
            return oai.embeddings_response(resident.name, vectors, as_base64=req.base64,
                                           prompt_tokens=resident.tokens_in(req.texts))

        return JSONResponse(await self._off_loop(req.model, run))

    async def classify(self, request: Request, body: Any) -> Response:
        req = oai.parse_classify(body)
        settings = classify.Settings(method=req.method, instructions=req.instructions, calibrate=req.calibrate,
                                     max_examples=req.max_examples, abstain_below=req.abstain_below,
                                     truncate=req.truncate)

        def run(resident: Resident) -> dict:
            labels, predictions, described = resident.classify(req.texts, req.labels, req.examples,
                                                               settings=settings, key=req.key())
            out = oai.classify_response(resident.name, labels, predictions, described=described,
                                        prompt_tokens=resident.tokens_in(req.texts))
            if req.gold is not None:
                out["evaluation"] = oai.evaluation(
                    labels, predictions, req.gold,
                    abstain_label=settings.abstain_label if req.abstain_below is not None else None)
            return out

        return JSONResponse(await self._off_loop(req.model, run))

    async def search(self, request: Request, body: Any) -> Response:
        req = oai.parse_search(body, list(self.indexes))
        served = self.indexes[req.index]
        hits = await anyio.to_thread.run_sync(functools.partial(served.search, req.query, k=req.k, mode=req.mode))
        return JSONResponse(oai.search_response(req, served.embedder.model_name, hits))

    async def _off_loop(self, requested: str | None, fn: Callable[[Resident], dict]) -> dict:
        return await anyio.to_thread.run_sync(self.pool.run, self._model_name(requested), fn)


# ---------------------------------------------------------------- the web page and every response's headers

# The page's only code is its own files: no inline script or style, no eval, nothing from another
# origin, and no other site may frame it. Model output shown on the page cannot run even if the
# page's own sanitising had a hole.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
SECURITY_HEADERS = [(b"content-security-policy", CSP.encode()), (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"no-referrer"), (b"x-frame-options", b"DENY")]
CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                 ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml", ".png": "image/png",
                 ".ico": "image/x-icon"}
PAGES = {"/": "index.html", "/classify": "classify.html"}


def web_dir() -> Path:
    """The page's static files, inside the package (no build step, nothing fetched)."""
    return Path(__file__).resolve().parent.parent / "web"


def check_origin(value: str) -> str:
    """A ``--cors`` value as browsers send it in ``Origin``: scheme://host[:port], nothing after.

    Raises:
        UsageError: anything else ("*" included: name the site that may drive the models).
    """
    import urllib.parse

    parts = urllib.parse.urlsplit(value.strip())
    if value.strip() == "*":
        raise UsageError("--cors '*' would let every site open in a browser drive the models",
                         hint="name the origin, like --cors http://localhost:3000")
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/") \
            or parts.query or parts.fragment or "@" in parts.netloc:
        raise UsageError(f"--cors {value!r} is not an origin", hint="give scheme://host[:port], like "
                         "http://localhost:3000")
    return f"{parts.scheme}://{parts.netloc.lower()}"


class _Headers:
    """Adds the security headers to every response, and CORS headers only for the ``--cors``
    origins (answering their preflight); any other site's page gets no CORS header, so the browser
    keeps it from reading the API."""

    def __init__(self, app: ASGIApp, *, cors: Sequence[str] = ()) -> None:
        self.app, self.cors = app, frozenset(cors)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        origin = headers.get(b"origin", b"").decode("latin-1")
        allowed: list[tuple[bytes, bytes]] = []
        if origin and origin in self.cors:
            allowed = [(b"access-control-allow-origin", origin.encode("latin-1")), (b"vary", b"Origin")]
            if scope["method"] == "OPTIONS" and b"access-control-request-method" in headers:
                await send({"type": "http.response.start", "status": 204, "headers": [
                    *SECURITY_HEADERS, *allowed, (b"access-control-allow-methods", b"GET, POST, OPTIONS"),
                    (b"access-control-allow-headers", b"authorization, content-type"),
                    (b"access-control-max-age", b"600")]})
                await send({"type": "http.response.body", "body": b""})
                return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *SECURITY_HEADERS, *allowed]}
            await send(message)

        await self.app(scope, receive, with_headers)


async def _static(request: Request) -> Response:
    """A page (``/``, ``/classify``) or one of its assets (``/web/NAME``), from the package."""
    name = PAGES.get(request.url.path) or request.path_params.get("name", "")
    path = web_dir() / name
    # One path segment, a known type, a file that is there: nothing else of the disk is reachable.
    if "/" in name or name.startswith(".") or path.suffix not in CONTENT_TYPES or not path.is_file():
        raise oai.ApiError(404, f"no such file: {request.url.path}", code="unknown_url")
    content = await anyio.to_thread.run_sync(path.read_bytes)
    # no-cache: after an upgrade the browser asks again rather than run the old script.
    return Response(content, media_type=CONTENT_TYPES[path.suffix], headers={"cache-control": "no-cache"})


def create_app(pool: ModelPool, settings: ServerSettings, indexes: dict[str, SearchIndex] | None = None) -> Starlette:
    api = Api(pool, settings, indexes)
    ep = api.endpoint
    routes = [
        Route("/health", ep(api.health, body=False, auth=False), methods=["GET"]),
        Route("/v1/models", ep(api.models, body=False), methods=["GET"]),
        Route("/v1/models/{model:path}", ep(api.model, body=False), methods=["GET"]),
        Route("/v1/chat/completions", ep(api.chat_completions), methods=["POST"]),
        Route("/v1/completions", ep(api.completions), methods=["POST"]),
        Route("/v1/embeddings", ep(api.embeddings), methods=["POST"]),
        Route("/v1/classify", ep(api.classify), methods=["POST"]),
        Route("/v1/search", ep(api.search), methods=["POST"]),
        Route("/v1/indexes", ep(api.list_indexes, body=False), methods=["GET"]),
        Route("/v1/chat/tokens", ep(api.chat_tokens), methods=["POST"]),
    ]
    if settings.ui:
        # The page itself needs no key (it holds nothing secret); every API call it makes does.
        static = ep(lambda request, _body: _static(request), body=False, auth=False)
        routes += [Route(path, static, methods=["GET"]) for path in PAGES]
        routes.append(Route("/web/{name}", static, methods=["GET"]))

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 404:
            err = oai.ApiError(404, f"no such endpoint: {request.method} {request.url.path}", code="unknown_url")
        elif exc.status_code == 405:
            err = oai.ApiError(405, f"{request.method} is not allowed on {request.url.path}",
                               code="method_not_allowed")
        else:
            err = oai.ApiError(exc.status_code, str(exc.detail))
        return _error_response(err)

    async def internal_error(request: Request, exc: Exception) -> Response:
        return _error_response(_api_error(exc))

    return Starlette(routes=routes, exception_handlers={HTTPException: http_error, Exception: internal_error},
                     middleware=[Middleware(_Headers, cors=settings.cors)])


# ---------------------------------------------------------------- running it


def _bind(host: str, port: int) -> socket.socket:
    try:
        try:  # a literal address needs no lookup (and an offline machine may refuse lookups)
            family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
            address: tuple = (host, port)
        except ValueError:
            family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except socket.gaierror as exc:
        raise UsageError(f"cannot listen on {host}: {exc.strerror}", hint="give an address like 127.0.0.1") from None
    except OSError as exc:
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror}",
                         hint="choose another --port (0 picks a free one)") from None
    sock.listen(128)
    sock.setblocking(False)
    return sock


def page_url(host: str, port: int) -> str:
    """Where a browser on this machine finds the page (a wildcard address is reached via loopback)."""
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def serve(models: list[str], *, host: str = "127.0.0.1", port: int = DEFAULT_PORT, api_key: str | None = None,
          options: PoolOptions | None = None, max_body: int = DEFAULT_MAX_BODY, debug: bool = False,
          log_requests: bool = False, on_note: Callable[[str], None] | None = None,
          indexes: Sequence[str] = (), ui: bool = True, cors: Sequence[str] = (), open_page: bool = False) -> None:
    """Load ``models`` (the first is the default for requests that name none), open ``indexes``
    (for POST /v1/search), listen, serve until interrupted. Errors before listening (unknown model
    or index, port in use) raise; afterwards a request's error is its own response.

    ``ui``: serve the web page at / and /classify; ``open_page``: open it in the default browser
    once listening. ``cors``: origins whose pages may call the API (none by default)."""
    import uvicorn

    from .. import runtime

    note = on_note or log.info
    options = options or PoolOptions()
    if len(models) > options.max_models:
        raise UsageError(f"{len(models)} models given but --max-models is {options.max_models}")
    # Every request reads the catalogue and store, and one naming no model reads config.toml:
    # if either is broken, say so now rather than report healthy and answer each request 500.
    store.installed_models()
    loader.default_model()
    pool = ModelPool(options, on_note=note)
    served: dict[str, SearchIndex] = {}
    try:
        for name in indexes:
            served[name] = SearchIndex(name, threads=options.threads)
        names = []
        for ref in models:
            resident = pool.acquire(ref, references=True)
            pool.release(resident)
            names.append(resident.name)
        sock = _bind(host, port)
        # Before the first evaluation, which fixes it for the process: /v1/classify then gives the
        # probabilities `llmlocal classify` does.
        runtime.prefer_batch_invariant_kernels()
        settings = ServerSettings(api_key=api_key or None, max_body=max_body,
                                  default_model=names[0] if names else None, debug=debug, ui=ui,
                                  cors=tuple(check_origin(o) for o in cors))
        app = create_app(pool, settings, served)
        config = uvicorn.Config(app, log_level="info" if log_requests else "warning", access_log=log_requests,
                                timeout_graceful_shutdown=5, lifespan="off", server_header=False)
        server = uvicorn.Server(config)
        bound_host, bound_port = sock.getsockname()[:2]
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        loaded = ", ".join(names) if names else f"models load on first request, default {loader.default_model()}"
        searched = f"; search over {', '.join(served)}" if served else ""
        note(f"llmlocal {__version__} serving on http://{shown}:{bound_port}/v1 ({loaded}; "
             f"{options.parallel} parallel per model{searched}{'; API key required' if api_key else ''})")
        if not api_key and host not in ("127.0.0.1", "localhost", "::1"):
            note(f"warning: listening on {host} without --api-key: anyone who can reach this port can use it")
        if ui:
            page = page_url(bound_host, bound_port)
            note(f"Open {page} in your browser")
            if open_page:
                # The socket is listening already: the browser's request waits in its backlog.
                threading.Thread(target=webbrowser.open, args=(page,), daemon=True).start()
        # uvicorn shuts down gracefully on SIGTERM and then re-raises the signal to the handler
        # that was there before it; a no-op handler makes that clean stop exit 0, as systemd
        # and supervisors expect of a service that was asked to stop.
        previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)
        try:
            server.run(sockets=[sock])
        finally:
            signal.signal(signal.SIGTERM, previous)
    finally:
        for index in served.values():
            index.close()
        pool.close()
