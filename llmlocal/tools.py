"""Tool calling for chat templates that have no tool syntax: llama.cpp's "generic" format.

The models llmlocal runs (SmolLM2's ChatML, Gemma's turns) were not trained on a tool-call
syntax, so, as llama.cpp's ``common/chat.cpp`` does for such templates, the tools are described
in a system message and the reply is constrained by a grammar to one JSON object: either
``{"tool_call": {"name": ..., "arguments": {...}}}`` (``{"tool_calls": [...]}`` when several calls
are allowed) or ``{"response": "text"}``. The grammar holds each call's arguments to its
function's ``parameters`` schema, so a call is always well formed; "auto" leaves the choice
between calling and answering to the model. :class:`ReplyReader` turns that JSON back into plain
text or calls, a piece at a time as it streams, and the same reader reads a whole reply, so a
streamed reply and an unstreamed one are the same by construction.

History goes back to the model in the same format: an assistant turn that called tools is shown
as the JSON it would have written, and a tool's result as a user turn
``{"tool_response": {"name", "content"}}`` (as minja's tool-response polyfill does), since a
template without a tool role may refuse one (Gemma's insists user and model turns alternate).

No HTTP here: the server's ``openai_format`` reads OpenAI's shapes into these values.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import structured
from .sampling import Constraint

# A function that declares no parameters takes none (OpenAI's reading of an omitted schema).
NO_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}
MODES = ("none", "auto", "required")


@dataclass(frozen=True)
class Tool:
    """A function the model may call; ``parameters`` is the JSON Schema of its arguments."""

    name: str
    description: str | None = None
    parameters: dict[str, Any] = field(default_factory=lambda: dict(NO_PARAMETERS))

    def described(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name}
        if self.description:
            out["description"] = self.description
        out["parameters"] = self.parameters
        return out


@dataclass(frozen=True)
class ToolCall:
    """One call the model made: ``arguments`` is JSON text, as OpenAI's API carries it."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class ToolSet:
    """The tools of one request and how the model may use them.

    ``mode``: "none" (answer in text; the tools are not shown), "auto" (call or answer),
    "required" (call at least one). ``name``: call exactly this tool (OpenAI's named
    tool_choice). ``parallel``: allow several calls in one reply (the ``tool_calls`` list).
    """

    tools: tuple[Tool, ...]
    mode: str = "auto"
    name: str | None = None
    parallel: bool = False

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {self.mode!r}")
        if self.name is not None and self.name not in {t.name for t in self.tools}:
            raise ValueError(f"no tool named {self.name!r}")

    @property
    def active(self) -> bool:
        """Whether the reply is held to the tool format (there are tools, and calling is allowed)."""
        return bool(self.tools) and (self.mode != "none" or self.name is not None)

    @property
    def must_call(self) -> bool:
        return self.mode == "required" or self.name is not None

    def callable(self) -> tuple[Tool, ...]:
        return tuple(t for t in self.tools if t.name == self.name) if self.name is not None else self.tools


# ---------------------------------------------------------------- what the model is told


def _call_example(toolset: ToolSet) -> str:
    name = toolset.name or "<tool name>"
    one = f'{{"name": "{name}", "arguments": {{<its arguments>}}}}'
    return f'{{"tool_calls": [{one}, ...]}}' if toolset.parallel else f'{{"tool_call": {one}}}'


def instructions(toolset: ToolSet) -> str:
    """The system text that describes the tools and the JSON reply (llama.cpp's generic format).

    Worded for small models: with llama.cpp's own sentence ("Respond in JSON format, either with
    `tool_call` ... or with `response` ...") SmolLM2-135M answered weather questions without
    calling the weather tool; with an example of each reply it calls it."""
    lines = ["You have access to these tools:"]
    lines += [json.dumps(t.described(), ensure_ascii=False) for t in toolset.tools]
    lines.append("")
    calls = "one or more tools" if toolset.parallel else "a tool"
    if toolset.name is not None:
        lines.append(f"Respond by calling the tool {toolset.name}: {_call_example(toolset)}.")
    elif toolset.must_call:
        lines.append(f"Respond by calling {calls}: {_call_example(toolset)}.")
    else:
        lines.append(f"To call {calls}, respond with {_call_example(toolset)}. To answer without a tool, "
                     'respond with {"response": "<your reply>"}.')
    return "\n".join(lines)


