// The chat page: conversations kept in this browser, replies streamed from /v1/chat/completions.
//
// The page holds the whole conversation; the server is stateless. Before each request it asks
// /v1/chat/tokens how many tokens the conversation takes and leaves the oldest exchanges out
// until a reply fits, the same rule as the terminal chat (room for min(max_tokens, context/2)
// new tokens), and it says so on the page: turns are never dropped silently.

import { ApiError, call, el, errorText, events, fillModels, integer, json, keyGate, download, readFile } from "./common.js";
import { render } from "./markdown.js";

const STORE = "llmlocal.conversations";
const DEFAULTS = { temperature: 0.7, max_tokens: 512, seed: null };
// What a transcript's params may hold (llmlocal/chat.py PARAMS, plus stop and format).
const TRANSCRIPT_PARAMS = ["temperature", "top_p", "top_k", "min_p", "repeat_penalty", "seed", "max_tokens", "stop", "format"];

const $ = (id) => document.getElementById(id);
const ui = {
  model: $("model"), messages: $("messages"), prompt: $("prompt"), composer: $("composer"), send: $("send"),
  stop: $("stop"), meter: $("meter"), meterBar: $("meter-bar"), notice: $("notice"), list: $("conversations"),
  system: $("system"), temperature: $("temperature"), maxTokens: $("max-tokens"), seed: $("seed"),
  index: $("index"), indexRow: $("index-row"), settings: $("settings"), status: $("status"),
};

let conversations = loadAll();
let current = null;
let controller = null; // the AbortController of the reply being streamed
let models = [];

// ---------------------------------------------------------------- storage

function loadAll() {
  try {
    const saved = JSON.parse(localStorage.getItem(STORE) || "[]");
    return Array.isArray(saved) ? saved : [];
  } catch {
    return [];
  }
}

function saveAll() {
  try {
    localStorage.setItem(STORE, JSON.stringify(conversations));
  } catch (error) {
    showNotice(`Could not save conversations in this browser: ${error.message}`, "error");
  }
}

function newConversation(fields = {}) {
  const conv = {
    id: `${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 8)}`, created: Date.now(),
    updated: Date.now(), model: ui.model.value || null, system: "", params: { ...DEFAULTS }, index: "",
    messages: [], first: 0, used: 0, ctx: null, ...fields,
  };
  // An empty conversation left behind would only clutter the list.
  conversations = conversations.filter((c) => c.messages.length);
  conversations.unshift(conv);
  return conv;
}

function title(conv) {
  const first = conv.messages.find((m) => m.role === "user");
  return first ? first.content.replace(/\s+/g, " ").slice(0, 60) : "New chat";
}

// ---------------------------------------------------------------- rendering

function renderList() {
  const sorted = [...conversations].sort((a, b) => b.updated - a.updated);
  ui.list.replaceChildren(...sorted.map((conv) => el("li", { className: conv === current ? "active" : "" },
    el("button", { className: "conv", type: "button", dataset: { id: conv.id }, onclick: () => select(conv) }, title(conv)),
    el("button", {
      className: "delete", type: "button", title: "Delete this conversation", "aria-label": "Delete",
      onclick: () => remove(conv),
    }, "×"))));
}

function renderMessages() {
  const conv = current;
  const items = [];
  if (!conv.messages.length) {
    items.push(el("div", { className: "empty" },
      el("h2", {}, "Chat with a local model"),
      el("p", {}, "Replies are generated on this machine; nothing leaves it. Conversations are kept in this browser."),
      el("p", { className: "muted" }, "Enter sends, Shift+Enter starts a new line.")));
  }
  conv.messages.forEach((msg, i) => items.push(renderMessage(conv, msg, i)));
  ui.messages.replaceChildren(...items);
  ui.messages.scrollTop = ui.messages.scrollHeight;
}

