"""A chat session: messages, chat template, context budget. No terminal I/O (that is repl.py).

One :class:`~llmlocal.generate.Generator` serves the whole session, so each turn evaluates only
the tokens after the part of the conversation already in the KV cache: the new user message and
the template's markers, not the history. When the conversation no longer leaves room for a reply,
the oldest user/assistant exchanges leave the context window (the system prompt stays); the full
transcript is kept for ``save``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from . import atomic, sampling, structured, tabular
from .errors import (
    ContextOverflowError,
    InputFormatError,
    InvalidSchemaError,
    OutputNotWritableError,
    UsageError,
    option,
)
from .generate import Completion, Generator, tokenize_prompt
from .runtime import Model
from .sampling import SamplingParams

DEFAULT_MAX_TOKENS = 1024

# Built-in templates for catalogue families, used only when a GGUF carries no template of its
# own (or with --template). Written for llama-cpp-python's Jinja sandbox, which provides
# ``messages``, ``add_generation_prompt``, ``bos_token`` and ``eos_token``.
FAMILIES: dict[str, str] = {
    "chatml": (
        "{% for message in messages %}"
        "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    ),
    "llama3": (
        "{{ bos_token }}"
        "{% for message in messages %}"
        "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] + '<|eot_id|>' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
    ),
    # Gemma has no system role: the system prompt opens the first user turn, as Google's template does.
    "gemma": (
        "{{ bos_token }}"
        "{% for message in messages %}"
        "{% if message['role'] == 'system' %}{% elif message['role'] == 'user' %}"
        "{{ '<start_of_turn>user\n' }}"
        "{% if loop.index0 == 1 and messages[0]['role'] == 'system' %}{{ messages[0]['content'] + '\n\n' }}{% endif %}"
        "{{ message['content'] + '<end_of_turn>\n' }}"
        "{% else %}{{ '<start_of_turn>model\n' + message['content'] + '<end_of_turn>\n' }}{% endif %}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
    ),
    "phi3": (
        "{% for message in messages %}"
        "{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
    ),
    # Mistral has no system role either: the system prompt opens the first [INST].
    "mistral": (
        "{{ bos_token }}"
        "{% for message in messages %}"
        "{% if message['role'] == 'system' %}{% elif message['role'] == 'user' %}"
        "{{ '[INST] ' }}"
        "{% if loop.index0 == 1 and messages[0]['role'] == 'system' %}{{ messages[0]['content'] + '\n\n' }}{% endif %}"
        "{{ message['content'] + ' [/INST]' }}"
        "{% else %}{{ message['content'] + eos_token }}{% endif %}"
        "{% endfor %}"
    ),
}

# What /set changes and a transcript records (repeat_last_n stays the default).
PARAMS = ("temperature", "top_p", "top_k", "min_p", "repeat_penalty", "seed", "max_tokens")


def choose_template(model_name: str, *, gguf_template: str | None, family: str = "",
                    override: str | None = None) -> str:
    """The Jinja chat template to use: ``override`` (a family name), the GGUF's, else the family's.

    Raises:
        UsageError: ``override`` is not a known family, or the model has no template and no
            family (a base model), which is better used with ``complete --raw``.
    """
    if override:
        if override not in FAMILIES:
            raise UsageError(f"unknown template '{override}'; choose one of: {', '.join(FAMILIES)}")
        return FAMILIES[override]
    if gguf_template:
        return gguf_template
    if family in FAMILIES:
        return FAMILIES[family]
    raise UsageError(f"{model_name} has no chat template (a base model?): use `llmlocal complete --raw` "
                     f"for plain text, or chat with --template NAME ({', '.join(FAMILIES)})")


@dataclass(frozen=True)
class ChatStats:
    """What /stats reports. Token totals count this session's turns since the last reset."""

    turns: int  # user/assistant exchanges in the transcript
    dropped_turns: int  # of those, how many have left the context window
    prompt_tokens: int
    completion_tokens: int
    last_tokens_per_second: float
    context_used: int  # tokens of the conversation as the model sees it
    n_ctx: int
    cached_tokens: int  # prompt tokens of the last turn whose KV cache was re-used


