// The classify page: texts and labels or examples in, one POST /v1/classify, the predictions
// out. With known labels the server also returns the evaluation (llmlocal eval's metrics, from
// its one implementation), which this page only draws.

import { el, errorText, fillModels, fixed, integer, json, keyGate, download, readFile, fileTarget, svg } from "./common.js";
import { readRows, toCsv } from "./tables.js";

const $ = (id) => document.getElementById(id);
const ui = {
  model: $("model"), texts: $("texts"), labels: $("labels"), method: $("method"), run: $("run"), status: $("status"),
  inputSummary: $("input-summary"), examplesSummary: $("examples-summary"), results: $("results"),
  body: document.querySelector("#predictions tbody"), pick: document.querySelector("#pick-table tbody"),
  methodUsed: $("method-used"), evaluation: $("evaluation"), cards: $("cards"), confusion: $("confusion"),
  reliability: $("reliability"), perLabel: $("per-label"), sortMark: $("sort-mark"),
};

// The input as rows: from a file (with known labels, maybe) or the text box (one per line).
let fileRows = null;
let boxRows = [];
let fileName = "";
let examples = [];
let examplesName = "";
let result = null; // {rows, response}
let sortOrder = 0; // 0: input order, -1: most confident first, 1: least confident first

function inputRows() {
  return fileRows || boxRows;
}

function summarise() {
  const rows = inputRows();
  const labelled = rows.filter((r) => r.label).length;
  ui.inputSummary.textContent = fileRows
    ? `${fileName}: ${integer.format(rows.length)} rows${labelled ? `, ${integer.format(labelled)} with a label (the evaluation uses them)` : ""}. `
    : rows.length ? `${integer.format(rows.length)} texts` : "";
  if (fileRows) {
    ui.inputSummary.append(el("button", {
      type: "button", className: "link", onclick: () => { fileRows = null; ui.texts.disabled = false; summarise(); renderPick(); },
    }, "Use the text box instead"));
  }
  ui.examplesSummary.textContent = examples.length ? `${examplesName}: ${integer.format(examples.length)} examples `
    + `(${[...new Set(examples.map((e) => e.label))].join(", ")})` : "";
}

function renderPick() {
  const rows = inputRows().slice(0, 200);
  ui.pick.replaceChildren(...rows.map((row, i) => el("tr", {},
    el("td", { className: "n" }, String(i + 1)),
    el("td", { className: "text" }, row.text),
    el("td", {}, el("input", {
      type: "text", className: "pick-label", placeholder: "label", "aria-label": `Label for row ${i + 1}`,
      value: row.example || "", dataset: { row: i },
      onchange: (e) => { row.example = e.target.value.trim() || null; },
    })))));
}

async function loadInput(file) {
  try {
    fileRows = readRows(file.name, await readFile(file));
    fileName = file.name;
    ui.texts.value = fileRows.map((r) => r.text.replace(/\s*\n\s*/g, " ")).join("\n");
    ui.texts.disabled = true;
    if (!fileRows.length) throw new Error("no rows with text");
    ui.status.textContent = "";
  } catch (error) {
    fileRows = null;
    ui.texts.disabled = false;
    ui.status.textContent = `${file.name}: ${error.message}`;
  }
  summarise();
  renderPick();
}

async function loadExamples(file) {
  try {
    const rows = readRows(file.name, await readFile(file));
    const unlabelled = rows.filter((r) => !r.label).length;
    if (unlabelled) throw new Error(`${unlabelled} row${unlabelled === 1 ? " has" : "s have"} no label`);
    examples = rows;
    examplesName = file.name;
    ui.status.textContent = "";
  } catch (error) {
    ui.status.textContent = `${file.name}: ${error.message}`;
  }
  summarise();
}

/** The request for what is on the page, and which input row each text is. */
export function buildRequest() {
  const rows = inputRows();
  const picked = rows.filter((r) => r.example);
  const toClassify = rows.map((r, i) => ({ ...r, row: i })).filter((r) => !r.example);
  const labels = ui.labels.value.split(",").map((l) => l.trim()).filter(Boolean);
  const body = {
    model: ui.model.value, input: toClassify.map((r) => r.text), method: ui.method.value,
    examples: [...examples, ...picked.map((r) => ({ text: r.text, label: r.example }))].map((e) => ({ text: e.text, label: e.label })),
  };
  if (labels.length) body.labels = labels;
  if (toClassify.some((r) => r.label)) body.gold = toClassify.map((r) => r.label || null);
  return { body, rows: toClassify };
}