function renderMessage(conv, msg, i) {
  const last = i === conv.messages.length - 1;
  const lastUser = msg.role === "user" && (last || i === conv.messages.length - 2);
  const outside = i < conv.first;
  const body = el("div", { className: "content" });
  if (msg.role === "assistant") body.append(render(msg.content));
  else body.append(msg.content);
  const box = el("article", {
    className: `message ${msg.role}${outside ? " outside" : ""}`, dataset: { role: msg.role, index: i },
  });
  if (outside) box.append(el("div", { className: "outside-tag" }, "Not sent: outside the context window"));
  box.append(el("div", { className: "who" }, msg.role === "user" ? "You" : (msg.model || "Assistant")), body);
  if (msg.sources && msg.sources.length) box.append(renderSources(msg.sources));
  else if (msg.sources) box.append(el("p", { className: "sources none" }, "No source in the index matches this message."));
  const actions = el("div", { className: "actions" });
  if (msg.stopped) actions.append(el("span", { className: "tag" }, "stopped"));
  if (msg.finish === "length") actions.append(el("span", { className: "tag" }, "cut at max tokens"));
  if (!busy() && msg.role === "assistant" && last) {
    actions.append(el("button", { type: "button", className: "regenerate", onclick: regenerate }, "Regenerate"));
  }
  if (!busy() && lastUser) {
    actions.append(el("button", { type: "button", className: "edit", onclick: () => edit(box, i) }, "Edit"));
  }
  if (actions.childNodes.length) box.append(actions);
  return box;
}

function renderSources(sources) {
  return el("details", { className: "sources", open: true },
    el("summary", {}, `Sources (${sources.length})`),
    el("ol", {}, sources.map((s) => el("li", { dataset: { number: s.number } },
      el("span", { className: "where" }, `[${s.number}] ${s.where}`),
      s.heading && s.heading.length ? el("span", { className: "heading" }, ` ${s.heading.join(" › ")}`) : null,
      el("blockquote", {}, s.text.length > 400 ? `${s.text.slice(0, 400)}…` : s.text)))));
}

function renderMeter() {
  const conv = current;
  const ctx = conv.ctx;
  ui.meter.textContent = ctx ? `${integer.format(conv.used)} / ${integer.format(ctx)} tokens` : `${integer.format(conv.used)} tokens`;
  const share = ctx ? Math.min(1, conv.used / ctx) : 0;
  ui.meterBar.style.width = `${(share * 100).toFixed(1)}%`;
  ui.meterBar.classList.toggle("full", share > 0.85);
  ui.meter.title = "Tokens of the last request (prompt and reply) out of the context each request gets";
}

function renderDropNotice() {
  const conv = current;
  if (conv.first > 0) {
    const turns = conv.first / 2;
    showNotice(`${turns} older turn${turns === 1 ? "" : "s"} no longer fit${turns === 1 ? "s" : ""} in the `
      + `${integer.format(conv.ctx || 0)}-token context and ${turns === 1 ? "was" : "were"} not sent with the last `
      + "message. They stay here and in exports.", "warning", "context-notice");
  } else if (ui.notice.dataset.kind === "context-notice") {
    hideNotice();
  }
}

function showNotice(text, kind = "info", id = "") {
  ui.notice.className = `notice ${kind}`;
  ui.notice.dataset.kind = id || kind;
  ui.notice.textContent = text;
  ui.notice.hidden = false;
}

function hideNotice() {
  ui.notice.hidden = true;
  ui.notice.textContent = "";
}

function renderSettings() {
  const conv = current;
  ui.system.value = conv.system || "";
  ui.temperature.value = conv.params.temperature ?? "";
  ui.maxTokens.value = conv.params.max_tokens ?? "";
  ui.seed.value = conv.params.seed ?? "";
  ui.index.value = conv.index || "";
  if (conv.model && models.includes(conv.model)) ui.model.value = conv.model;
}

function renderAll() {
  renderList();
  renderSettings();
  renderMessages();
  renderMeter();
  renderDropNotice();
  document.title = `${title(current)} · llmlocal`;
}

function setBusy(on) {
  ui.send.hidden = on;
  ui.stop.hidden = !on;
  ui.status.textContent = on ? "Generating…" : "";
  document.body.classList.toggle("busy", on);
}

