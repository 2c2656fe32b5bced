// Small DOM and formatting helpers shared by the pages.

/** h("a", {href: "/x", class: "y"}, "text", child): an element; `on*` attributes become listeners. */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") el.addEventListener(name.slice(2), value);
    else if (name === "class") el.className = value;
    else if (value === true) el.setAttribute(name, "");
    else el.setAttribute(name, String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

// One formatter each (toLocale*String builds a new one per call: too slow for a live table).
const TIME = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false, fractionalSecondDigits: 3 });
const DATE = new Intl.DateTimeFormat(undefined, { year: "numeric", month: "2-digit", day: "2-digit" });

export function time(iso) {
  if (!iso) return "–";
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? "–" : TIME.format(d);
}

export function dateTime(iso) {
  if (!iso) return "–";
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? "–" : `${DATE.format(d)} ${TIME.format(d)}`;
}

export function seconds(value) {
  if (value === null || value === undefined || Number.isNaN(value)) return "–";
  if (value < 1) return `${(value * 1000).toFixed(0)} ms`;
  if (value < 120) return `${value.toFixed(2)} s`;
  return `${(value / 60).toFixed(1)} min`;
}

export function between(a, b) {
  return a && b ? (new Date(b) - new Date(a)) / 1000 : null;
}

export function json(value) {
  return JSON.stringify(value, null, 2);
}

let toastTimer = null;
/** A short message in the polite live region (screen readers announce it). */
export function toast(message, kind = "info") {
  const box = document.getElementById("toast");
  box.textContent = message;
  box.dataset.kind = kind;
  box.classList.add("shown");
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => box.classList.remove("shown"), 5000);
}

/** A status badge: the text is the status, the colour a hint only. */
export function badge(status) {
  return h("span", { class: `badge status-${status}` }, status);
}

/** A progress bar with an accessible name; `update(fraction)` moves it. */
export function progressBar(label) {
  const bar = h("progress", { max: "1", value: "0", "aria-label": label });
  return bar;
}
