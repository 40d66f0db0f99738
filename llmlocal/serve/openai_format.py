"""OpenAI's API shapes: request bodies in (checked, turned into llmlocal values), responses out.

No HTTP here (that is app.py) and no model: every function takes and returns plain values,
so the rules are tested without a server. Field names, defaults and error bodies follow
OpenAI's API reference, so the official clients work unchanged: response_format, tools (through
llmlocal.tools), logprobs, n, logit_bias and the penalties included. What cannot be done here
(images, audio, the deprecated functions) gets a 400 naming the field, rather than a reply that
silently ignored it. llama.cpp's own sampling knobs (top_k, min_p, repeat_penalty) are accepted
as extra fields, as llama-server does.
"""

from __future__ import annotations

import base64
import codecs
import math
import re
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import sampling, structured, tools
from ..errors import InvalidParameterError, InvalidSchemaError
from ..sampling import RANDOM_SEED, Constraint, SamplingParams
from ..tools import Tool, ToolCall, ToolSet

if TYPE_CHECKING:
    from ..generate import Completion

# OpenAI's legacy completions endpoint generates 16 tokens unless told otherwise; chat runs to
# the end of the turn (or of the context).
COMPLETIONS_DEFAULT_MAX_TOKENS = 16
MAX_STOP_SEQUENCES = 4


class ApiError(Exception):
    """A request the API refuses, with OpenAI's status code, type and code."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 code: str | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type, code, param

    def body(self) -> dict:
        return error_body(self.message, type=self.type, code=self.code, param=self.param)


def error_body(message: str, *, type: str = "invalid_request_error", code: str | None = None,
               param: str | None = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def _bad(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


# ---------------------------------------------------------------- field readers


def _obj(body: Any) -> dict:
    if not isinstance(body, dict):
        raise _bad("the request body must be a JSON object")
    return body


def _opt_number(body: dict, name: str, *, low: float | None = None, high: float | None = None,
                integer: bool = False) -> Any:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
        raise _bad(f"'{name}' must be {'an integer' if integer else 'a number'}, not {json_type(value)}", name)
    if isinstance(value, float) and not math.isfinite(value):
        raise _bad(f"'{name}' must be a finite number, got {value}", name)
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"between {low} and {high}" if low is not None and high is not None else \
            f">= {low}" if low is not None else f"<= {high}"
        raise _bad(f"'{name}' must be {bounds}; got {value}", name)
    return value


def _opt_bool(body: dict, name: str) -> bool | None:
    value = body.get(name)
    if value is not None and not isinstance(value, bool):
        raise _bad(f"'{name}' must be true or false, not {json_type(value)}", name)
    return value


def _opt_str(body: dict, name: str) -> str | None:
    value = body.get(name)
    if value is not None and not isinstance(value, str):
        raise _bad(f"'{name}' must be a string, not {json_type(value)}", name)
    return value


def json_type(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null",
            int: "a number", float: "a number"}.get(type(value), type(value).__name__)


def model_name(body: dict) -> str | None:
    """The requested model, or None for the server's default."""
    name = _opt_str(body, "model")
    return name.strip() or None if name is not None else None


# ---------------------------------------------------------------- generation

MAX_CHOICES = 128  # OpenAI's limit on n
# OpenAI's top_logprobs limit (its legacy completions stop at 5; llmlocal allows 20 there too).
MAX_TOP_LOGPROBS = 20


@dataclass
class GenerationRequest:
    """A chat or text completion request, checked. ``max_tokens`` None: up to the context's end."""

    kind: str  # "chat" or "completion"
    model: str | None
    params: SamplingParams  # resolved: a concrete seed
    max_tokens: int | None
    stream: bool = False
    include_usage: bool = False
    messages: list[dict] | None = None  # chat, ready for a plain chat template (tools.template_messages)
    prompt: str | None = None  # completion
    n: int = 1
    tools: ToolSet | None = None  # chat: the tools, when they shape the reply

    def choice_params(self, params: SamplingParams | None = None) -> list[SamplingParams]:
        """Sampling for each of the ``n`` choices: seeds seed, seed+1, ... (each reproducible alone)."""
        params = params or self.params
        assert params.seed is not None  # parse_* resolve it
        return [replace(params, seed=params.seed + i) for i in range(self.n)]

    @property
    def tool_format(self) -> bool:
        """Whether the model replies in the tool format (to unwrap into content or calls)."""
        return self.tools is not None and self.tools.active