function busy() {
  return controller !== null;
}

// ---------------------------------------------------------------- conversations

function select(conv) {
  if (busy()) return;
  current = conv;
  localStorage.setItem(`${STORE}.current`, conv.id);
  document.body.classList.remove("sidebar-open");
  hideNotice(); // what it said was about the conversation shown before
  renderAll();
}

function remove(conv) {
  if (busy() && conv === current) return;
  conversations = conversations.filter((c) => c !== conv);
  if (!conversations.length) newConversation();
  saveAll();
  select(conv === current ? conversations[0] : current);
}

function touch() {
  current.updated = Date.now();
  saveAll();
}

// ---------------------------------------------------------------- sending

function settingsFromForm() {
  const conv = current;
  conv.system = ui.system.value;
  const number = (input, parse) => (input.value.trim() === "" ? null : parse(input.value));
  conv.params = {
    temperature: number(ui.temperature, parseFloat), max_tokens: number(ui.maxTokens, (v) => parseInt(v, 10)),
    seed: number(ui.seed, (v) => parseInt(v, 10)),
  };
  conv.index = ui.index.value;
  conv.model = ui.model.value;
}

function requestBody(conv, first) {
  const messages = [];
  if (conv.system.trim()) messages.push({ role: "system", content: conv.system });
  for (const m of conv.messages.slice(first)) messages.push({ role: m.role, content: m.content });
  const body = { model: conv.model, messages };
  if (conv.index) body.llmlocal = { index: conv.index };
  return body;
}

/** The first message to send: the oldest exchanges leave until the prompt and a reply fit. */
async function fit(conv, signal) {
  const maxTokens = conv.params.max_tokens || DEFAULTS.max_tokens;
  let first = conv.first;
  for (;;) {
    const count = await json("/v1/chat/tokens", { method: "POST", body: requestBody(conv, first), signal });
    conv.ctx = count.context_per_request;
    const reserve = Math.max(1, Math.min(maxTokens, Math.floor(conv.ctx / 2)));
    if (count.prompt_tokens + reserve <= conv.ctx) return first;
    if (first >= conv.messages.length - 1) {
      throw new Error(`This message takes ${integer.format(count.prompt_tokens)} tokens of the `
        + `${integer.format(conv.ctx)}-token context, leaving no room for a ${integer.format(reserve)}-token reply: `
        + "shorten it or lower max tokens.");
    }
    first += 2;
  }
}

async function generate() {
  const conv = current;
  settingsFromForm();
  controller = new AbortController();
  setBusy(true);
  const user = conv.messages[conv.messages.length - 1];
  const reply = { role: "assistant", content: "", model: conv.model };
  try {
    const first = await fit(conv, controller.signal);
    conv.first = first;
    renderDropNotice();
    const body = { ...requestBody(conv, first), stream: true, stream_options: { include_usage: true } };
    conv.messages.push(reply);
    renderMessages();
    for (const key of ["temperature", "max_tokens", "seed"]) {
      if (conv.params[key] !== null && conv.params[key] !== undefined) body[key] = conv.params[key];
    }
    const response = await call("/v1/chat/completions", { method: "POST", body, signal: controller.signal });
    const view = ui.messages.lastElementChild.querySelector(".content");
    view.classList.add("streaming");
    let pending = false;
    for await (const chunk of events(response)) {
      if (chunk.error) throw new ApiError(500, chunk);
      for (const choice of chunk.choices || []) {
        if (choice.delta && choice.delta.content) reply.content += choice.delta.content;
        if (choice.finish_reason) reply.finish = choice.finish_reason;
      }
      if (chunk.usage) conv.used = chunk.usage.total_tokens;
      if (chunk.llmlocal) reply.sources = chunk.llmlocal.sources;
      if (!pending) {
        pending = true;
        requestAnimationFrame(() => {
          pending = false;
          view.replaceChildren(render(reply.content));
          view.dataset.chars = String(reply.content.length);
          ui.messages.scrollTop = ui.messages.scrollHeight;
        });
      }
    }
  } catch (error) {
    const stopped = error.name === "AbortError";
    if (stopped && reply.content) {
      reply.stopped = true;
    } else {
      // Nothing came back: take the message out again (turns stay user, assistant, ...) and
      // put it back in the box, with what went wrong.
      if (conv.messages[conv.messages.length - 1] === reply) conv.messages.pop();
      if (conv.messages[conv.messages.length - 1] === user) conv.messages.pop();
      ui.prompt.value = user.content;
      if (!stopped) showNotice(`Not sent: ${errorText(error)}`, "error", "send-error");
    }
  } finally {
    controller = null;
    setBusy(false);
    touch();
    renderList();
    renderMessages();
    renderMeter();
    ui.prompt.focus();
  }
}

