"""OpenAI's API shapes: request bodies in (checked, turned into llmlocal values), responses out.

No HTTP here (that is server.py) and no model: every function takes and returns plain values,
so the rules are tested without a server. Field names, defaults and error bodies follow
OpenAI's API reference, so the official clients work unchanged; where OpenAI has a knob llama.cpp
lacks (presence_penalty, logprobs, n > 1, tools) the request gets a 400 naming it, rather than
a reply that silently ignored it. llama.cpp's own sampling knobs (top_k, min_p,
repeat_penalty) are accepted as extra fields, as llama-server does.
"""

from __future__ import annotations

import base64
import math
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import sampling
from ..errors import InvalidParameterError
from ..sampling import RANDOM_SEED, SamplingParams

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


@dataclass
class GenerationRequest:
    """A chat or text completion request, checked. ``max_tokens`` None: up to the context's end."""

    kind: str  # "chat" or "completion"
    model: str | None
    params: SamplingParams
    max_tokens: int | None
    stream: bool = False
    include_usage: bool = False
    messages: list[dict] | None = None  # chat
    prompt: str | None = None  # completion


def _unsupported(body: dict) -> None:
    """Refuse OpenAI features llama.cpp sampling cannot honour, instead of ignoring them."""
    n = _opt_number(body, "n", low=1, integer=True)
    if n is not None and n != 1:
        raise _bad("'n' greater than 1 is not supported: send the request n times (or use llmlocal batch)", "n")
    for name in ("presence_penalty", "frequency_penalty"):
        value = _opt_number(body, name, low=-2, high=2)
        if value:
            raise _bad(f"'{name}' is not supported; use 'repeat_penalty' (llama.cpp's, e.g. 1.1)", name)
    if body.get("logprobs") or body.get("top_logprobs"):
        raise _bad("'logprobs' is not supported; for label probabilities use POST /v1/classify", "logprobs")
    if body.get("tools") or body.get("functions"):
        raise _bad("tool and function calling are not supported", "tools")
    if body.get("logit_bias"):
        raise _bad("'logit_bias' is not supported", "logit_bias")
    fmt = body.get("response_format")
    if fmt is not None and not (isinstance(fmt, dict) and fmt.get("type") in (None, "text")):
        raise _bad("only response_format {\"type\": \"text\"} is supported", "response_format")


# The sampling fields a request may carry: OpenAI's, and llama.cpp's extras as llama-server takes them.
_SAMPLING_KEYS = ("temperature", "top_p", "top_k", "min_p", "repeat_penalty", "seed")


def _sampling(body: dict, *, default_max_tokens: int | None) -> tuple[SamplingParams, int | None]:
    _unsupported(body)
    # OpenAI's own limits on top of the shared rules (llmlocal.sampling checks types, NaN, ranges).
    _opt_number(body, "temperature", low=0, high=2)
    seed = body.get("seed")
    if isinstance(seed, int) and not isinstance(seed, bool) and seed != RANDOM_SEED:
        seed %= 2**31  # OpenAI's seed is any integer; llama.cpp takes 32 bits, one of them 'random'
    stop = body.get("stop")
    if isinstance(stop, list) and len(stop) > MAX_STOP_SEQUENCES:
        raise _bad(f"'stop' takes at most {MAX_STOP_SEQUENCES} sequences", "stop")
    given = {k: body.get(k) for k in _SAMPLING_KEYS}
    given.update(seed=seed, stop=stop)
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


def _stream_options(body: dict) -> tuple[bool, bool]:
    stream = bool(_opt_bool(body, "stream"))
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise _bad("'stream_options' must be an object", "stream_options")
    include_usage = bool(options and options.get("include_usage"))
    return stream, include_usage


def _message_text(content: Any, index: int) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                kind = part.get("type") if isinstance(part, dict) else json_type(part)
                raise _bad(f"messages[{index}].content: only text parts are supported, not {kind!r}",
                           f"messages[{index}].content")
            parts.append(part["text"])
        return "".join(parts)
    raise _bad(f"messages[{index}].content must be a string or an array of text parts", f"messages[{index}].content")


_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


def parse_chat(body: Any) -> GenerationRequest:
    """``POST /v1/chat/completions``."""
    body = _obj(body)
    messages = body.get("messages")
    if messages is None:
        raise _bad("you must provide 'messages', a non-empty array of {role, content} objects", "messages")
    if not isinstance(messages, list) or not messages:
        raise _bad("'messages' must be a non-empty array of {role, content} objects", "messages")
    out = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise _bad(f"messages[{i}] must be an object with 'role' and 'content'", f"messages[{i}]")
        role = msg.get("role")
        if role not in _ROLES:
            raise _bad(f"messages[{i}].role must be one of system, developer, user, assistant; got {role!r}",
                       f"messages[{i}].role")
        out.append({"role": _ROLES[role], "content": _message_text(msg.get("content"), i)})
    params, max_tokens = _sampling(body, default_max_tokens=None)
    stream, include_usage = _stream_options(body)
    return GenerationRequest("chat", model_name(body), params, max_tokens, stream, include_usage, messages=out)


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
    params, max_tokens = _sampling(body, default_max_tokens=COMPLETIONS_DEFAULT_MAX_TOKENS)
    stream, include_usage = _stream_options(body)
    return GenerationRequest("completion", model_name(body), params, max_tokens, stream, include_usage,
                             prompt=prompt)


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


def finish_reason(reason: str) -> str:
    # The engine says "context" when the window filled; OpenAI calls any token limit "length".
    return "length" if reason in ("length", "context") else "stop"


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached_tokens}}


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

    def response(self, text: str, reason: str, usage_: dict) -> dict:
        if self.kind == "chat":
            choice = {"index": 0, "message": {"role": "assistant", "content": text, "refusal": None},
                      "logprobs": None, "finish_reason": finish_reason(reason)}
            return {**self._common("chat.completion"), "choices": [choice], "usage": usage_}
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason(reason)}
        return {**self._common("text_completion"), "choices": [choice], "usage": usage_}

    def chunk(self, text: str | None = None, *, role: bool = False, reason: str | None = None) -> dict:
        """One streamed piece: the opening role, some text, or the finish (``reason``)."""
        done = finish_reason(reason) if reason is not None else None
        if self.kind == "chat":
            delta: dict[str, Any] = {"role": "assistant", "content": ""} if role else {}
            if text:
                delta["content"] = text
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": done}
            return {**self._common("chat.completion.chunk"), "choices": [choice]}
        choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": done}
        return {**self._common("text_completion"), "choices": [choice]}

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
    return ClassifyRequest(
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


# ---------------------------------------------------------------- models


def model_entry(name: str, created: int = 0) -> dict:
    return {"id": name, "object": "model", "created": created, "owned_by": "llmlocal"}


def models_response(names: Sequence[tuple[str, int]]) -> dict:
    return {"object": "list", "data": [model_entry(n, c) for n, c in names]}