def _refused(body: dict) -> None:
    """Refuse, by name, what this server cannot do, instead of ignoring it."""
    for name in ("functions", "function_call"):
        if body.get(name) is not None:
            raise _bad(f"'{name}' is OpenAI's deprecated form of tool calling; send 'tools' and 'tool_choice'",
                       name)
    if body.get("audio") is not None:
        raise _bad("audio output is not supported: these models write text", "audio")
    modalities = body.get("modalities")
    if modalities is not None and modalities != ["text"]:
        raise _bad("only the 'text' modality is supported", "modalities")


# The sampling fields a request may carry: OpenAI's, and llama.cpp's extras as llama-server takes them.
_SAMPLING_KEYS = ("temperature", "top_p", "top_k", "min_p", "repeat_penalty", "seed", "presence_penalty",
                  "frequency_penalty", "logit_bias")


def _sampling(body: dict, *, default_max_tokens: int | None, logprobs: int | None,
              constraint: Constraint | None) -> tuple[SamplingParams, int | None]:
    _refused(body)
    # OpenAI's own limits on top of the shared rules (llmlocal.sampling checks types, NaN, ranges).
    _opt_number(body, "temperature", low=0, high=2)
    for name in ("presence_penalty", "frequency_penalty"):
        _opt_number(body, name, low=-2, high=2)
    bias = body.get("logit_bias")
    if bias is not None and not isinstance(bias, dict):
        raise _bad("'logit_bias' must be an object mapping token ids (as strings) to numbers from -100 to 100",
                   "logit_bias")
    seed = body.get("seed")
    if isinstance(seed, int) and not isinstance(seed, bool) and seed != RANDOM_SEED:
        seed %= 2**31  # OpenAI's seed is any integer; llama.cpp takes 32 bits, one of them 'random'
    stop = body.get("stop")
    if isinstance(stop, list) and len(stop) > MAX_STOP_SEQUENCES:
        raise _bad(f"'stop' takes at most {MAX_STOP_SEQUENCES} sequences", "stop")
    given = {k: body.get(k) for k in _SAMPLING_KEYS}
    given.update(seed=seed, stop=stop, logprobs=logprobs, constraint=constraint)
    max_tokens = body.get("max_completion_tokens")
    given["max_tokens"] = max_tokens if max_tokens is not None else body.get("max_tokens")
    try:
        checked = sampling.check(given)
    except InvalidParameterError as exc:
        field = exc.field
        if field == "max_tokens" and body.get("max_completion_tokens") is not None:
            field = "max_completion_tokens"
        raise _bad(str(exc).replace("'max_tokens'", f"'{field}'"), field) from None
    max_tokens = checked.pop("max_tokens", default_max_tokens)
    return SamplingParams(**checked).resolved(), max_tokens


def _n(body: dict) -> int:
    return _opt_number(body, "n", low=1, high=MAX_CHOICES, integer=True) or 1


def _stream_options(body: dict) -> tuple[bool, bool]:
    stream = bool(_opt_bool(body, "stream"))
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise _bad("'stream_options' must be an object", "stream_options")
    include_usage = bool(options and options.get("include_usage"))
    return stream, include_usage


def _schema_error(exc: InvalidSchemaError, param: str) -> ApiError:
    return _bad(str(exc) + (f"; {exc.hint}" if exc.hint else ""), param)


def _response_format(body: dict) -> Constraint | None:
    value = body.get("response_format")
    if value is None:
        return None
    try:
        return structured.from_response_format(value)
    except InvalidSchemaError as exc:
        raise _schema_error(exc, "response_format") from None