async function run() {
  const { body, rows } = buildRequest();
  if (!body.input.length) { ui.status.textContent = "Nothing to classify: paste texts or drop a file."; return; }
  if (!body.labels && !body.examples.length) { ui.status.textContent = "Give labels, or examples to take them from."; return; }
  ui.run.disabled = true;
  ui.status.textContent = `Classifying ${integer.format(body.input.length)} texts…`;
  const started = performance.now();
  try {
    const response = await json("/v1/classify", { method: "POST", body });
    result = { rows, response };
    sortOrder = 0;
    renderResults();
    ui.status.textContent = `Done in ${((performance.now() - started) / 1000).toFixed(1)} s.`;
  } catch (error) {
    ui.status.textContent = `Not classified: ${errorText(error)}`;
    ui.status.classList.add("error");
  } finally {
    ui.run.disabled = false;
  }
}

// ---------------------------------------------------------------- results

function renderResults() {
  const { response } = result;
  ui.results.hidden = false;
  const auto = response.auto;
  ui.methodUsed.replaceChildren(el("span", {},
    el("span", { className: "muted" }, "Method "), el("strong", { id: "method-name" }, response.method || "?"),
    auto ? el("span", { className: "muted" }, ` — chosen by auto${auto.scores ? ` (cross-validated macro-F1: ${Object.entries(auto.scores)
      .filter(([, v]) => v !== null).map(([k, v]) => `${k} ${fixed(v, 3)}`).join(", ")})` : ""}`) : null,
    el("span", { className: "muted" }, ` · ${response.model} · ${integer.format(response.data.length)} predictions`)));
  renderTable();
  const ev = response.evaluation;
  ui.evaluation.hidden = !ev;
  if (ev) renderEvaluation(ev, response.labels);
}

function renderTable() {
  const { rows, response } = result;
  const labels = response.labels;
  const order = response.data.map((d, i) => i);
  if (sortOrder) order.sort((a, b) => sortOrder * ((response.data[a].confidence ?? -1) - (response.data[b].confidence ?? -1)));
  ui.sortMark.textContent = sortOrder === -1 ? "↓" : sortOrder === 1 ? "↑" : "↕";
  ui.body.replaceChildren(...order.map((i) => {
    const d = response.data[i];
    const row = rows[i];
    const gold = row.label;
    const bars = el("div", { className: "probs" }, labels.map((label) => {
      const p = d.probabilities ? d.probabilities[label] ?? 0 : 0;
      const bar = el("div", { className: `bar${label === d.label ? " top" : ""}` });
      bar.style.width = `${(p * 100).toFixed(1)}%`;
      return el("div", { className: "prob", dataset: { label, p: String(p) } },
        el("span", { className: "prob-label" }, label), el("div", { className: "track" }, bar),
        el("span", { className: "prob-value" }, p.toFixed(3)));
    }));
    const verdict = gold ? (gold === d.label ? "right" : "wrong") : "";
    return el("tr", { className: verdict, dataset: { index: i, label: d.label ?? "", confidence: d.confidence ?? "" } },
      el("td", { className: "n" }, String(i + 1)),
      el("td", { className: "text" }, row.text),
      el("td", { className: "label" }, d.error ? el("span", { className: "error" }, d.error.message) : el("span", { className: "pill" }, d.label)),
      el("td", { className: "conf" }, d.confidence === null ? "–" : fixed(d.confidence, 3)),
      el("td", { className: "probs-cell" }, bars),
      el("td", { className: "gold" }, gold ? el("span", { className: `pill ${verdict}`, title: verdict === "right" ? "matches" : "differs" }, `${verdict === "right" ? "✓" : "✗"} ${gold}`) : ""));
  }));
}

function card(name, value, note, key) {
  return el("div", { className: "stat" }, el("div", { className: "stat-name" }, name),
    el("div", { className: "stat-value", dataset: { metric: key } }, value), note ? el("div", { className: "muted" }, note) : null);
}

function renderEvaluation(ev, labels) {
  const base = ev.majority_baseline;
  ui.cards.replaceChildren(
    card("Accuracy", fixed(ev.accuracy), `on ${integer.format(ev.n)} labelled rows`, "accuracy"),
    card("Macro-F1", fixed(ev.macro_f1), "mean F1 over labels", "macro_f1"),
    card("Calibration error", fixed(ev.ece), "ECE, 10 bins (lower is better)", "ece"),
    card("Majority baseline", fixed(base.accuracy), `always "${base.label}"`, "baseline"));
  ui.perLabel.replaceChildren(
    el("thead", {}, el("tr", {}, ["Label", "Precision", "Recall", "F1", "Support"].map((h) => el("th", {}, h)))),
    el("tbody", {}, Object.entries(ev.per_label).map(([label, s]) => el("tr", { dataset: { label } },
      el("td", {}, label), el("td", { className: "num" }, fixed(s.precision)), el("td", { className: "num" }, fixed(s.recall)),
      el("td", { className: "num" }, fixed(s.f1)), el("td", { className: "num" }, String(s.support))))));
  renderConfusion(ev.confusion_matrix);
  renderReliability(ev.calibration_bins || []);
}