function sendText(text) {
  if (busy() || !text.trim()) return;
  if (current.messages.length === 0) current.first = 0;
  current.messages.push({ role: "user", content: text });
  ui.prompt.value = "";
  touch();
  renderList();
  renderMessages();
  generate();
}

function regenerate() {
  if (busy()) return;
  const last = current.messages[current.messages.length - 1];
  if (!last || last.role !== "assistant") return;
  current.messages.pop();
  generate();
}

function edit(box, i) {
  const msg = current.messages[i];
  const area = el("textarea", { className: "edit-box", rows: 3 });
  area.value = msg.content;
  const save = el("button", {
    type: "button", className: "primary resend", onclick: () => {
      if (!area.value.trim()) return;
      current.messages.splice(i); // the message and its reply
      sendText(area.value);
    },
  }, "Send");
  const cancel = el("button", { type: "button", onclick: renderMessages }, "Cancel");
  box.querySelector(".content").replaceChildren(area, el("div", { className: "edit-actions" }, cancel, save));
  const actions = box.querySelector(".actions");
  if (actions) actions.remove();
  area.focus();
}

// ---------------------------------------------------------------- transcripts (the REPL's /save and /load)

function transcript(conv) {
  // The REPL's format (llmlocal/chat.py ChatSession.to_dict): exchanges only, so a last message
  // left without a reply is not written.
  const messages = conv.messages.map((m) => ({ role: m.role, content: m.content }));
  if (messages.length % 2) messages.pop();
  // An empty field is the default, which a transcript says by leaving the param out (a null
  // seed is the REPL's "random").
  const params = Object.fromEntries(Object.entries(conv.params).filter(([k, v]) => v !== null || k === "seed"));
  return { model: conv.model, system: conv.system.trim() ? conv.system : null, messages, params };
}

function exportCurrent() {
  const stamp = new Date(current.updated).toISOString().slice(0, 19).replace(/[:T]/g, "-");
  download(`chat-${stamp}.json`, `${JSON.stringify(transcript(current), null, 2)}\n`, "application/json");
}

/** A transcript's (system, messages, params), checked as the REPL's /load checks it; throws with the reason. */
export function parseTranscript(data) {
  if (!data || typeof data !== "object" || Array.isArray(data)) throw new Error("a transcript is a JSON object with 'messages'");
  if (data.system !== undefined && data.system !== null && typeof data.system !== "string") throw new Error("'system' must be a string or null");
  if (!Array.isArray(data.messages)) throw new Error("'messages' must be a list");
  const messages = data.messages.map((m, i) => {
    const want = i % 2 === 0 ? "user" : "assistant";
    if (!m || typeof m !== "object" || typeof m.content !== "string") throw new Error(`message ${i + 1} needs a 'role' and a string 'content'`);
    if (m.role !== want) throw new Error(`message ${i + 1} should be from the ${want} (messages alternate user, assistant)`);
    return { role: want, content: m.content };
  });
  if (messages.length % 2) throw new Error("the last user message has no reply");
  const params = data.params ?? {};
  if (typeof params !== "object" || Array.isArray(params)) throw new Error("'params' must be an object");
  const unknown = Object.keys(params).filter((k) => !TRANSCRIPT_PARAMS.includes(k));
  if (unknown.length) throw new Error(`unknown param '${unknown[0]}'`);
  const chosen = { ...DEFAULTS };
  for (const key of ["temperature", "max_tokens", "seed"]) {
    const value = params[key];
    if (value === undefined) continue;
    if (value !== null && (typeof value !== "number" || !Number.isFinite(value))) throw new Error(`'params.${key}' must be a number`);
    chosen[key] = value;
  }
  const unused = Object.keys(params).filter((k) => !["temperature", "max_tokens", "seed"].includes(k) && params[k] !== null);
  return { system: data.system || "", messages, params: chosen, unused, model: typeof data.model === "string" ? data.model : null };
}