def _message_text(content: Any, where: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                kind = part.get("type") if isinstance(part, dict) else json_type(part)
                raise _bad(f"{where}.content: only text parts are supported, not {kind!r}", f"{where}.content")
            parts.append(part["text"])
        return "".join(parts)
    raise _bad(f"{where}.content must be a string or an array of text parts", f"{where}.content")


_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant", "tool": "tool"}


def _history_calls(value: Any, where: str) -> list[ToolCall]:
    """An assistant message's ``tool_calls``, as the client got them from a response."""
    if not isinstance(value, list):
        raise _bad(f"{where}.tool_calls must be an array of tool calls", f"{where}.tool_calls")
    calls = []
    for k, call in enumerate(value):
        at = f"{where}.tool_calls[{k}]"
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not isinstance(call.get("id"), str):
            raise _bad(f"{at} must be {{\"id\", \"type\": \"function\", \"function\": {{\"name\", \"arguments\"}}}}",
                       at)
        arguments = fn.get("arguments", "{}")
        if not isinstance(arguments, str):
            raise _bad(f"{at}.function.arguments must be a string of JSON, as responses carry it",
                       f"{at}.function.arguments")
        calls.append(ToolCall(call["id"], fn["name"], arguments))
    return calls


def _message(msg: Any, i: int) -> dict:
    where = f"messages[{i}]"
    if not isinstance(msg, dict):
        raise _bad(f"{where} must be an object with 'role' and 'content'", where)
    role = msg.get("role")
    if role == "function":
        raise _bad(f"{where}: role 'function' is deprecated; send a tool's result as role 'tool' with its "
                   "'tool_call_id'", f"{where}.role")
    if role not in _ROLES:
        raise _bad(f"{where}.role must be one of system, developer, user, assistant, tool; got {role!r}",
                   f"{where}.role")
    out: dict[str, Any] = {"role": _ROLES[role], "content": _message_text(msg.get("content"), where)}
    if role == "assistant" and msg.get("tool_calls") is not None:
        out["tool_calls"] = _history_calls(msg["tool_calls"], where)
    if role == "tool":
        call_id = msg.get("tool_call_id")
        if not isinstance(call_id, str):
            raise _bad(f"{where}: a tool message needs 'tool_call_id', the id of the call it answers",
                       f"{where}.tool_call_id")
        out["tool_call_id"] = call_id
        if isinstance(msg.get("name"), str):
            out["name"] = msg["name"]
    return out


_TOOL_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_CHOICE_SHAPES = "'none', 'auto', 'required' or {\"type\": \"function\", \"function\": {\"name\": ...}}"


def _tool(value: Any, i: int) -> Tool:
    where = f"tools[{i}]"
    if not isinstance(value, dict) or value.get("type") != "function":
        kind = value.get("type") if isinstance(value, dict) else json_type(value)
        raise _bad(f"{where}: only function tools are supported ({{\"type\": \"function\", \"function\": "
                   f"{{\"name\", \"description\", \"parameters\"}}}}), not {kind!r}", where)
    fn = value.get("function")
    if not isinstance(fn, dict):
        raise _bad(f"{where}.function must be an object with 'name' and 'parameters'", f"{where}.function")
    name = fn.get("name")
    if not isinstance(name, str) or not _TOOL_NAME.fullmatch(name):
        raise _bad(f"{where}.function.name must be 1 to 64 letters, digits, underscores or dashes; got {name!r}",
                   f"{where}.function.name")
    description = fn.get("description")
    if description is not None and not isinstance(description, str):
        raise _bad(f"{where}.function.description must be a string", f"{where}.function.description")
    parameters = fn.get("parameters")
    if parameters is not None and not isinstance(parameters, dict):
        raise _bad(f"{where}.function.parameters must be a JSON Schema object", f"{where}.function.parameters")
    return Tool(name, description, dict(parameters) if parameters is not None else dict(tools.NO_PARAMETERS))


def _toolset(body: dict) -> ToolSet | None:
    raw, choice = body.get("tools"), body.get("tool_choice")
    parallel = bool(_opt_bool(body, "parallel_tool_calls"))
    if raw is None:
        if choice is not None and choice not in ("none", "auto"):
            raise _bad("'tool_choice' needs 'tools' to choose from", "tool_choice")
        return None
    if not isinstance(raw, list):
        raise _bad("'tools' must be an array of function tools", "tools")
    found = [_tool(t, i) for i, t in enumerate(raw)]
    names = [t.name for t in found]
    twice = next((n for n in names if names.count(n) > 1), None)
    if twice is not None:
        raise _bad(f"'tools' names the function {twice!r} twice", "tools")
    mode, named = "auto", None
    if isinstance(choice, str) and choice in tools.MODES:
        mode = choice
    elif isinstance(choice, dict):
        fn = choice.get("function")
        name = fn.get("name") if isinstance(fn, dict) else None
        if choice.get("type") != "function" or not isinstance(name, str):
            raise _bad(f"'tool_choice' must be {_CHOICE_SHAPES}", "tool_choice")
        if name not in names:
            raise _bad(f"'tool_choice' names {name!r}, which is not among 'tools'", "tool_choice")
        mode, named = "required", name
    elif choice is not None:
        raise _bad(f"'tool_choice' must be {_CHOICE_SHAPES}", "tool_choice")
    if mode == "required" and not found:
        raise _bad("'tool_choice' is 'required' but 'tools' is empty", "tool_choice")
    return ToolSet(tuple(found), mode, named, parallel)


def _chat_logprobs(body: dict) -> int | None:
    wanted = _opt_bool(body, "logprobs")
    top = _opt_number(body, "top_logprobs", low=0, high=MAX_TOP_LOGPROBS, integer=True)
    if top is not None and not wanted:
        raise _bad("'top_logprobs' needs 'logprobs': true", "top_logprobs")
    return (top or 0) if wanted else None


def parse_chat(body: Any) -> GenerationRequest:
    """``POST /v1/chat/completions``."""
    body = _obj(body)
    messages = body.get("messages")
    if messages is None:
        raise _bad("you must provide 'messages', a non-empty array of {role, content} objects", "messages")
    if not isinstance(messages, list) or not messages:
        raise _bad("'messages' must be a non-empty array of {role, content} objects", "messages")
    parsed = [_message(m, i) for i, m in enumerate(messages)]
    toolset = _toolset(body)
    constraint = _response_format(body)
    if toolset is not None:
        try:
            constraint = tools.constraint(toolset, constraint)
        except InvalidSchemaError as exc:
            raise _schema_error(exc, "tools") from None
    params, max_tokens = _sampling(body, default_max_tokens=None, logprobs=_chat_logprobs(body),
                                   constraint=constraint)
    stream, include_usage = _stream_options(body)
    return GenerationRequest("chat", model_name(body), params, max_tokens, stream, include_usage,
                             messages=tools.template_messages(parsed, toolset), n=_n(body), tools=toolset)


# ---------------------------------------------------------------- llmlocal's chat extension

EXTENSION = "llmlocal"  # the request and response field; plain OpenAI requests never carry it


@dataclass(frozen=True)
class ChatExtension:
    """A chat request's ``"llmlocal"`` field: ``{"index": NAME}`` answers the last user message
    from a served document index, as ``chat --index`` does (the sources come back with the reply)."""

    index: str | None = None


def parse_chat_extension(body: Any, indexes: Sequence[str]) -> ChatExtension | None:
    """The ``"llmlocal"`` field of a chat request, checked; None when there is none."""
    if not isinstance(body, dict) or body.get(EXTENSION) is None:
        return None
    ext = body[EXTENSION]
    if not isinstance(ext, dict):
        raise _bad(f"'{EXTENSION}' must be an object like {{\"index\": \"NAME\"}}", EXTENSION)
    unknown = sorted(set(ext) - {"index"})
    if unknown:
        raise _bad(f"'{EXTENSION}' has no field '{unknown[0]}' (it takes 'index')", f"{EXTENSION}.{unknown[0]}")
    index = _opt_str(ext, "index")
    if index is not None:
        if not indexes:
            raise ApiError(404, "this server has no document index: start it with `llmlocal serve --index NAME`",
                           type="not_found_error", code="no_index", param=f"{EXTENSION}.index")
        if index not in indexes:
            raise ApiError(404, f"no index '{index}' on this server (it serves {', '.join(indexes)})",
                           type="not_found_error", code="index_not_found", param=f"{EXTENSION}.index")
        messages = body.get("messages")
        last = messages[-1] if isinstance(messages, list) and messages else None
        if not isinstance(last, dict) or last.get("role") != "user":
            raise _bad(f"'{EXTENSION}.index' answers the last message, which must be the user's", "messages")
    return ChatExtension(index=index)


def last_user_text(body: dict) -> str:
    """The last message's text (parse_chat_extension has checked it is the user's)."""
    return _message_text(body["messages"][-1].get("content"), f"messages[{len(body['messages']) - 1}]")


def with_last_user_content(req: GenerationRequest, content: str) -> GenerationRequest:
    """``req`` with its last (user) message replaced: what retrieval made of it."""
    assert req.messages  # parse_chat always sets them
    return replace(req, messages=[*req.messages[:-1], {**req.messages[-1], "content": content}])


def extension_field(index: str, sources: Sequence[Any]) -> dict:
    """The response's ``"llmlocal"`` field: the index and the sources the model was shown."""
    shown = []
    for s in sources:
        entry = s.as_dict()
        entry.pop("hit", None)  # the ranking details are /v1/search's; a reply cites number and place
        shown.append(entry)
    return {"index": index, "sources": shown}


def tokens_response(model: str, prompt_tokens: int, n_ctx_seq: int) -> dict:
    """``POST /v1/chat/tokens`` (ours): what a chat request's prompt would take, and the room."""
    return {"object": "chat.tokens", "model": model, "prompt_tokens": prompt_tokens,
            "context_per_request": n_ctx_seq}


def parse_completion(body: Any) -> GenerationRequest:
    """``POST /v1/completions``: the prompt as-is (no chat template)."""
    body = _obj(body)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if prompt is None:
        raise _bad("you must provide 'prompt'", "prompt")
    if not isinstance(prompt, str):
        raise _bad("'prompt' must be a string (one prompt per request; several: llmlocal batch)", "prompt")
    if body.get("echo"):
        raise _bad("'echo' is not supported", "echo")
    if body.get("suffix"):
        raise _bad("'suffix' is not supported", "suffix")
    if body.get("tools") is not None:
        raise _bad("'tools' need messages: use /v1/chat/completions", "tools")
    logprobs = _opt_number(body, "logprobs", low=0, high=MAX_TOP_LOGPROBS, integer=True)
    params, max_tokens = _sampling(body, default_max_tokens=COMPLETIONS_DEFAULT_MAX_TOKENS, logprobs=logprobs,
                                   constraint=_response_format(body))
    stream, include_usage = _stream_options(body)
    return GenerationRequest("completion", model_name(body), params, max_tokens, stream, include_usage,
                             prompt=prompt, n=_n(body))


def fit_max_tokens(prompt_tokens: int, n_ctx_seq: int, requested: int | None) -> int:
    """``requested`` capped by the room the context leaves; a prompt that leaves none is a 400."""
    room = n_ctx_seq - prompt_tokens
    if room < 1:
        raise ApiError(400, f"This model's maximum context length is {n_ctx_seq} tokens. However, your "
                       f"prompt is {prompt_tokens} tokens, leaving no room for a reply. Please shorten it.",
                       code="context_length_exceeded", param="messages")
    return room if requested is None else min(requested, room)


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


def finish_reason(reason: str, *, called: bool = False) -> str:
    # The engine says "context" when the window filled; OpenAI calls any token limit "length".
    if reason in ("length", "context"):
        return "length"
    return "tool_calls" if called else "stop"


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached_tokens}}