def template_messages(messages: Sequence[dict[str, Any]], toolset: ToolSet | None = None) -> list[dict[str, str]]:
    """Messages a plain chat template can render: tool calls and results as text, the tool
    instructions in the system message (appended to the caller's, or first of their own).

    ``messages`` are {"role", "content"} dicts; an assistant's may carry ``tool_calls``
    (:class:`ToolCall`), and role "tool" ones carry ``tool_call_id`` (and may carry ``name``).
    """
    names: dict[str, str] = {}  # call id -> tool name, from the assistant turns before
    out: list[dict[str, str]] = []
    previous_was_tool = False
    for msg in messages:
        role, content = msg["role"], msg.get("content") or ""
        if role == "tool":
            name = msg.get("name") or names.get(msg.get("tool_call_id") or "", "")
            text = json.dumps({"tool_response": {"name": name, "content": content}}, ensure_ascii=False)
            if previous_was_tool:  # several results of one turn: one user turn, so turns still alternate
                out[-1]["content"] += "\n" + text
            else:
                out.append({"role": "user", "content": text})
            previous_was_tool = True
            continue
        previous_was_tool = False
        calls: Sequence[ToolCall] = msg.get("tool_calls") or ()
        if role == "assistant" and calls:
            names.update((c.id, c.name) for c in calls)
            written = calls_json(calls)
            content = f"{content}\n{written}" if content else written
        out.append({"role": role, "content": content})
    if toolset is not None and toolset.active:
        text = instructions(toolset)
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": f"{out[0]['content']}\n\n{text}"}
        else:
            out.insert(0, {"role": "system", "content": text})
    return out


def calls_json(calls: Sequence[ToolCall]) -> str:
    """Calls as the model writes them in this format (for the history it is shown)."""
    def one(call: ToolCall) -> dict[str, Any]:
        try:
            arguments = json.loads(call.arguments)
        except ValueError:
            arguments = call.arguments  # shown as it was sent; the model's own never fail to parse
        return {"name": call.name, "arguments": arguments}

    if len(calls) == 1:
        return json.dumps({"tool_call": one(calls[0])}, ensure_ascii=False)
    return json.dumps({"tool_calls": [one(c) for c in calls]}, ensure_ascii=False)


# ---------------------------------------------------------------- the constraint


