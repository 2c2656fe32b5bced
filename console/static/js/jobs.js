// Jobs, live: the tenant's jobs from GET /v1/jobs, kept current by /v1/events.
// Events are queued as they arrive and applied once per animation frame, touching only the rows
// that changed, so a burst of 1,000 events/s costs a few DOM writes per frame. New jobs go on top
// only while the reader is not using the table (scrolled down, pointer or focus in it): then they
// wait behind a "Show N new jobs" button whose space is always reserved, so nothing moves under them.
import { api, follow } from "./api.js";
import { badge, h, time, toast } from "./dom.js";

const FINISHED = new Set(["succeeded", "failed", "cancelled"]);
const REFRESH_MAX = 100; // unfinished rows re-read once the stream is live (a page holds fewer)

const PAGE = 50;
const MAX_ROWS = 500; // live rows kept on screen (older ones are a page away)
const MAX_WAITING = 5000; // new jobs held back while the table is in use
const ROWS_PER_FRAME = 100; // new rows built per frame at most: a burst is spread over a few frames
const STATUSES = ["queued", "running", "succeeded", "failed", "cancelled"];

export function statusOf(type) {
  return ["running", "progress", "retrying"].includes(type) ? "running" : type;
}

export function render(main, { params, navigate }) {
  const kind = params.get("kind") || "";
  const status = params.get("status") || "";
  const rows = new Map(); // job_id -> { tr, cells, state }
  const waiting = new Map(); // job_id -> state: new jobs not on screen yet, oldest first
  const dropped = new Set(); // jobs pushed off the live table: their later events must not bring them back
  const pending = [];
  let frame = 0, cursor = null, stream = null, loadedRows = 0;
  const stats = (window.consoleStats = { events: 0, frames: 0, maxFrameWorkMs: 0, rows: 0 });

  const kindSelect = h("select", { id: "filter-kind", name: "kind" }, h("option", { value: "" }, "every kind"));
  const statusSelect = h(
    "select",
    { id: "filter-status", name: "status" },
    h("option", { value: "" }, "every status"),
    STATUSES.map((s) => h("option", { value: s, selected: s === status }, s)),
  );
  const liveState = h("span", { class: "live", id: "live-state" }, "connecting…");
  const tbody = h("tbody", { id: "jobs-body" });
  const older = h("button", { type: "button", id: "older", onclick: () => loadPage() }, "Load older jobs");
  const showNew = h("button", { type: "button", id: "show-new", class: "link", hidden: true, onclick: () => { release(true); window.scrollTo({ top: 0 }); } });
  const newBar = h("div", { class: "new-bar", "aria-live": "polite" }, showNew);
  let pointerInTable = false;
  const empty = h("p", { class: "empty", hidden: true }, "No jobs yet. ", h("a", { href: "/ui/submit" }, "Submit one"), ".");

  function applyFilters() {
    const next = new URLSearchParams();
    if (kindSelect.value) next.set("kind", kindSelect.value);
    if (statusSelect.value) next.set("status", statusSelect.value);
    navigate(`/ui/jobs${next.size ? `?${next}` : ""}`, { replace: true });
  }
  kindSelect.addEventListener("change", applyFilters);
  statusSelect.addEventListener("change", applyFilters);

  main.append(
    h("div", { class: "title-row" }, h("h1", {}, "Jobs"), liveState),
    h(
      "form",
      { class: "filters", role: "search", "aria-label": "Filter jobs", onsubmit: (e) => e.preventDefault() },
      h("label", { for: "filter-kind" }, "Kind"),
      kindSelect,
      h("label", { for: "filter-status" }, "Status"),
      statusSelect,
    ),
    newBar,
    h(
      "div",
      {
        class: "table-wrap",
        id: "jobs-table",
        onpointerenter: () => { pointerInTable = true; },
        onpointerleave: () => { pointerInTable = false; schedule(); },
      },
      h(
        "table",
        { class: "jobs", "aria-describedby": "live-state" },
        h("caption", { class: "visually-hidden" }, "Jobs, newest first, updating live"),
        h(
          "thead",
          {},
          h("tr", {}, ["Job", "Kind", "Status", "Progress", "Submitted", "Updated"].map((t) => h("th", { scope: "col" }, t))),
        ),
        tbody,
      ),
    ),
    empty,
    h("p", {}, older),
  );

  api("/v1/kinds").then(({ data }) => {
    for (const k of data) kindSelect.append(h("option", { value: k.kind, selected: k.kind === kind }, k.kind));
  });

  function matches(state) {
    return (!kind || state.kind === kind) && (!status || state.status === status);
  }

  // The listing carries no progress: a succeeded job is done whatever the last progress event said.
  function progressOf(state) {
    return state.status === "succeeded" ? 1 : state.progress || 0;
  }

  function makeRow(state) {
    const link = h("a", { href: `/ui/jobs/${encodeURIComponent(state.job_id)}`, title: state.job_id }, state.job_id);
    const cells = {
      kind: h("td", {}, state.kind),
      status: h("td", {}, badge(state.status)),
      bar: h("progress", { max: "1", value: String(progressOf(state)), "aria-label": `progress of job ${state.job_id}` }),
      submitted: h("td", { class: "num" }, time(state.submitted_at)),
      updated: h("td", { class: "num" }, time(state.updated_at)),
    };
    const tr = h(
      "tr",
      { "data-job": state.job_id, "data-status": state.status },
      h("td", { class: "id" }, link),
      cells.kind,
      cells.status,
      h("td", { class: "progress" }, cells.bar),
      cells.submitted,
      cells.updated,
    );
    return { tr, cells, state, shown: { status: state.status, progress: progressOf(state), submitted: state.submitted_at, updated: state.updated_at } };
  }

  function paint(row) {
    const { state, cells, shown, tr } = row;
    if (shown.status !== state.status) {
      cells.status.replaceChildren(badge(state.status));
      tr.dataset.status = state.status;
      shown.status = state.status;
    }
    const progress = progressOf(state);
    if (shown.progress !== progress) { cells.bar.value = progress; shown.progress = progress; }
    if (shown.submitted !== state.submitted_at) { cells.submitted.textContent = time(state.submitted_at); shown.submitted = state.submitted_at; }
    if (shown.updated !== state.updated_at) { cells.updated.textContent = time(state.updated_at); shown.updated = state.updated_at; }
    tr.classList.toggle("filtered-out", !matches(state));
  }

  function addRows(states, where) {
    const fragment = document.createDocumentFragment();
    for (const state of states) {
      if (rows.has(state.job_id)) continue;
      const row = makeRow(state);
      rows.set(state.job_id, row);
      fragment.append(row.tr);
    }
    if (where === "top") tbody.prepend(fragment);
    else tbody.append(fragment);
  }

  function trim() {
    const limit = Math.max(MAX_ROWS, loadedRows);
    while (rows.size > limit) {
      const last = tbody.lastElementChild;
      rows.delete(last.dataset.job);
      drop(last.dataset.job);
      last.remove();
    }
  }

  function paused() {
    const table = document.getElementById("jobs-table");
    return pointerInTable || window.scrollY > 4 || (table && table.contains(document.activeElement));
  }

  /** Put waiting jobs on top, oldest first, ROWS_PER_FRAME at a time (the next frame takes the rest). */
  function release(all = false) {
    const ready = [...waiting.values()].filter(matches);
    const skipped = ready.slice(0, Math.max(0, ready.length - Math.max(MAX_ROWS, loadedRows))); // would be trimmed
    for (const state of skipped) { waiting.delete(state.job_id); drop(state.job_id); }
    const batch = ready.slice(skipped.length, all ? undefined : skipped.length + ROWS_PER_FRAME);
    for (const state of batch) waiting.delete(state.job_id);
    addRows(batch.reverse(), "top"); // newest first
    if (!all && ready.length > skipped.length + batch.length) schedule();
  }

  function drop(jobId) {
    dropped.add(jobId);
    if (dropped.size > MAX_WAITING) dropped.delete(dropped.values().next().value);
  }

  function schedule() {
    if (!frame) frame = requestAnimationFrame(flush);
  }

  function flush() {
    frame = 0;
    const started = performance.now();
    const changed = new Set();
    for (const event of pending.splice(0)) {
      const row = rows.get(event.job_id);
      const state = row ? row.state : waiting.get(event.job_id);
      if (state) {
        if (event.type === "queued" && !state.submitted_at) {
          state.submitted_at = event.ts; // the API's queued can land after the worker's running
          if (row) changed.add(row);
        }
        if (event.seq <= state.seq) continue; // a duplicate or older event
        state.seq = event.seq;
        state.status = statusOf(event.type);
        if (event.type === "progress") state.progress = event.data.progress;
        state.updated_at = event.ts;
        if (row) changed.add(row);
        continue;
      }
      if (dropped.has(event.job_id)) continue;
      const created = {
        job_id: event.job_id,
        kind: event.kind,
        status: statusOf(event.type),
        progress: event.type === "progress" ? event.data.progress : 0,
        submitted_at: event.type === "queued" ? event.ts : null,
        updated_at: event.ts,
        seq: event.seq,
      };
      waiting.set(created.job_id, created);
      if (waiting.size > MAX_WAITING) { const oldest = waiting.keys().next().value; waiting.delete(oldest); drop(oldest); }
    }
    for (const row of changed) paint(row);
    if (waiting.size && !paused()) release();
    const held = waiting.size ? [...waiting.values()].filter(matches).length : 0;
    showNew.textContent = held ? `Show ${held} new job${held === 1 ? "" : "s"}` : "";
    showNew.hidden = !held;
    trim();
    empty.hidden = rows.size > 0;
    stats.frames += 1;
    stats.rows = rows.size;
    stats.maxFrameWorkMs = Math.max(stats.maxFrameWorkMs, performance.now() - started);
  }

  function onEvent(event) {
    stats.events += 1;
    pending.push(event);
    schedule();
  }
  const onScroll = () => { if (waiting.size) schedule(); };
  window.addEventListener("scroll", onScroll, { passive: true });

  async function loadPage() {
    const query = new URLSearchParams({ limit: String(PAGE) });
    if (kind) query.set("kind", kind);
    if (status) query.set("status", status);
    if (cursor) query.set("cursor", cursor);
    older.disabled = true;
    try {
      const { data } = await api(`/v1/jobs?${query}`);
      addRows(data.jobs.map((j) => ({ ...j, seq: -1 })), "bottom");
      loadedRows += data.jobs.length;
      cursor = data.next_cursor;
      older.hidden = !cursor;
      empty.hidden = rows.size > 0;
    } catch (error) {
      toast(error.message, "error");
    } finally {
      older.disabled = false;
    }
  }

  // The list came from the store before the stream opened: a job that ended in between sends no
  // more events, so once the stream is live, unfinished listed rows ask for their current state.
  async function refreshUnfinished() {
    const open = [...rows.values()].filter((r) => r.state.seq === -1 && !FINISHED.has(r.state.status));
    for (const row of open.slice(0, REFRESH_MAX)) {
      try {
        const { data } = await api(`/v1/jobs/${encodeURIComponent(row.state.job_id)}`);
        if (row.state.seq !== -1 || data.status === row.state.status) continue; // the stream got there first
        row.state.status = data.status;
        row.state.progress = data.progress ?? row.state.progress;
        row.state.updated_at = data.finished_at || data.started_at || row.state.updated_at;
        paint(row);
      } catch {
        // the row stays as listed; its next event (if any) updates it
      }
    }
  }

  loadPage().then(() => {
    performance.mark("jobs-listed");
    stream = follow("/v1/events", kind ? { kind } : {}, {
      onEvent,
      onState: (s) => {
        if (s === "live") {
          if (!performance.getEntriesByName("jobs-live").length) performance.mark("jobs-live");
          refreshUnfinished(); // on every (re)open: events sent while the stream was down are not replayed
        }
        liveState.textContent = s === "live" ? "● live" : s;
        liveState.dataset.state = s;
      },
    });
  });

  return () => {
    window.removeEventListener("scroll", onScroll);
    if (stream) stream.close();
    if (frame) cancelAnimationFrame(frame);
  };
}