def total_usage(completions: Sequence[Completion]) -> dict:
    """Usage of a request's choices: the prompt once (its n copies share KV cells), every completion.
    Cached: what none of them had to evaluate (the first choice evaluates the prompt for the rest)."""
    return usage(completions[0].prompt_tokens, sum(c.completion_tokens for c in completions),
                 min(c.cached_tokens for c in completions))


def tool_call(call: ToolCall) -> dict:
    return {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}


class _LegacyLogprobs:
    """The completions endpoint's logprobs shape, whose ``text_offset`` counts characters from the
    start of the prompt; fed the entries in order, so streamed offsets continue across chunks."""

    def __init__(self, prompt: str) -> None:
        self._offset = len(prompt)
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def shape(self, entries: Sequence[dict]) -> dict:
        out: dict[str, list] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
        for e in entries:
            out["tokens"].append(e["token"])
            out["token_logprobs"].append(e["logprob"])
            out["top_logprobs"].append({t["token"]: t["logprob"] for t in e["top_logprobs"]})
            out["text_offset"].append(self._offset)
            # A token ending inside a UTF-8 character moves the offset once the character is whole.
            self._offset += len(self._utf8.decode(bytes(e["bytes"])))
        return out


class ChoiceWriter:
    """One choice of a response: the engine's text and logprobs in, OpenAI's choice shapes out.

    Whole (:meth:`whole`) or streamed (:meth:`opening`, :meth:`piece` per engine event,
    :meth:`closing`). A reply in the tool format is read by :class:`tools.ReplyReader` either way,
    and logprob entries the stream held back (those of a stop sequence's tokens) go in the closing
    chunk, so a streamed choice adds up to the whole one.
    """

    def __init__(self, req: GenerationRequest, index: int) -> None:
        self.chat = req.kind == "chat"
        self.index = index
        self._req = req
        self._reader = tools.ReplyReader() if req.tool_format else None
        self._legacy = _LegacyLogprobs(req.prompt or "")
        self._sent = 0  # logprob entries streamed so far

    @property
    def _logprobs(self) -> bool:
        return self._req.params.logprobs is not None

    def _logprob_field(self, entries: Sequence[dict]) -> dict | None:
        if not self._logprobs:
            return None
        if self.chat:
            return {"content": list(entries), "refusal": None}
        return self._legacy.shape(entries)

    def whole(self, completion: Completion) -> dict:
        logprobs = self._logprob_field(completion.logprobs or [])
        if not self.chat:
            return {"index": self.index, "text": completion.text, "logprobs": logprobs,
                    "finish_reason": finish_reason(completion.finish_reason)}
        message: dict[str, Any] = {"role": "assistant", "content": completion.text, "refusal": None}
        reply = tools.parse(completion.text) if self._req.tool_format else None
        if reply is not None:
            message["content"] = reply.content
            if reply.calls:
                message["tool_calls"] = [tool_call(c) for c in reply.calls]
        return {"index": self.index, "message": message, "logprobs": logprobs,
                "finish_reason": finish_reason(completion.finish_reason, called=bool(reply and reply.calls))}

    def opening(self) -> dict | None:
        """The first chunk of a streamed chat choice: the role (completions have none)."""
        return self._chunk({"role": "assistant", "content": ""}) if self.chat else None

    def piece(self, text: str, entries: Sequence[dict] | None) -> dict | None:
        """The chunk for an engine event's text and logprob entries; None when there is nothing to send."""
        entries = entries or []
        self._sent += len(entries)
        if not self.chat:
            return self._chunk(text, entries) if text or entries else None
        delta = self._delta(text)
        return self._chunk(delta, entries) if delta or entries else None

    def closing(self, completion: Completion) -> dict:
        rest = (completion.logprobs or [])[self._sent:]
        called = self._reader is not None and bool(self._reader.reply().calls)
        reason = finish_reason(completion.finish_reason, called=called)
        return self._chunk({} if self.chat else "", rest, reason)

    def _delta(self, text: str) -> dict:
        if self._reader is None:
            return {"content": text} if text else {}
        delta: dict[str, Any] = {}
        for d in self._reader.feed(text):
            if d.content is not None:
                delta["content"] = delta.get("content", "") + d.content
                continue
            call: dict[str, Any] = {"index": d.index}
            if d.id is not None:
                call.update(id=d.id, type="function", function={"name": d.name, "arguments": d.arguments or ""})
            else:
                call["function"] = {"arguments": d.arguments}
            delta.setdefault("tool_calls", []).append(call)
        return delta

    def _chunk(self, body: dict | str, entries: Sequence[dict] = (), reason: str | None = None) -> dict:
        logprobs = self._logprob_field(entries) if entries else None
        if self.chat:
            return {"index": self.index, "delta": body, "logprobs": logprobs, "finish_reason": reason}
        return {"index": self.index, "text": body, "logprobs": logprobs, "finish_reason": reason}


