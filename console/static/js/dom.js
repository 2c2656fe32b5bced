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

export function time(iso) {
  if (!iso) return "–";
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? "–" : d.toLocaleTimeString([], { hour12: false }) + "." + String(d.getMilliseconds()).padStart(3, "0");
}

export function dateTime(iso) {
  if (!iso) return "–";
  const d = new Date(iso);
  return `${d.toLocaleDateString()} ${time(iso)}`;
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