async function importFile(file) {
  let parsed;
  try {
    parsed = parseTranscript(JSON.parse(await readFile(file)));
  } catch (error) {
    showNotice(`${file.name} is not a chat transcript: ${error.message}`, "error", "import-error");
    return;
  }
  const model = parsed.model && models.includes(parsed.model) ? parsed.model : ui.model.value;
  const conv = newConversation({ system: parsed.system, messages: parsed.messages, params: parsed.params, model });
  saveAll();
  select(conv);
  const notes = [`Imported ${parsed.messages.length / 2} exchange${parsed.messages.length === 2 ? "" : "s"} from ${file.name}.`];
  if (parsed.model && parsed.model !== model) notes.push(`It was saved with ${parsed.model}, which this server does not have; continuing with ${model}.`);
  if (parsed.unused.length) notes.push(`This page does not use its ${parsed.unused.join(", ")}.`);
  showNotice(notes.join(" "), "info", "imported");
}

// ---------------------------------------------------------------- start

async function loadServer() {
  try {
    models = await fillModels(ui.model, current && current.model);
    const indexes = (await json("/v1/indexes")).data;
    ui.index.replaceChildren(el("option", { value: "" }, "None"), ...indexes.map((x) => el("option", { value: x.id }, x.id)));
    ui.indexRow.hidden = indexes.length === 0;
    ui.status.textContent = "";
    if (current) {
      if (!current.model || !models.includes(current.model)) current.model = ui.model.value;
      if (!current.ctx) {
        // A loaded model's context is known before the first request; another's after it.
        const loaded = (await json("/health")).models.find((m) => m.model === current.model);
        if (loaded) current.ctx = loaded.context_per_request;
      }
      renderSettings();
      renderMeter();
    }
    ui.send.disabled = false;
    document.body.dataset.ready = "true"; // for tests and scripts: the server has answered
  } catch (error) {
    ui.status.textContent = errorText(error);
    ui.send.disabled = true;
  }
}

function start() {
  keyGate.init(loadServer);
  const remembered = localStorage.getItem(`${STORE}.current`);
  current = conversations.find((c) => c.id === remembered) || conversations[0] || newConversation();
  renderAll();
  loadServer();

  ui.composer.addEventListener("submit", (e) => {
    e.preventDefault();
    sendText(ui.prompt.value);
  });
  ui.prompt.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      sendText(ui.prompt.value);
    }
  });
  ui.stop.addEventListener("click", () => controller && controller.abort());
  $("new-chat").addEventListener("click", () => {
    if (busy()) return;
    select(newConversation({ model: ui.model.value }));
    saveAll();
    ui.prompt.focus();
  });
  $("export").addEventListener("click", exportCurrent);
  $("import-file").addEventListener("change", (e) => {
    if (e.target.files.length) importFile(e.target.files[0]);
    e.target.value = "";
  });
  for (const input of [ui.system, ui.temperature, ui.maxTokens, ui.seed, ui.index, ui.model]) {
    input.addEventListener("change", () => {
      settingsFromForm();
      touch();
    });
  }
  $("settings-toggle").addEventListener("click", () => {
    ui.settings.hidden = !ui.settings.hidden;
    $("settings-toggle").setAttribute("aria-expanded", String(!ui.settings.hidden));
  });
  $("toggle-sidebar").addEventListener("click", () => document.body.classList.toggle("sidebar-open"));
  $("scrim").addEventListener("click", () => document.body.classList.remove("sidebar-open"));
}

start();