@dataclass
class ResponseHead:
    """What every response or chunk of one generation repeats."""

    kind: str
    model: str
    id: str = ""
    created: int = field(default_factory=lambda: int(time.time()))

    def __post_init__(self) -> None:
        if not self.id:
            self.id = new_id("chatcmpl" if self.kind == "chat" else "cmpl")

    def _common(self, object: str) -> dict:
        return {"id": self.id, "object": object, "created": self.created, "model": self.model,
                "system_fingerprint": None}

    def response(self, choices: list[dict], usage_: dict) -> dict:
        object = "chat.completion" if self.kind == "chat" else "text_completion"
        return {**self._common(object), "choices": choices, "usage": usage_}

    def chunk(self, choice: dict) -> dict:
        """One streamed piece of one choice (built by its ChoiceWriter)."""
        object = "chat.completion.chunk" if self.kind == "chat" else "text_completion"
        return {**self._common(object), "choices": [choice]}

    def usage_chunk(self, usage_: dict) -> dict:
        """The last chunk when stream_options.include_usage is set: no choices, the usage."""
        object = "chat.completion.chunk" if self.kind == "chat" else "text_completion"
        return {**self._common(object), "choices": [], "usage": usage_}


# ---------------------------------------------------------------- embeddings


@dataclass
class EmbeddingsRequest:
    model: str | None
    texts: list[str]
    base64: bool


