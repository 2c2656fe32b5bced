// Replays: the list, one replay's progress with Stop / Resume, and its diff (results side by side).
import { api } from "./api.js";
import { badge, dateTime, h, json, toast } from "./dom.js";

const POLL_MS = 2000;

function list(main) {
  const tbody = h("tbody", {});
  const status = h("p", { class: "muted", "aria-live": "polite" }, "Loading…");
  main.append(
    h("h1", {}, "Replays"),
    h("p", { class: "muted" }, "Start one with ", h("code", {}, "jobstream replay run"), " or ", h("code", {}, "POST /v1/replays"), "."),
    status,
    h("div", { class: "table-wrap" }, h("table", { class: "data" },
      h("thead", {}, h("tr", {}, ["Replay", "State", "Progress", "Created", "Outcomes"].map((t) => h("th", { scope: "col" }, t)))),
      tbody)),
  );
  api("/v1/replays").then(({ data }) => {
    for (const r of data.replays) {
      tbody.append(h("tr", {},
        h("td", { class: "id" }, h("a", { href: `/ui/replays/${encodeURIComponent(r.replay_id)}` }, r.replay_id)),
        h("td", {}, badge(r.state)),
        h("td", {}, h("progress", { max: String(Math.max(r.total, 1)), value: String(r.emitted), "aria-label": `progress of replay ${r.replay_id}` }), ` ${r.emitted}/${r.total}`),
        h("td", { class: "num" }, dateTime(r.created_at)),
        h("td", {}, Object.entries(r.outcomes || {}).map(([k, v]) => `${k} ${v}`).join(", ") || "–")));
    }
    status.textContent = data.replays.length ? `${data.replays.length} replays` : "No replays yet.";
  }).catch((error) => { status.textContent = error.message; });
}

function detail(main, id) {
  const head = h("div", { id: "replay-state" });
  const stop = h("button", { type: "button", id: "replay-stop" }, "Stop");
  const resume = h("button", { type: "button", id: "replay-resume" }, "Resume");
  const filter = h("select", { id: "diff-outcome" }, ["changed", "equal", "failed", "pending", ""].map((o) => h("option", { value: o }, o || "all")));
  const diff = h("tbody", { id: "diff-body" });
  let timer = null, gone = false;

  main.append(
    h("h1", { class: "mono" }, `Replay ${id}`),
    head,
    h("p", { class: "actions" }, stop, resume),
    h("h2", {}, "Diff"),
    h("form", { class: "filters", onsubmit: (e) => e.preventDefault() }, h("label", { for: "diff-outcome" }, "Outcome"), filter),
    h("div", { class: "table-wrap" }, h("table", { class: "data diff" },
      h("thead", {}, h("tr", {}, ["Original job", "Replayed job", "Outcome", "Original result", "Replayed result"].map((t) => h("th", { scope: "col" }, t)))),
      diff)),
  );

  async function load() {
    if (gone) return;
    try {
      const { data: r } = await api(`/v1/replays/${encodeURIComponent(id)}`);
      head.replaceChildren(
        h("p", {}, badge(r.state), " ",
          h("progress", { max: String(Math.max(r.total, 1)), value: String(r.emitted), "aria-label": "replay progress" }),
          ` ${r.emitted} of ${r.total} jobs emitted at up to ${r.rate}/s`),
        h("p", { class: "muted" }, `created ${dateTime(r.created_at)} · outcomes: ${Object.entries(r.outcomes || {}).map(([k, v]) => `${k} ${v}`).join(", ") || "–"}`),
        r.error ? h("p", { class: "error" }, r.error) : null,
      );
      stop.disabled = r.state !== "running";
      resume.disabled = r.state !== "stopped";
      const query = new URLSearchParams({ limit: "100" });
      if (filter.value) query.set("outcome", filter.value);
      const { data: d } = await api(`/v1/replays/${encodeURIComponent(id)}/diff?${query}`);
      diff.replaceChildren(...d.jobs.map((row) => h("tr", {},
        h("td", { class: "id" }, h("a", { href: `/ui/jobs/${encodeURIComponent(row.original_job_id)}` }, row.original_job_id)),
        h("td", { class: "id" }, h("a", { href: `/ui/jobs/${encodeURIComponent(row.replay_job_id)}` }, row.replay_job_id)),
        h("td", {}, badge(row.outcome)),
        h("td", {}, h("pre", { class: "json" }, json(row.original_result))),
        h("td", {}, h("pre", { class: "json" }, row.replay_error || json(row.replay_result))))));
      if (!["completed", "failed", "planned"].includes(r.state)) timer = setTimeout(load, POLL_MS);
    } catch (error) {
      head.replaceChildren(h("p", { class: "error" }, error.message));
    }
  }
  async function act(action) {
    try {
      await api(`/v1/replays/${encodeURIComponent(id)}:${action}`, { method: "POST" });
      toast(`Replay ${action === "stop" ? "stopping" : "resumed"}`);
    } catch (error) {
      toast(error.message, "error");
    }
    clearTimeout(timer);
    load();
  }
  stop.addEventListener("click", () => act("stop"));
  resume.addEventListener("click", () => act("resume"));
  filter.addEventListener("change", () => { clearTimeout(timer); load(); });
  load();
  return () => { gone = true; clearTimeout(timer); };
}

export function render(main, { id }) {
  return id ? detail(main, id) : list(main);
}