function renderConfusion(cm) {
  const max = Math.max(1, ...cm.counts.flat());
  const head = el("tr", {}, el("th", {}, ""), cm.columns.map((c) => el("th", { className: "col", title: c }, c)));
  const body = cm.rows.map((label, r) => el("tr", {}, el("th", { className: "rowname", title: label }, label),
    cm.counts[r].map((count, c) => {
      const cell = el("td", { className: `cell${r === c ? " diag" : ""}`, dataset: { row: label, col: cm.columns[c], count } }, String(count));
      const share = count / max;
      cell.style.setProperty("--share", share.toFixed(3));
      cell.classList.toggle("dark", share > 0.55);
      return cell;
    })));
  ui.confusion.replaceChildren(el("table", { className: "heat" }, el("thead", {}, head), el("tbody", {}, body)));
}

function renderReliability(bins) {
  const size = 220;
  const pad = 30;
  const x = (v) => pad + v * size;
  const y = (v) => pad / 2 + (1 - v) * size;
  const chart = svg("svg", { viewBox: `0 0 ${size + pad * 1.5} ${size + pad * 1.6}`, role: "img", "aria-label": "Reliability diagram" });
  chart.append(svg("rect", { x: x(0), y: y(1), width: size, height: size, class: "frame" }));
  for (const t of [0, 0.5, 1]) {
    chart.append(svg("text", { x: x(t), y: y(0) + 16, class: "tick", "text-anchor": "middle" }, String(t)));
    chart.append(svg("text", { x: x(0) - 6, y: y(t) + 4, class: "tick", "text-anchor": "end" }, String(t)));
  }
  for (const b of bins) {
    if (!b.count) continue;
    const width = (b.upper - b.lower) * size;
    chart.append(svg("rect", {
      x: x(b.lower) + 1, y: y(b.accuracy), width: width - 2, height: Math.max(0, y(0) - y(b.accuracy)),
      class: "bar", "data-count": b.count,
    }, svg("title", {}, `${fixed(b.lower, 1)}–${fixed(b.upper, 1)}: ${b.count} rows, accuracy ${fixed(b.accuracy, 2)}, mean confidence ${fixed(b.confidence, 2)}`)));
  }
  chart.append(svg("line", { x1: x(0), y1: y(0), x2: x(1), y2: y(1), class: "ideal" }));
  chart.append(svg("text", { x: x(0.5), y: y(0) + 30, class: "axis", "text-anchor": "middle" }, "confidence"));
  ui.reliability.replaceChildren(chart);
}

function downloadCsv() {
  const { rows, response } = result;
  const labels = response.labels;
  const header = ["row", "text", "label", "confidence", ...labels.map((l) => `p_${l}`), "known_label"];
  const lines = response.data.map((d, i) => [i + 1, rows[i].text, d.label ?? "", d.confidence ?? "",
    ...labels.map((l) => (d.probabilities ? d.probabilities[l] ?? "" : "")), rows[i].label ?? ""]);
  download("predictions.csv", toCsv(header, lines), "text/csv");
}

// ---------------------------------------------------------------- start

async function loadServer() {
  try {
    await fillModels(ui.model, localStorage.getItem("llmlocal.classify.model"));
    ui.run.disabled = false;
    document.body.dataset.ready = "true"; // for tests and scripts: the server has answered
  } catch (error) {
    ui.status.textContent = errorText(error);
    ui.run.disabled = true;
  }
}

keyGate.init(loadServer);
fileTarget($("drop-input"), $("input-file"), loadInput);
fileTarget($("drop-examples"), $("examples-file"), loadExamples);
ui.texts.addEventListener("input", () => {
  boxRows = ui.texts.value.split(/\r?\n/).filter((t) => t.trim()).map((text) => ({ text, label: null }));
  summarise();
  renderPick();
});
ui.model.addEventListener("change", () => localStorage.setItem("llmlocal.classify.model", ui.model.value));
ui.run.addEventListener("click", () => { ui.status.classList.remove("error"); run(); });
$("download").addEventListener("click", downloadCsv);
$("sort").addEventListener("click", () => {
  sortOrder = sortOrder === 0 ? -1 : sortOrder === -1 ? 1 : 0;
  renderTable();
});
loadServer();