def parse_embeddings(body: Any) -> EmbeddingsRequest:
    """``POST /v1/embeddings``: text input only (token-id arrays need the server's tokenizer)."""
    body = _obj(body)
    inputs = body.get("input")
    if inputs is None:
        raise _bad("you must provide 'input', a string or an array of strings", "input")
    if isinstance(inputs, str):
        inputs = [inputs]
    if not isinstance(inputs, list) or not inputs or not all(isinstance(t, str) for t in inputs):
        raise _bad("'input' must be a string or a non-empty array of strings (token arrays are not supported)",
                   "input")
    if any(not t for t in inputs):
        raise _bad("'input' must not contain empty strings", "input")
    fmt = body.get("encoding_format") or "float"
    if fmt not in ("float", "base64"):
        raise _bad("'encoding_format' must be 'float' or 'base64'", "encoding_format")
    if body.get("dimensions") is not None:
        raise _bad("'dimensions' is not supported: the model's embedding size is fixed", "dimensions")
    return EmbeddingsRequest(model_name(body), list(inputs), fmt == "base64")


def embeddings_response(model: str, vectors: np.ndarray, *, as_base64: bool, prompt_tokens: int) -> dict:
    data = []
    for i, row in enumerate(vectors):
        if as_base64:  # what the openai client asks for by default: little-endian float32 bytes
            value: Any = base64.b64encode(np.asarray(row, dtype="<f4").tobytes()).decode("ascii")
        else:
            value = [float(x) for x in row]
        data.append({"object": "embedding", "index": i, "embedding": value})
    return {"object": "list", "data": data, "model": model,
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}}


