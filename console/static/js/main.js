// The console's router: every /ui path is this one page; each section renders into <main>.
import { forgetKey, hasKey } from "./api.js";
import { toast } from "./dom.js";
import * as jobs from "./jobs.js";
import * as job from "./job.js";
import * as submit from "./submit.js";
import * as analytics from "./analytics.js";
import * as deadLetters from "./dead_letters.js";
import * as replays from "./replays.js";
import * as sql from "./sql.js";

const ROUTES = [
  [/^\/ui\/?$/, "jobs", jobs, "Jobs"],
  [/^\/ui\/jobs\/?$/, "jobs", jobs, "Jobs"],
  [/^\/ui\/jobs\/([^/]+)$/, "jobs", job, "Job"],
  [/^\/ui\/submit$/, "submit", submit, "Submit"],
  [/^\/ui\/analytics$/, "analytics", analytics, "Analytics"],
  [/^\/ui\/dead-letters$/, "dead-letters", deadLetters, "Dead letters"],
  [/^\/ui\/replays\/?$/, "replays", replays, "Replays"],
  [/^\/ui\/replays\/([^/]+)$/, "replays", replays, "Replay"],
  [/^\/ui\/sql$/, "sql", sql, "SQL"],
];

let cleanup = null;

export function navigate(url, { replace = false } = {}) {
  if (replace) history.replaceState(null, "", url);
  else history.pushState(null, "", url);
  show();
}

function show() {
  if (cleanup) { cleanup(); cleanup = null; }
  const main = document.getElementById("main");
  const path = location.pathname;
  const found = ROUTES.map(([re, section, page, title]) => [path.match(re), section, page, title]).find(([m]) => m);
  main.replaceChildren();
  if (!found) {
    main.textContent = "No such page.";
    return;
  }
  const [match, section, page, title] = found;
  document.title = `${title} · jobstream`;
  for (const link of document.querySelectorAll("nav a")) {
    if (link.dataset.section === section) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  const params = new URLSearchParams(location.search);
  const result = page.render(main, { id: match[1] ? decodeURIComponent(match[1]) : null, params, navigate });
  cleanup = typeof result === "function" ? result : null;
}

// Same-origin /ui links navigate in place (keeping streams and the key in this tab).
document.addEventListener("click", (event) => {
  const link = event.target.closest("a[href^='/ui']");
  if (!link || event.defaultPrevented || event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey || link.target) return;
  event.preventDefault();
  navigate(link.getAttribute("href"));
  document.getElementById("main").focus({ preventScroll: true });
});
window.addEventListener("popstate", show);

const forget = document.getElementById("forget-key");
forget.hidden = !hasKey();
forget.addEventListener("click", () => { forgetKey(); forget.hidden = true; toast("API key forgotten in this tab"); });

show();