class ChatSession:
    """A conversation with one loaded model: ``send`` a message, get the streamed reply.

    Args:
        model: the loaded model; the session owns its sequence 0.
        template: a Jinja chat template (see :func:`choose_template`).
        model_name: recorded in saved transcripts.
        system: system prompt (None: whatever the template does without one).
        params: sampling; ``max_tokens`` is the most tokens per reply.
        on_note: called with a one-line notice for the user (turns dropped, model mismatch).
    """

    def __init__(self, model: Model, *, template: str, model_name: str = "", system: str | None = None,
                 params: SamplingParams | None = None, on_note: Callable[[str], None] | None = None) -> None:
        self.model = model
        self.template = template
        self.model_name = model_name or model.path.name
        self.system = system
        self.params = params or SamplingParams(max_tokens=DEFAULT_MAX_TOKENS)
        self.params.validate()
        self.on_note = on_note
        self.generator = Generator(model)
        self.messages: list[dict[str, str]] = []  # the whole transcript, user/assistant alternating
        self.last: Completion | None = None
        # With a document index (chat --index): each message goes to the model with the sources
        # retrieved for it (the transcript keeps what the model saw), and last_sources lists them.
        self.retriever: Callable[[str], tuple[str, list]] | None = None
        self.last_sources: list = []
        self._first = 0  # index into messages of the oldest exchange still in the context window
        self._noted_drop = False
        self._prompt_total = self._gen_total = 0

    # -- conversation

    def send(self, text: str, *, on_text: Callable[[str], None] | None = None) -> Completion:
        """Add a user message, generate the reply (streamed to ``on_text``) and record both.

        On KeyboardInterrupt the reply so far is recorded as the assistant turn (nothing is
        recorded if no text came yet), ``last`` describes it with finish_reason
        ``"interrupted"``, and the interrupt propagates.

        Raises:
            ContextOverflowError: the message alone leaves no room for a reply.
        """
        if not text.strip():
            raise UsageError("empty message")
        content, self.last_sources = self.retriever(text) if self.retriever is not None else (text, [])
        user = {"role": "user", "content": content}
        tokens, first = self._fit(user)
        dropped = (first - self._first) // 2
        self._first = first
        if dropped and not self._noted_drop:
            self._noted_drop = True
            self._note(f"note: dropped {dropped} old turn{'s' if dropped != 1 else ''} to fit the context")
        cached = self.generator.reusable(tokens)
        pieces: list[str] = []
        started = first_at = time.perf_counter()
        stream = self.generator.stream(tokens, self.params)
        try:
            for piece in stream:
                if not pieces:
                    first_at = time.perf_counter()
                pieces.append(piece)
                if on_text is not None:
                    on_text(piece)
            result = stream.result()
        except KeyboardInterrupt:
            stream.close()
            kept = "".join(pieces)
            # Count the tokens of the text kept: the last one shown may not have reached the cache.
            produced = len(self.model.tokenize(kept, add_special=False, parse_special=False)) if kept else 0
            result = Completion(text=kept, finish_reason="interrupted", prompt_tokens=len(tokens),
                                completion_tokens=produced, cached_tokens=cached,
                                prompt_seconds=first_at - started, gen_seconds=time.perf_counter() - first_at,
                                params=self.params.as_dict())
            self._record(user, result)
            raise
        except BaseException:
            stream.close()  # now, while the model is open, not when the traceback is collected
            raise
        self._record(user, result)
        return result

    def _record(self, user: dict[str, str], result: Completion) -> None:
        if result.text or result.finish_reason != "interrupted":
            # One statement, so the transcript never holds a user message without its reply.
            self.messages += [user, {"role": "assistant", "content": result.text}]
        self.last = result
        self._prompt_total += result.prompt_tokens
        self._gen_total += result.completion_tokens

    def _fit(self, user: dict[str, str]) -> tuple[list[int], int]:
        """Prompt tokens for the window plus ``user``, dropping old exchanges until a reply fits.

        Room is kept for min(max_tokens, n_ctx / 2) new tokens, as ``complete --truncate`` does:
        a reply limit larger than half the context should not leave room for no history at all.
        """
        n_ctx = self.model.n_ctx
        reserve = max(1, min(self.params.max_tokens, n_ctx // 2))
        first = self._first
        while True:
            tokens = self._tokens(self._conversation(first) + [user])
            if len(tokens) + reserve <= n_ctx:
                return tokens, first
            if first >= len(self.messages):
                raise ContextOverflowError(len(tokens), n_ctx, needed=len(tokens) + reserve,
                                           hint="shorten the message, lower the reply limit (/set max_tokens N), "
                                           f"or start again with a larger context ({option('ctx')})")
            first += 2

    def _conversation(self, first: int | None = None) -> list[dict[str, str]]:
        system = [{"role": "system", "content": self.system}] if self.system else []
        return system + self.messages[self._first if first is None else first:]

    def _tokens(self, messages: list[dict[str, str]], *, add_generation_prompt: bool = True) -> list[int]:
        from jinja2 import TemplateError

        try:
            text = self.model.render_chat(messages, template=self.template,
                                          add_generation_prompt=add_generation_prompt)
        except TemplateError as exc:
            raise UsageError(f"the chat template rejected the conversation: {exc}",
                             hint=f"try another template ({option('template')} NAME)") from None
        return tokenize_prompt(self.model, text, raw=False)

    def _note(self, text: str) -> None:
        if self.on_note is not None:
            self.on_note(text)

    def reset(self) -> None:
        """Forget the conversation and the token totals; keep the system prompt and settings."""
        self.messages = []
        self.last = None
        self._first = 0
        self._prompt_total = self._gen_total = 0

    # -- settings

    def set_param(self, name: str, value: str | float | int | None) -> float | int | None:
        """Set one sampling parameter from text (``"0.5"``); returns the value now in effect.

        ``seed`` also takes ``random`` (a fresh seed every reply).

        Raises:
            UsageError: an unknown parameter or a value out of range.
        """
        key = name.strip().lower().replace("-", "_")
        key = "temperature" if key == "temp" else key
        if key not in PARAMS:
            raise UsageError(f"unknown parameter '{name}'; one of: {', '.join(PARAMS)}")
        if key == "seed" and (value is None or str(value).strip().lower() in {"random", "none"}):
            parsed = None
        else:
            parsed = sampling.parse_value(key, str(value))
        self.params = _with_param(self.params, key, parsed)
        return parsed

    def set_format(self, value: str | dict | None) -> str:
        """Hold replies to a format: "json" (any object), a schema (``--schema``'s forms, or a dict),
        or "off"/None. Returns how it now reads (for /set)."""
        text = value.strip() if isinstance(value, str) else value
        if text is None or (isinstance(text, str) and text.lower() in ("off", "none", "text", "")):
            constraint = None
        elif isinstance(text, str) and text.lower() == "json":
            constraint = structured.any_json()
        elif isinstance(text, dict) and "grammar" in text:
            constraint = structured.from_grammar(text["grammar"])
        else:
            constraint = structured.resolve(schema=text)
        self.params = replace(self.params, constraint=constraint)
        return format_name(constraint)

    # -- transcripts

    def to_dict(self) -> dict:
        """The transcript as saved: model, system, messages and sampling params."""
        params: dict = {k: getattr(self.params, k) for k in PARAMS}
        if self.params.stop:
            params["stop"] = list(self.params.stop)
        if self.params.constraint is not None:
            params["format"] = saved_format(self.params.constraint)
        return {"model": self.model_name, "system": self.system,
                "messages": [dict(m) for m in self.messages], "params": params}

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the transcript as JSON, atomically; returns the path written."""
        target = Path(path).expanduser()
        try:
            atomic.write_text(target, json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n")
        except IsADirectoryError:
            raise OutputNotWritableError(str(path), "it is a directory") from None
        except OSError as exc:
            raise OutputNotWritableError(str(path), exc.strerror or str(exc)) from None
        return target

    def load(self, path: str | os.PathLike[str]) -> None:
        """Replace the conversation, system prompt and params with a saved transcript's.

        The next ``send`` continues it; turns that no longer fit are dropped then.

        Raises:
            InputFormatError: the file is not a transcript written by :meth:`save`.
        """
        source = Path(path).expanduser()
        try:
            data = tabular.loads_json(source.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise InputFormatError(str(source), "no such file") from None
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InputFormatError(str(source), f"not a JSON transcript ({exc})") from None
        system, messages, params = _parse_transcript(str(source), data)
        updated = replace(self.params, constraint=None)
        saved = params.pop("format", None)
        try:
            for key, value in params.items():
                updated = _with_param(updated, key, value)
        except UsageError as exc:
            raise InputFormatError(str(source), f"bad params: {exc}") from None
        before = self.params
        self.params = updated
        try:
            self.set_format(saved)
        except (UsageError, InvalidSchemaError) as exc:
            self.params = before
            raise InputFormatError(str(source), f"bad params.format: {exc}") from None
        self.system, self.messages = system, messages
        self.last = None
        self._first = 0
        saved_model = data.get("model")
        if saved_model and saved_model != self.model_name:
            self._note(f"note: {source.name} was saved with model {saved_model}; continuing with {self.model_name}")

    # -- accounting

    def context_used(self) -> int:
        """Tokens the conversation in the window takes, as the template renders it."""
        conversation = self._conversation()
        if not conversation:
            return 0
        return len(self._tokens(conversation, add_generation_prompt=False))

    def stats(self) -> ChatStats:
        last = self.last
        return ChatStats(
            turns=sum(m["role"] == "assistant" for m in self.messages), dropped_turns=self._first // 2,
            prompt_tokens=self._prompt_total, completion_tokens=self._gen_total,
            last_tokens_per_second=last.gen_tps if last else 0.0,
            context_used=self.context_used(), n_ctx=self.model.n_ctx,
            cached_tokens=last.cached_tokens if last else 0,
        )


def _parse_transcript(source: str, data: object) -> tuple[str | None, list[dict[str, str]], dict]:
    """Check a loaded transcript's shape; returns (system, messages, params)."""
    if not isinstance(data, dict):
        raise InputFormatError(source, "a transcript is a JSON object with 'messages'")
    system = data.get("system")
    if system is not None and not isinstance(system, str):
        raise InputFormatError(source, "'system' must be a string or null")
    raw = data.get("messages")
    if not isinstance(raw, list):
        raise InputFormatError(source, "'messages' must be a list")
    messages = []
    for i, m in enumerate(raw):
        want = "user" if i % 2 == 0 else "assistant"
        if not isinstance(m, dict) or not isinstance(m.get("content"), str):
            raise InputFormatError(source, f"message {i + 1} needs a 'role' and a string 'content'")
        if m.get("role") != want:
            raise InputFormatError(source, f"message {i + 1} should be from the {want} "
                                   "(messages alternate user, assistant)")
        messages.append({"role": want, "content": m["content"]})
    if len(messages) % 2:
        raise InputFormatError(source, "the last user message has no reply")
    params = data.get("params") or {}
    if not isinstance(params, dict):
        raise InputFormatError(source, "'params' must be an object")
    chosen: dict = {}
    for key, value in params.items():
        if key == "format":  # "json", a JSON Schema or {"grammar": text}: checked by set_format
            if not (value is None or isinstance(value, (str, dict))):
                raise InputFormatError(source, "'params.format' must be \"json\", a JSON Schema or null")
            chosen[key] = value
            continue
        if key != "stop" and key not in PARAMS:
            raise InputFormatError(source, f"unknown param '{key}'; known: {', '.join(PARAMS)}, stop, format")
        if key == "seed" and value is None:
            chosen[key] = None
            continue
        try:
            chosen.update(sampling.check({key: value}, name=lambda k: f"params.{k}"))
        except UsageError as exc:
            raise InputFormatError(source, str(exc)) from None
    return system, messages, chosen


def format_name(constraint: structured.Constraint | None) -> str:
    """How /set shows the reply format."""
    if constraint is None:
        return "off"
    if constraint.kind == "json":
        return "json"
    if constraint.kind == "grammar":
        return "a GBNF grammar"
    return "schema " + json.dumps(constraint.schema, ensure_ascii=False)


def saved_format(constraint: structured.Constraint) -> str | dict:
    """The transcript's ``params.format``: "json", the schema, or {"grammar": text}."""
    if constraint.kind == "json":
        return "json"
    if constraint.kind == "grammar":
        return {"grammar": constraint.grammar}
    return constraint.schema or {}


def _with_param(params: SamplingParams, key: str, value) -> SamplingParams:
    """``params`` with one field changed, checked as chat needs (a reply of at least one token)."""
    if key == "max_tokens" and value is not None and value < 1:
        raise UsageError("max_tokens must be at least 1")
    if value is None:  # only the seed: a fresh one every reply
        return replace(params, seed=None)
    return params.with_changes(**{key: value})
