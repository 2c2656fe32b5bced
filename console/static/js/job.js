// One job: its state (GET /v1/jobs/{id}), its events live (the job's own stream), timings,
// params, result or error, and Cancel / Re-run.
import { api, follow } from "./api.js";
import { badge, between, dateTime, h, json, seconds, time, toast } from "./dom.js";
import { statusOf } from "./jobs.js";

export function paramsKey(jobId) {
  return `jobstream.params.${jobId}`;
}

function describe(event) {
  const d = event.data || {};
  switch (event.type) {
    case "progress": return `${Math.round((d.progress || 0) * 100)}%`;
    case "running": return [d.attempt && `attempt ${d.attempt}`, d.batch_size && `batch of ${d.batch_size}`].filter(Boolean).join(", ");
    case "retrying": return d.error ? `${d.error.type || "error"}: ${d.error.message || ""}` : "";
    case "failed": case "cancelled": return d.error ? `${d.error.type || ""}: ${d.error.message || ""}` : "";
    case "succeeded": return d.calc_version ? `version ${d.calc_version}` : "";
    case "queued": return d.replay_of ? `replay of ${d.replay_of}` : `priority ${d.priority ?? 0}`;
    default: return "";
  }
}

export function render(main, { id, navigate }) {
  const title = h("h1", { class: "mono" }, `Job ${id}`);
  const status = h("span", { id: "job-status" });
  const bar = h("progress", { max: "1", value: "0", "aria-label": "progress" });
  const cancel = h("button", { type: "button", id: "cancel", class: "danger" }, "Cancel");
  const rerun = h("button", { type: "button", id: "rerun" }, "Re-run");
  const timings = h("dl", { class: "timings", id: "timings" });
  const timeline = h("ol", { class: "timeline", id: "timeline", "aria-live": "polite", "aria-relevant": "additions" });
  const outcome = h("section", { id: "outcome", "aria-labelledby": "outcome-title" }, h("h2", { id: "outcome-title" }, "Result"));
  const stored = sessionStorage.getItem(paramsKey(id));
  const paramsTitle = h("h2", { id: "params-title" }, "Params");
  const params = h("section", { "aria-labelledby": "params-title" }, paramsTitle, h("p", { class: "muted" }, "Loading…"));
  function showParams(value) {
    // the API's (GET /v1/jobs/{id}); this tab's copy only for jobs queued before the API kept them
    const known = value ?? (stored ? JSON.parse(stored) : null);
    params.replaceChildren(paramsTitle, known
      ? h("pre", { class: "json", id: "params" }, json(known))
      : h("p", { class: "muted" }, "Not known: this job was queued before jobstream kept params with its events."));
  }
  const seen = new Set();
  let job = null, stream = null;

  main.append(
    h("div", { class: "title-row" }, title, status),
    h("p", { class: "actions" }, bar, cancel, rerun),
    h("div", { class: "columns" },
      h("section", { "aria-labelledby": "timings-title" }, h("h2", { id: "timings-title" }, "Timings"), timings),
      h("section", { "aria-labelledby": "timeline-title" }, h("h2", { id: "timeline-title" }, "Events"), timeline)),
    params,
    outcome,
  );

  function showJob(view) {
    job = view;
    showParams(view.params);
    status.replaceChildren(badge(view.status));
    bar.value = view.status === "succeeded" ? 1 : view.progress || 0;
    const terminal = ["succeeded", "failed", "cancelled"].includes(view.status);
    cancel.disabled = terminal;
    rerun.disabled = !terminal;
    const rows = [
      ["Kind", view.kind],
      ["Submitted", dateTime(view.submitted_at)],
      ["Started", dateTime(view.started_at)],
      ["Finished", dateTime(view.finished_at)],
      ["Queue wait", seconds(between(view.submitted_at, view.started_at))],
      ["Run", seconds(between(view.started_at, view.finished_at))],
      ["End to end", seconds(between(view.submitted_at, view.finished_at))],
      ["Attempts", view.attempts],
    ];
    if (view.replay_of) rows.push(["Re-run of", h("a", { href: `/ui/jobs/${encodeURIComponent(view.replay_of)}` }, view.replay_of)]);
    timings.replaceChildren(...rows.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
    const body = view.status === "succeeded" ? h("pre", { class: "json", id: "result" }, json(view.result))
      : view.error ? h("pre", { class: "json error", id: "error" }, json(view.error))
      : h("p", { class: "muted" }, terminal ? "No result." : "Not finished yet.");
    outcome.replaceChildren(h("h2", { id: "outcome-title" }, view.status === "succeeded" ? "Result" : view.error ? "Error" : "Result"), body);
  }

  async function load() {
    try {
      showJob((await api(`/v1/jobs/${encodeURIComponent(id)}`)).data);
    } catch (error) {
      outcome.replaceChildren(h("p", { class: "error" }, error.message));
    }
  }

  function onEvent(event) {
    if (seen.has(event.seq)) return;
    seen.add(event.seq);
    timeline.append(
      h("li", { "data-type": event.type },
        h("time", { datetime: event.ts }, time(event.ts)), " ", badge(event.type), " ", h("span", { class: "muted" }, describe(event))),
    );
    if (job && event.seq > (job.seq ?? -1)) {
      job.seq = event.seq;
      job.status = statusOf(event.type);
      if (event.type === "progress") bar.value = event.data.progress;
      status.replaceChildren(badge(job.status));
      const terminal = ["succeeded", "failed", "cancelled"].includes(job.status);
      cancel.disabled = terminal;
      rerun.disabled = !terminal;
    }
    if (event.type === "running" || ["succeeded", "failed", "cancelled"].includes(event.type)) load();
  }

  cancel.addEventListener("click", async () => {
    cancel.disabled = true;
    try {
      await api(`/v1/jobs/${encodeURIComponent(id)}:cancel`, { method: "POST" });
      toast("Cancel requested: the job stops at its next progress point");
    } catch (error) {
      toast(error.message, "error");
      cancel.disabled = false;
    }
  });
  rerun.addEventListener("click", async () => {
    rerun.disabled = true;
    try {
      const { data } = await api(`/v1/jobs/${encodeURIComponent(id)}:rerun`, { method: "POST" });
      const stored = sessionStorage.getItem(paramsKey(id));
      if (stored) sessionStorage.setItem(paramsKey(data.job_id), stored);
      navigate(`/ui/jobs/${encodeURIComponent(data.job_id)}`);
    } catch (error) {
      toast(error.message, "error");
      rerun.disabled = false;
    }
  });

  load().then(() => {
    stream = follow(`/v1/jobs/${encodeURIComponent(id)}/events`, {}, { jobId: id, onEvent, onReset: load });
  });
  return () => stream && stream.close();
}