# ---------------------------------------------------------------- classify (ours)


@dataclass
class ClassifyRequest:
    """``POST /v1/classify``: texts, labels and/or labelled examples, and how to classify."""

    model: str | None
    texts: list[str]
    labels: list[str] | None
    examples: list[tuple[str, str]]
    method: str = "auto"
    calibrate: bool = False
    instructions: str | None = None
    max_examples: int | None = None
    abstain_below: float | None = None
    truncate: bool = False
    gold: list[str | None] | None = None  # known labels of the inputs (null: not known), for "evaluation"

    def key(self) -> tuple:
        """What the classifier depends on (not the texts): equal keys may reuse one classifier."""
        return (self.method, tuple(self.labels or ()), tuple(self.examples), self.calibrate, self.instructions,
                self.max_examples)


def parse_classify(body: Any) -> ClassifyRequest:
    body = _obj(body)
    texts = body.get("input", body.get("texts"))
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise _bad("'input' must be a string or a non-empty array of strings to classify", "input")
    labels = body.get("labels")
    if labels is not None and (not isinstance(labels, list) or not all(isinstance(x, str) for x in labels)):
        raise _bad("'labels' must be an array of strings", "labels")
    raw_examples = body.get("examples") or []
    if not isinstance(raw_examples, list):
        raise _bad("'examples' must be an array of {text, label} objects", "examples")
    examples = []
    for i, e in enumerate(raw_examples):
        if not isinstance(e, dict) or not isinstance(e.get("text"), str) or not isinstance(e.get("label"), str):
            raise _bad(f"examples[{i}] must be an object with string 'text' and 'label'", f"examples[{i}]")
        examples.append((e["text"], e["label"]))
    if labels is None and not examples:
        raise _bad("give 'labels', or labelled 'examples' to take them from", "labels")
    calibrate = bool(_opt_bool(body, "calibrate"))
    # As on the command line: auto, unless calibration (a prompt-method setting) is asked for.
    method = body.get("method") or ("prompt" if calibrate else "auto")
    methods = ("auto", "prompt", "embed", "combined")
    if method not in methods:
        raise _bad("'method' must be one of " + ", ".join(f"'{m}'" for m in methods), "method")
    gold = body.get("gold")
    if gold is not None:
        if not isinstance(gold, list) or not all(g is None or isinstance(g, str) for g in gold):
            raise _bad("'gold' must be an array of labels (or null where the label is not known)", "gold")
        if len(gold) != len(texts):
            raise _bad(f"'gold' has {len(gold)} labels for {len(texts)} inputs; give one per input (null: unknown)",
                       "gold")
        gold = [g if g else None for g in gold]
    return ClassifyRequest(
        gold=gold,
        model=model_name(body), texts=list(texts), labels=list(labels) if labels is not None else None,
        examples=examples, method=method, calibrate=calibrate,
        instructions=_opt_str(body, "instructions"),
        max_examples=_opt_number(body, "max_examples", low=0, integer=True),
        abstain_below=_opt_number(body, "abstain_below", low=0, high=1),
        truncate=bool(_opt_bool(body, "truncate")))


