// Reading the files a person drops on the classify page (CSV, TSV, JSONL, plain lines) and
// writing predictions back as CSV. Parsing only: nothing here touches the page.

/** Rows of a delimited file (RFC 4180 quoting: "" inside quotes, newlines inside quotes). */
export function parseDelimited(text, delimiter = ",") {
  const rows = [];
  let row = [];
  let field = "";
  let quoted = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (quoted) {
      if (c === '"' && text[i + 1] === '"') { field += '"'; i++; }
      else if (c === '"') quoted = false;
      else field += c;
    } else if (c === '"' && field === "") quoted = true;
    else if (c === delimiter) { row.push(field); field = ""; }
    else if (c === "\n" || c === "\r") {
      if (c === "\r" && text[i + 1] === "\n") i++;
      row.push(field);
      rows.push(row);
      row = [];
      field = "";
    } else field += c;
  }
  if (field !== "" || row.length) { row.push(field); rows.push(row); }
  return rows.filter((r) => r.some((cell) => cell.trim() !== ""));
}

function column(header, names) {
  const lower = header.map((h) => h.trim().toLowerCase());
  for (const name of names) {
    const at = lower.indexOf(name);
    if (at >= 0) return at;
  }
  return -1;
}

/**
 * {text, label} rows of a file, by its name: .jsonl (objects with "text" and maybe "label"),
 * .csv/.tsv (a header naming "text" and maybe "label"; else the first column), anything else: one
 * text per line. Throws with the line that is wrong.
 */
export function readRows(name, text) {
  const lower = name.toLowerCase();
  text = text.replace(/^\uFEFF/, "");
  if (lower.endsWith(".jsonl") || lower.endsWith(".ndjson")) {
    return text.split(/\r?\n/).map((line, i) => [line, i]).filter(([line]) => line.trim()).map(([line, i]) => {
      let value;
      try { value = JSON.parse(line); } catch { throw new Error(`line ${i + 1} is not JSON`); }
      if (!value || typeof value.text !== "string") throw new Error(`line ${i + 1} has no string "text"`);
      return { text: value.text, label: value.label == null || value.label === "" ? null : String(value.label) };
    });
  }
  if (lower.endsWith(".csv") || lower.endsWith(".tsv")) {
    const rows = parseDelimited(text, lower.endsWith(".tsv") ? "\t" : ",");
    if (!rows.length) return [];
    let textAt = column(rows[0], ["text", "sms", "message", "content", "sentence"]);
    const labelAt = column(rows[0], ["label", "class", "category", "gold"]);
    let body = rows.slice(1);
    if (textAt < 0) {
      if (labelAt >= 0) textAt = labelAt === 0 ? 1 : 0;
      else { textAt = 0; body = rows; } // no header
    }
    return body.map((r) => ({ text: r[textAt] ?? "", label: labelAt >= 0 && r[labelAt] ? r[labelAt].trim() : null }))
      .filter((r) => r.text.trim());
  }
  return text.split(/\r?\n/).filter((line) => line.trim()).map((line) => ({ text: line, label: null }));
}

function csvField(value) {
  if (typeof value === "number") return String(value);
  const text = value === null || value === undefined ? "" : String(value);
  // A text starting with =, +, - or @ would be a formula in a spreadsheet: a ' first keeps it text.
  const safe = /^[=+\-@\t\r]/.test(text) ? `'${text}` : text;
  return /[",\n\r]/.test(safe) ? `"${safe.replace(/"/g, '""')}"` : safe;
}

export function toCsv(header, rows) {
  return [header, ...rows].map((r) => r.map(csvField).join(",")).join("\r\n") + "\r\n";
}
