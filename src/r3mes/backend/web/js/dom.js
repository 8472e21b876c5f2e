// Building DOM nodes without HTML strings: every piece of data becomes a text node.
//
// h("a", {href: "#/network", class: "nav"}, "Network") -> <a ...>Network</a>
// Attributes go through setAttribute (never `on*` handlers: pass {onclick: fn} and it is
// attached with addEventListener). Children may be strings, numbers, nodes, arrays or null.

const EVENT = /^on[a-z]+$/;

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (EVENT.test(name) && typeof value === "function") {
      el.addEventListener(name.slice(2), value);
    } else if (name === "class") {
      el.className = value;
    } else if (name === "value" && "value" in el) {
      el.value = value;
    } else if (name === "checked" || name === "disabled" || name === "selected") {
      el[name] = Boolean(value);
    } else if (name === "dataset") {
      Object.assign(el.dataset, value);
    } else {
      if (name === "href" && !safeHref(String(value))) continue;
      el.setAttribute(name, value === true ? "" : String(value));
    }
  }
  append(el, children);
  return el;
}

export function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

/** Replace all children of `el` (data stays text). */
export function replace(el, ...children) {
  el.replaceChildren();
  return append(el, children);
}

/** Only in-page, http(s) and mailto links; never javascript: or data:. */
export function safeHref(href) {
  if (href.startsWith("#") || href.startsWith("/")) return !href.startsWith("//");
  try {
    const url = new URL(href);
    return url.protocol === "https:" || url.protocol === "http:" || url.protocol === "mailto:";
  } catch {
    return false;
  }
}

let idCounter = 0;
export function uid(prefix = "id") {
  idCounter += 1;
  return `${prefix}-${idCounter}`;
}

/** A labelled form field: <label for=...>text</label> + control, wrapped in a div. */
export function field(labelText, control, hint = null) {
  if (!control.id) control.id = uid("f");
  const parts = [h("label", { for: control.id }, labelText), control];
  if (hint) {
    const hintEl = h("p", { class: "hint", id: uid("hint") }, hint);
    control.setAttribute("aria-describedby", hintEl.id);
    parts.push(hintEl);
  }
  return h("div", { class: "field" }, parts);
}

/** A table from rows: columns = [{label, value: row => node|string, class?}]. */
export function table(caption, columns, rows, emptyText = "Nothing yet.") {
  if (!rows.length) return h("p", { class: "empty" }, emptyText);
  return h(
    "div",
    { class: "table-wrap", tabindex: "0", role: "region", "aria-label": caption },
    h(
      "table",
      {},
      h("caption", { class: "visually-hidden" }, caption),
      h("thead", {}, h("tr", {}, columns.map((c) => h("th", { scope: "col", class: c.class }, c.label)))),
      h(
        "tbody",
        {},
        rows.map((row) => h("tr", {}, columns.map((c) => h("td", { class: c.class }, c.value(row))))),
      ),
    ),
  );
}

export function fmtInt(n) {
  if (n === null || n === undefined || n === "") return "-";
  const num = Number(n);
  return Number.isFinite(num) ? num.toLocaleString("en-US", { maximumFractionDigits: 0 }) : String(n);
}

export function fmtNum(n, digits = 3) {
  if (n === null || n === undefined || n === "") return "-";
  const num = Number(n);
  return Number.isFinite(num) ? num.toLocaleString("en-US", { maximumFractionDigits: digits }) : String(n);
}

export function fmtPct(x) {
  if (x === null || x === undefined) return "-";
  const num = Number(x);
  return Number.isFinite(num) ? `${(num * 100).toFixed(1)}%` : String(x);
}

export function fmtTime(value) {
  if (!value) return "-";
  const date = typeof value === "number" ? new Date(value * (value < 1e12 ? 1000 : 1)) : new Date(value);
  return Number.isNaN(date.getTime()) ? String(value) : date.toLocaleString();
}

/** `remes1abcd...wxyz`: short form for tables; the full address is in the title and link. */
export function shortAddr(address) {
  const s = String(address ?? "");
  return s.length > 20 ? `${s.slice(0, 10)}…${s.slice(-6)}` : s;
}

/** Announce a short message to screen readers and show it briefly. */
export function toast(message, kind = "info") {
  const box = document.getElementById("toast");
  if (!box) return;
  const item = h("div", { class: `toast ${kind}` }, message);
  box.append(item);
  setTimeout(() => item.remove(), 6000);
}

export async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
    toast("Copied to the clipboard.");
    return true;
  } catch {
    toast("Copy failed: select the text and copy it by hand.", "error");
    return false;
  }
}