def classify_response(model: str, labels: Sequence[str], predictions: Sequence[Any], *, described: dict,
                      prompt_tokens: int) -> dict:
    """Our shape: one ``classification`` per input; ``method`` is what classified (auto's choice,
    with its cross-validated scores under ``auto``); a row that failed has ``error`` and no label."""
    data = []
    for i, p in enumerate(predictions):
        row = {"object": "classification", "index": i, **p.as_dict()}
        del row["id"]  # the index is the id here
        data.append(row)
    out = {"object": "list", "model": model, "method": described.get("method"), "labels": list(labels),
           "data": data, "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}}
    if "auto" in described:
        out["auto"] = described["auto"]
    return out


def evaluation(labels: Sequence[str], predictions: Sequence[Any], gold: Sequence[str | None], *,
               abstain_label: str | None = None) -> dict | None:
    """The classify response's ``evaluation``: metrics over the inputs with a known label, as
    ``llmlocal eval`` reports them (a row that failed counts as wrong, in a column of its own, at
    confidence 0). None when no input has one.

    Raises:
        ApiError: a known label is not one of the classifier's labels.
    """
    from ..classify import metrics
    from ..classify.job import FAILED

    known = [(g, p) for g, p in zip(gold, predictions) if g is not None]
    if not known:
        return None
    unknown = sorted({g for g, _ in known} - set(labels))
    if unknown:
        raise _bad(f"'gold' has label(s) the classifier does not know: {', '.join(unknown)} "
                   f"(its labels: {', '.join(labels)})", "gold")
    report = metrics.report([g for g, _ in known], [p.label or FAILED for _, p in known], labels,
                            confidence=[p.confidence or 0.0 for _, p in known],
                            top=[p.top or FAILED for _, p in known], abstain_label=abstain_label)
    report["rows"] = [i for i, g in enumerate(gold) if g is not None]
    return report


# ---------------------------------------------------------------- models


def model_entry(name: str, created: int = 0) -> dict:
    return {"id": name, "object": "model", "created": created, "owned_by": "llmlocal"}


def models_response(names: Sequence[tuple[str, int]]) -> dict:
    return {"object": "list", "data": [model_entry(n, c) for n, c in names]}


# ---------------------------------------------------------------- search


@dataclass
class SearchRequest:
    index: str
    query: str
    k: int
    mode: str


MAX_SEARCH_K = 50


def parse_search(body: Any, indexes: Sequence[str]) -> SearchRequest:
    """``POST /v1/search`` (llmlocal's own): {"index"?, "query", "k"?, "mode"?} over the indexes
    named with ``serve --index``; "index" may be left out when there is one."""
    body = _obj(body)
    if not indexes:
        raise ApiError(404, "this server has no document index: start it with `llmlocal serve --index NAME`",
                       type="not_found_error", code="no_index")
    name = _opt_str(body, "index")
    if name is None:
        if len(indexes) > 1:
            raise _bad(f"name the 'index' to search: one of {', '.join(indexes)}", "index")
        name = indexes[0]
    if name not in indexes:
        raise ApiError(404, f"no index '{name}' on this server (it serves {', '.join(indexes)})",
                       type="not_found_error", code="index_not_found", param="index")
    query = body.get("query")
    if not isinstance(query, str) or not query.strip():
        raise _bad("'query' must be a non-empty string", "query")
    k = _opt_number(body, "k", low=1, high=MAX_SEARCH_K, integer=True)
    mode = _opt_str(body, "mode") or "hybrid"
    if mode not in ("hybrid", "embedding", "keyword"):
        raise _bad("'mode' must be hybrid, embedding or keyword", "mode")
    return SearchRequest(name, query, int(k) if k is not None else 5, mode)


def search_response(req: SearchRequest, model: str, hits: Sequence[Any]) -> dict:
    return {"object": "list", "index": req.index, "model": model, "query": req.query, "mode": req.mode,
            "data": [{"object": "search.hit", **h.as_dict()} for h in hits]}