def schema(toolset: ToolSet, response: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON Schema of a reply (llama.cpp's generic schema); ``response``: the schema the
    answer must follow when it is not a call (the request's response_format), else a string."""
    def call(tool: Tool) -> dict[str, Any]:
        # "name" comes first in the grammar too, so a streamed call is named before its arguments.
        out: dict[str, Any] = {"type": "object",
                               "properties": {"name": {"type": "string", "const": tool.name},
                                              "arguments": tool.parameters},
                               "required": ["name", "arguments"], "additionalProperties": False}
        if tool.description:
            out["description"] = tool.description
        return out

    options = [call(t) for t in toolset.callable()]
    one = options[0] if len(options) == 1 else {"anyOf": options}
    if toolset.parallel:
        calls = {"type": "object", "properties": {"tool_calls": {"type": "array", "items": one, "minItems": 1}},
                 "required": ["tool_calls"], "additionalProperties": False}
    else:
        calls = {"type": "object", "properties": {"tool_call": one}, "required": ["tool_call"],
                 "additionalProperties": False}
    if toolset.must_call:
        return calls
    answer = {"type": "object", "properties": {"response": response or {"type": "string"}},
              "required": ["response"], "additionalProperties": False}
    return {"anyOf": [calls, answer]}


def constraint(toolset: ToolSet, response: Constraint | None = None) -> Constraint | None:
    """The grammar a reply is held to (None when the tools are off: "none", or no tools).

    ``response``: the request's own constraint (response_format), which an answer that is not a
    call must then follow; with the tools off it is the whole constraint.

    Raises:
        InvalidSchemaError: a tool's ``parameters`` is not a schema the grammar can hold (the
            message names the tool).
    """
    if not toolset.active:
        return response
    for tool in toolset.tools:  # one at a time, so an error names the tool
        structured.cached_schema(json.dumps(tool.parameters), None, f"the parameters of tool '{tool.name}'")
    answer = response.schema if response is not None and response.is_json else None
    return structured.cached_schema(json.dumps(schema(toolset, answer)), "tool reply", "the tools' reply schema")


# ---------------------------------------------------------------- reading the reply


@dataclass(frozen=True)
class Reply:
    """A reply in the tool format, read: the answer's text (None if it called) and the calls."""

    content: str | None
    calls: tuple[ToolCall, ...] = ()


@dataclass(frozen=True)
class Delta:
    """Part of a reply as it streams: ``content`` text, or a call's start (``id`` and ``name``,
    when the name is complete) and/or more of its ``arguments`` text. ``index`` numbers calls."""

    content: str | None = None
    index: int | None = None
    id: str | None = None
    name: str | None = None
    arguments: str | None = None


def new_call_id() -> str:
    return f"call_{secrets.token_hex(12)}"


class _Call:
    def __init__(self) -> None:
        self.id: str | None = None  # set when the call starts (its name is complete)
        self.name = ""
        self.arguments = ""
        self.pending = ""  # arguments read before the name was complete


class ReplyReader:
    """Reads a reply in the tool format a piece at a time (:meth:`feed`), then :meth:`reply`.

    The answer's text is unwrapped from ``{"response": ...}`` (a string decoded, anything else
    as its JSON text); each call's ``arguments`` is the JSON text the model wrote for it, without
    the whitespace between tokens. The pieces streamed add up to exactly what :meth:`reply`
    returns. Text cut off mid-value (by ``max_tokens``) reads as far as it goes; a call whose name
    never finished is left out.
    """

    def __init__(self) -> None:
        self._scanner = _Scanner()
        self._content: list[str] | None = None
        self._raw_response: bool | None = None  # the answer is not a string: pass its JSON text
        self._calls: dict[int, _Call] = {}

    def feed(self, text: str) -> list[Delta]:
        out: list[Delta] = []
        for path, raw, decoded, kind in self._scanner.feed(text):
            self._take(path, raw, decoded, kind, out)
        return _merge(out)

    def reply(self) -> Reply:
        calls = tuple(ToolCall(c.id, c.name, c.arguments) for _, c in sorted(self._calls.items())
                      if c.id is not None)
        content = "".join(self._content) if self._content is not None else None
        if content is None and not calls:
            content = ""  # nothing usable (an empty or cut reply): an empty answer, not a null one
        return Reply(content, calls)

    def _take(self, path: tuple, raw: str, decoded: str | None, kind: str, out: list[Delta]) -> None:
        if not path or kind == "space":  # JSON text passed on is compact, as OpenAI's arguments are
            return
        head = path[0]
        if head == "response":
            if self._content is None:
                self._content = []
                self._raw_response = not (path == ("response",) and kind == "quote")
            if self._raw_response:
                self._add_content(raw, out)
            elif kind == "char" and decoded:
                self._add_content(decoded, out)
            return
        if head == "tool_call":
            index, sub = 0, path[1:]
        elif head == "tool_calls" and len(path) > 1 and isinstance(path[1], int):
            index, sub = path[1], path[2:]
        else:
            return
        if not sub:
            return
        call = self._calls.setdefault(index, _Call())
        if sub == ("name",):
            if kind == "char" and decoded:
                call.name += decoded
            elif kind == "quote" and raw == '"' and call.name and call.id is None and decoded == "end":
                call.id = new_call_id()
                start = Delta(index=index, id=call.id, name=call.name, arguments=call.pending or "")
                call.arguments, call.pending = call.pending, ""
                out.append(start)
        elif sub[0] == "arguments":
            if call.id is None:
                call.pending += raw
            else:
                call.arguments += raw
                out.append(Delta(index=index, arguments=raw))

    def _add_content(self, text: str, out: list[Delta]) -> None:
        assert self._content is not None
        self._content.append(text)
        out.append(Delta(content=text))


def parse(text: str) -> Reply:
    """A whole reply in the tool format, read (what :class:`ReplyReader` streams)."""
    reader = ReplyReader()
    reader.feed(text)
    return reader.reply()


def _merge(deltas: Iterable[Delta]) -> list[Delta]:
    """Adjacent pieces of the same kind as one (a chunk per piece of text, not per character)."""
    out: list[Delta] = []
    for d in deltas:
        last = out[-1] if out else None
        if last is not None and d.content is not None and last.content is not None:
            out[-1] = Delta(content=last.content + d.content)
        elif (last is not None and d.arguments is not None and d.id is None and last.index == d.index
              and last.arguments is not None):
            out[-1] = Delta(index=last.index, id=last.id, name=last.name, arguments=last.arguments + d.arguments)
        else:
            out.append(d)
    return out


class _Scanner:
    """A JSON text read a piece at a time: every character with the path of the value it belongs to.

    Yields (path, raw character, decoded, kind). ``kind`` is "char" for a character inside a
    string value (``decoded`` is its text once an escape is complete, else None), "quote" for a
    string value's quotes (``decoded`` "start" or "end"), "space" for whitespace between tokens,
    "other" for anything else (brackets, keys, commas, numbers). A container's own characters
    belong to its path, so every character of a value is under its path: its text is recoverable.
    The text is assumed to be what a JSON grammar allowed; it may stop anywhere.
    """

    def __init__(self) -> None:
        # Open containers: [path, "obj" or "arr", key or index, expecting]; expecting is one of
        # "key", "colon", "value", "comma" (after a value).
        self._stack: list[list[Any]] = []
        self._string: str | None = None  # inside a string: "key" or "value"
        self._key = ""
        self._escape = ""  # an escape sequence read so far (with its backslash)
        self._high = ""  # a high surrogate's escape waiting for its low half
        self._scalar = False  # inside a number or literal value
        self._done = False  # the top-level value is complete

    def _value_path(self) -> tuple:
        if not self._stack:
            return ()
        frame = self._stack[-1]
        return (*frame[0], frame[2])

    def _container_path(self) -> tuple:
        return self._stack[-1][0] if self._stack else ()

    def _value_done(self) -> None:
        if self._stack:
            self._stack[-1][3] = "comma"
        else:
            self._done = True

    def feed(self, text: str) -> Iterable[tuple[tuple, str, str | None, str]]:
        for ch in text:
            yield from self._char(ch)

    def _char(self, ch: str) -> Iterable[tuple[tuple, str, str | None, str]]:
        if self._string is not None:
            yield from self._in_string(ch)
            return
        if self._scalar:
            if ch in ",}] \t\r\n":
                self._scalar = False
                self._value_done()
            else:
                yield self._value_path(), ch, None, "other"
                return
        frame = self._stack[-1] if self._stack else None
        if ch in "{[":
            path = self._value_path()
            self._stack.append([path, "obj" if ch == "{" else "arr", None if ch == "{" else 0,
                                "key" if ch == "{" else "value"])
            yield path, ch, None, "other"
        elif ch in "}]" and frame is not None:
            self._stack.pop()
            yield frame[0], ch, None, "other"
            self._value_done()
        elif ch == '"':
            if frame is not None and frame[1] == "obj" and frame[3] == "key":
                self._string, self._key = "key", ""
                yield frame[0], ch, None, "other"
            else:
                self._string = "value"
                yield self._value_path(), ch, "start", "quote"
        elif ch == ":" and frame is not None:
            frame[3] = "value"
            yield frame[0], ch, None, "other"
        elif ch == "," and frame is not None:
            if frame[1] == "obj":
                frame[3] = "key"
            else:
                frame[2] += 1
                frame[3] = "value"
            yield frame[0], ch, None, "other"
        elif ch in " \t\r\n":
            yield self._container_path(), ch, None, "space"
        elif not self._done:
            self._scalar = True
            yield self._value_path(), ch, None, "other"

    def _in_string(self, ch: str) -> Iterable[tuple[tuple, str, str | None, str]]:
        is_key = self._string == "key"
        path = self._container_path() if is_key else self._value_path()
        if self._escape:
            self._escape += ch
            complete = len(self._escape) == 2 and self._escape[1] != "u" or len(self._escape) == 6
            decoded = self._decode() if complete else None
            if is_key and decoded:
                self._key += decoded
            yield path, ch, None if is_key else decoded, "other" if is_key else "char"
            return
        if ch == "\\":
            self._escape = ch
            yield path, ch, None, "other" if is_key else "char"
            return
        if ch == '"':
            self._string = None
            if self._high:  # a high surrogate never paired
                self._high = ""
            if is_key:
                self._stack[-1][2], self._stack[-1][3] = self._key, "colon"
                yield path, ch, None, "other"
            else:
                yield path, ch, "end", "quote"
                self._value_done()
            return
        if is_key:
            self._key += ch
            yield path, ch, None, "other"
        else:
            lone, self._high = ("\ufffd" if self._high else ""), ""  # a high surrogate never paired
            yield path, ch, lone + ch, "char"

    def _decode(self) -> str:
        """The text of a complete escape; a high surrogate waits for its low half."""
        escape, self._escape = self._escape, ""
        if escape[1] == "u":
            unit = int(escape[2:], 16)
            if 0xD800 <= unit < 0xDC00:
                self._high = escape
                return ""
            if 0xDC00 <= unit < 0xE000 and self._high:
                escape, self._high = self._high + escape, ""
            elif self._high:
                self._high = ""
                return "\ufffd" + json.loads(f'"{escape}"')
        text: str = json.loads(f'"{escape}"')
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
