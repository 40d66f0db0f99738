// A small Markdown renderer for untrusted text (model replies). It never parses text as HTML:
// it builds DOM nodes, and every piece of the input becomes a text node, so <script>, event
// attributes and the like are shown as the characters they are. Only a fixed set of elements is
// made (p, h1-h6, ul, ol, li, blockquote, pre, code, strong, em, del, a, hr, br), and a link
// keeps its target only for http, https and mailto.

const SAFE_PROTOCOLS = ["http:", "https:", "mailto:"];

export function safeHref(url) {
  try {
    const parsed = new URL(url, document.baseURI);
    if (SAFE_PROTOCOLS.includes(parsed.protocol)) return parsed.href;
  } catch { /* not a URL at all */ }
  return null;
}

function node(tag, ...children) {
  const out = document.createElement(tag);
  out.append(...children);
  return out;
}

// Inline syntax, tried together: the earliest match wins, then the text after it is scanned again.
const INLINE = new RegExp([
  "(?<code>`+)(?<codetext>[\\s\\S]+?)\\k<code>",
  "\\[(?<linktext>[^\\]\\n]+)\\]\\((?<href>[^)\\s]+)(?:\\s+\"[^\"]*\")?\\)",
  "\\*\\*(?<strong>[^*\\n](?:[\\s\\S]*?[^*\\n])?)\\*\\*",
  "(?<![\\w])__(?<strong2>[^_\\s](?:[\\s\\S]*?[^_\\s])?)__(?![\\w])",
  "~~(?<del>[^~\\n]+)~~",
  "\\*(?<em>[^*\\s](?:[^*\\n]*[^*\\s])?)\\*",
  "(?<![\\w])_(?<em2>[^_\\s](?:[^_\\n]*[^_\\s])?)_(?![\\w])",
  "(?<url>\\bhttps?:\\/\\/[^\\s<>()\\[\\]]*[^\\s<>()\\[\\].,;:!?'\"])",
].join("|"), "g");

/** ``text``'s inline Markdown appended to ``parent``; inside a link (``inLink``), no links again. */
export function inline(text, parent, inLink = false) {
  const re = new RegExp(INLINE.source, "g"); // its own lastIndex: inline() recurses into matches
  let at = 0;
  for (let m; (m = re.exec(text)) !== null;) {
    const g = m.groups;
    if (inLink && (g.linktext !== undefined || g.url !== undefined)) continue;
    if (m.index > at) parent.append(text.slice(at, m.index));
    if (g.code !== undefined) parent.append(node("code", g.codetext.trim() || g.codetext));
    else if (g.linktext !== undefined) parent.append(link(g.linktext, g.href));
    else if (g.strong !== undefined || g.strong2 !== undefined) inline(g.strong ?? g.strong2, parent.appendChild(node("strong")), inLink);
    else if (g.del !== undefined) inline(g.del, parent.appendChild(node("del")), inLink);
    else if (g.em !== undefined || g.em2 !== undefined) inline(g.em ?? g.em2, parent.appendChild(node("em")), inLink);
    else if (g.url !== undefined) parent.append(link(g.url, g.url));
    at = re.lastIndex;
    if (m[0].length === 0) re.lastIndex++;
  }
  if (at < text.length) parent.append(text.slice(at));
  return parent;
}

function link(text, href) {
  const target = safeHref(href);
  if (target === null) {
    // Shown, not followed: the reader sees what the model wrote and that it was refused.
    const span = node("span");
    span.className = "refused-link";
    span.title = `Not a link: only http, https and mailto links are followed (${href})`;
    inline(text, span, true);
    return span;
  }
  const a = node("a");
  a.href = target;
  a.rel = "noopener noreferrer";
  a.target = "_blank";
  inline(text, a, true);
  return a;
}

const FENCE = /^\s{0,3}(`{3,}|~{3,})\s*([\w+#.-]*)/;
const HEADING = /^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$/;
const RULE = /^\s{0,3}([-*_])(\s*\1){2,}\s*$/;
const QUOTE = /^\s{0,3}>\s?(.*)$/;
const ITEM = /^(\s*)([-*+]|\d{1,9}[.)])\s+(.*)$/;

function startsBlock(line) {
  return FENCE.test(line) || HEADING.test(line) || RULE.test(line) || QUOTE.test(line) || ITEM.test(line);
}

/** ``text`` as Markdown, in a DocumentFragment. An unclosed code fence (a reply still streaming) runs to the end. */
export function render(text) {
  const out = document.createDocumentFragment();
  const lines = String(text).replace(/\r\n?/g, "\n").split("\n");
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    let m;
    if (!line.trim()) { i++; continue; }
    if ((m = FENCE.exec(line))) {
      const fence = m[1];
      const body = [];
      i++;
      while (i < lines.length && !lines[i].trim().startsWith(fence)) body.push(lines[i++]);
      i++;
      const code = node("code", body.join("\n"));
      if (m[2]) code.dataset.lang = m[2];
      out.append(node("pre", code));
    } else if ((m = HEADING.exec(line))) {
      out.append(inline(m[2], node(`h${m[1].length}`)));
      i++;
    } else if (RULE.test(line)) {
      out.append(node("hr"));
      i++;
    } else if (QUOTE.test(line)) {
      const body = [];
      while (i < lines.length && (m = QUOTE.exec(lines[i]))) { body.push(m[1]); i++; }
      out.append(node("blockquote", render(body.join("\n"))));
    } else if ((m = ITEM.exec(line))) {
      const ordered = /\d/.test(m[2]);
      const list = node(ordered ? "ol" : "ul");
      if (ordered && parseInt(m[2], 10) !== 1) list.start = parseInt(m[2], 10);
      while (i < lines.length) {
        const item = ITEM.exec(lines[i]);
        if (!item || /\d/.test(item[2]) !== ordered) break;
        const parts = [item[3]];
        i++;
        // Continuation lines (indented, not a new item) belong to this item.
        while (i < lines.length && lines[i].trim() && !ITEM.test(lines[i]) && /^\s+/.test(lines[i])) parts.push(lines[i++].trim());
        list.append(inline(parts.join(" "), node("li")));
        if (i < lines.length && !lines[i].trim() && i + 1 < lines.length && ITEM.test(lines[i + 1])) i++;
      }
      out.append(list);
    } else {
      const p = node("p");
      const parts = [];
      while (i < lines.length && lines[i].trim() && !(parts.length && startsBlock(lines[i]))) parts.push(lines[i++]);
      parts.forEach((part, k) => {
        if (k) p.append(node("br"));
        inline(part.trim(), p);
      });
      out.append(p);
    }
  }
  return out;
}
