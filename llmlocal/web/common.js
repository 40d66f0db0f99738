// What both pages share: calling the API (with the key, if the server wants one), reading a
// stream of server-sent events, and building DOM nodes from text without ever parsing it as HTML.

const KEY_STORE = "llmlocal.apiKey";

export class ApiError extends Error {
  constructor(status, body) {
    const message = (body && body.error && body.error.message) || `the server answered ${status}`;
    super(message);
    this.status = status;
    this.code = body && body.error ? body.error.code : null;
  }
}

export function apiKey() {
  return localStorage.getItem(KEY_STORE) || "";
}

function headers(json) {
  const out = {};
  if (json) out["Content-Type"] = "application/json";
  const key = apiKey();
  if (key) out.Authorization = `Bearer ${key}`;
  return out;
}

/** fetch() of one API path; a non-2xx answer is thrown as an ApiError carrying the server's message. */
export async function call(path, { method = "GET", body, signal } = {}) {
  const response = await fetch(path, {
    method, headers: headers(body !== undefined), signal,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (!response.ok) {
    let data = null;
    try { data = await response.json(); } catch { /* not JSON: the status says enough */ }
    const error = new ApiError(response.status, data);
    if (response.status === 401) keyGate.refused(error);
    throw error;
  }
  return response;
}

export async function json(path, options) {
  return (await call(path, options)).json();
}

/** The data fields of a server-sent-event response, as they arrive; ends at "[DONE]". */
export async function* events(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trimStart()).join("\n");
      if (data === "[DONE]") return;
      if (data) yield JSON.parse(data);
    }
  }
}

/** An element with attributes and children (strings become text nodes: never markup). */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "className") node.className = value;
    else if (name === "dataset") Object.assign(node.dataset, value);
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
  for (const child of children.flat()) {
    if (child !== null && child !== undefined) node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export const integer = new Intl.NumberFormat("en-US");

export function fixed(value, digits = 4) {
  return value === null || value === undefined ? "–" : Number(value).toFixed(digits);
}

/** Offer ``text`` as a file download (a blob: URL, so nothing leaves the machine). */
export function download(name, text, type) {
  const url = URL.createObjectURL(new Blob([text], { type }));
  const link = el("a", { href: url, download: name, hidden: true });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

export function readFile(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(String(reader.result));
    reader.onerror = () => reject(reader.error);
    reader.readAsText(file);
  });
}

/** A drop zone: files dropped on ``zone`` or chosen with ``input`` go to ``onFile``. */
export function fileTarget(zone, input, onFile) {
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    if (e.dataTransfer.files.length) onFile(e.dataTransfer.files[0]);
  });
  input.addEventListener("change", () => {
    if (input.files.length) onFile(input.files[0]);
    input.value = "";
  });
}

// The API key, asked for once: a server started with --api-key answers 401 until the page
// sends it. It is kept in this browser's localStorage for this origin only.
export const keyGate = {
  waiting: null,
  refused(error) {
    const dialog = document.getElementById("key-dialog");
    const message = document.getElementById("key-error");
    message.textContent = apiKey()
      ? `The server refused this key: ${error.message}`
      : "This server was started with --api-key: enter that key to use it.";
    message.hidden = false;
    message.classList.toggle("error", Boolean(apiKey()));
    if (!dialog.open) dialog.showModal();
    document.body.classList.add("locked");
  },
  init(onKey) {
    const form = document.getElementById("key-form");
    const dialog = document.getElementById("key-dialog");
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      const value = document.getElementById("key-input").value.trim();
      if (!value) return;
      localStorage.setItem(KEY_STORE, value);
      dialog.close();
      document.body.classList.remove("locked");
      onKey();
    });
    dialog.addEventListener("cancel", (e) => e.preventDefault()); // nothing works without it
    const forget = document.getElementById("forget-key");
    if (forget) {
      forget.hidden = !apiKey();
      forget.addEventListener("click", () => { localStorage.removeItem(KEY_STORE); location.reload(); });
    }
  },
};

/**
 * The server's installed models for a <select>: ``preferred`` if it is one of them, else the
 * server's default model (the first -m, or the configured default), else the first listed.
 */
export async function fillModels(select, preferred) {
  const models = (await json("/v1/models")).data.map((m) => m.id);
  let fallback = null;
  try {
    fallback = (await json("/health")).default_model;
  } catch { /* the list alone will do */ }
  select.replaceChildren(...models.map((id) => el("option", { value: id }, id)));
  const chosen = [preferred, fallback].find((name) => name && models.includes(name));
  if (chosen) select.value = chosen;
  return models;
}

export function errorText(error) {
  if (error instanceof ApiError) return error.status === 401 ? "API key needed" : error.message;
  return error && error.message ? error.message : String(error);
}
