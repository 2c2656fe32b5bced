// Dead letters: GET /v1/dead-letters (re-driven ones marked; `?redriven=` filters) and
// POST /v1/dead-letters/{id}:redrive, which answers 202 with the new job's links.
// Contract: { dead_letters: [{ id, job_id, reason, error, source: { partition, offset }, created_at,
//             redriven: { job_id, job_ids, redriven_at } | null }], next_cursor }.
import { api } from "./api.js";
import { badge, dateTime, h, json, toast } from "./dom.js";

const SHOW = { open: "false", redriven: "true", all: null }; // the filter's choices → ?redriven=

function offsetOf(item) {
  const s = item.source || {};
  return [s.partition !== undefined ? `p${s.partition}` : null, s.offset !== undefined ? `@${s.offset}` : null].filter(Boolean).join(" ") || "–";
}

function stateOf(item) {
  const r = item.redriven;
  if (!r) return h("span", { "data-state": "open" }, badge("open"));
  const count = r.job_ids && r.job_ids.length > 1 ? ` (${r.job_ids.length} times)` : "";
  return h("span", { "data-state": "redriven" },
    badge("re-driven"), " as ", h("a", { href: `/ui/jobs/${encodeURIComponent(r.job_id)}`, class: "mono" }, r.job_id),
    h("span", { class: "muted" }, ` ${dateTime(r.redriven_at)}${count}`));
}

export function render(main, { navigate }) {
  const tbody = h("tbody", { id: "dead-letters-body" });
  const status = h("p", { class: "muted", "aria-live": "polite", id: "dead-letters-status" }, "Loading…");
  const more = h("button", { type: "button", hidden: true, onclick: () => load() }, "Load more");
  const show = h("select", { id: "filter-redriven", name: "show" },
    h("option", { value: "open", selected: true }, "not re-driven yet"),
    h("option", { value: "redriven" }, "re-driven"),
    h("option", { value: "all" }, "all"));
  let cursor = null;
  let generation = 0;

  main.append(
    h("h1", {}, "Dead letters"),
    h("p", { class: "muted" }, "Requests the processors could not run. Re-drive submits a request again as a new job."),
    h("form", { class: "filters", role: "search", "aria-label": "Filter dead letters", onsubmit: (e) => e.preventDefault() },
      h("label", { for: "filter-redriven" }, "Show"), show),
    status,
    h("div", { class: "table-wrap" }, h("table", { class: "data" },
      h("thead", {}, h("tr", {}, ["Job", "Reason", "Error", "Source offset", "Dead since", "State"].map((t) => h("th", { scope: "col" }, t)))),
      tbody)),
    h("p", {}, more),
  );

  async function redrive(item, button) {
    button.disabled = true;
    try {
      const { data } = await api(`/v1/dead-letters/${encodeURIComponent(item.id)}:redrive`, { method: "POST" });
      toast(`Re-driven as job ${data.job_id}`);
      navigate(`/ui/jobs/${encodeURIComponent(data.job_id)}`);
    } catch (error) {
      toast(error.message, "error");
      button.disabled = false;
    }
  }

  async function load() {
    const mine = generation;
    const query = new URLSearchParams({ limit: "50" });
    const redriven = SHOW[show.value];
    if (redriven !== null) query.set("redriven", redriven);
    if (cursor) query.set("cursor", cursor);
    try {
      const data = (await api(`/v1/dead-letters?${query}`)).data;
      if (mine !== generation) return; // the filter changed meanwhile
      for (const item of data.dead_letters) {
        const button = h("button", { type: "button", "aria-label": `Re-drive ${item.job_id || item.id}` }, item.redriven ? "Re-drive again" : "Re-drive");
        button.addEventListener("click", () => redrive(item, button));
        tbody.append(h("tr", { "data-id": item.id, "data-redriven": item.redriven ? "true" : "false" },
          h("td", { class: "id" }, item.job_id ? h("a", { href: `/ui/jobs/${encodeURIComponent(item.job_id)}` }, item.job_id) : "–"),
          h("td", {}, item.reason || "–"),
          h("td", { class: "error-text" }, h("code", {}, typeof item.error === "string" ? item.error : json(item.error))),
          h("td", { class: "num" }, offsetOf(item)),
          h("td", { class: "num" }, dateTime(item.created_at)),
          h("td", { class: "state" }, stateOf(item), " ", button)));
      }
      cursor = data.next_cursor;
      more.hidden = !cursor;
      status.textContent = tbody.children.length ? `${tbody.children.length} dead letters` : "No dead letters.";
    } catch (error) {
      status.textContent = error.message;
    }
  }
  show.addEventListener("change", () => {
    generation += 1;
    cursor = null;
    tbody.replaceChildren();
    status.textContent = "Loading…";
    load();
  });
  load();
}
