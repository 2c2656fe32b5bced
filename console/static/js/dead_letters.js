// Dead letters: GET /v1/dead-letters and POST /v1/dead-letters/{id}:redrive, as built in parallel
// (issue 14's CLI/API half). Kept to this module so the routes can change without touching the rest.
// Contract: { dead_letters: [{ id, job_id, reason, error, source: { topic?, partition, offset }, created_at }],
//             next_cursor? } (a bare list is accepted too); redrive answers 202 with the new job's links.
import { api } from "./api.js";
import { dateTime, h, json, toast } from "./dom.js";

function itemsOf(data) {
  if (Array.isArray(data)) return { items: data, next: null };
  return { items: data.dead_letters || data.items || [], next: data.next_cursor || null };
}

function offsetOf(item) {
  const s = item.source || {};
  if (item.source_offset !== undefined) return String(item.source_offset);
  return [s.topic, s.partition !== undefined ? `p${s.partition}` : null, s.offset !== undefined ? `@${s.offset}` : null].filter(Boolean).join(" ") || "–";
}

export function render(main, { navigate }) {
  const tbody = h("tbody", { id: "dead-letters-body" });
  const status = h("p", { class: "muted", "aria-live": "polite" }, "Loading…");
  const more = h("button", { type: "button", hidden: true, onclick: () => load() }, "Load more");
  let cursor = null;

  main.append(
    h("h1", {}, "Dead letters"),
    h("p", { class: "muted" }, "Requests the processors could not run. Re-drive submits a request again as a new job."),
    status,
    h("div", { class: "table-wrap" }, h("table", { class: "data" },
      h("thead", {}, h("tr", {}, ["Job", "Reason", "Error", "Source offset", "Dead since", ""].map((t) => h("th", { scope: "col" }, t)))),
      tbody)),
    h("p", {}, more),
  );

  async function redrive(item, button) {
    button.disabled = true;
    try {
      const { data } = await api(`/v1/dead-letters/${encodeURIComponent(item.id)}:redrive`, { method: "POST" });
      const jobId = data.job_id || (data.links && data.links.self && data.links.self.split("/").pop());
      toast(`Re-driven as job ${jobId}`);
      if (jobId) navigate(`/ui/jobs/${encodeURIComponent(jobId)}`);
    } catch (error) {
      toast(error.message, "error");
      button.disabled = false;
    }
  }

  async function load() {
    const query = new URLSearchParams({ limit: "50" });
    if (cursor) query.set("cursor", cursor);
    try {
      const { items, next } = itemsOf((await api(`/v1/dead-letters?${query}`)).data);
      for (const item of items) {
        const button = h("button", { type: "button", "aria-label": `Re-drive ${item.job_id || item.id}` }, "Re-drive");
        button.addEventListener("click", () => redrive(item, button));
        tbody.append(h("tr", {},
          h("td", { class: "id" }, item.job_id ? h("a", { href: `/ui/jobs/${encodeURIComponent(item.job_id)}` }, item.job_id) : "–"),
          h("td", {}, item.reason || "–"),
          h("td", {}, h("code", {}, typeof item.error === "string" ? item.error : json(item.error))),
          h("td", { class: "num" }, offsetOf(item)),
          h("td", { class: "num" }, dateTime(item.created_at)),
          h("td", {}, button)));
      }
      cursor = next;
      more.hidden = !cursor;
      status.textContent = tbody.children.length ? `${tbody.children.length} dead letters` : "No dead letters.";
    } catch (error) {
      status.textContent = error.status === 404 ? "This server has no dead-letters API yet." : error.message;
    }
  }
  load();
}
