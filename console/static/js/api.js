// The console's only way to the server: the public HTTP API, with the API key if the server wants one.
// The key lives in sessionStorage (this tab only), never in a URL; streams use short-lived stream tokens.

const KEY = "jobstream.apiKey";
let asking = null;

export class ApiError extends Error {
  constructor(status, problem) {
    super(problem && problem.detail ? `${problem.title}: ${problem.detail}` : `HTTP ${status}`);
    this.status = status;
    this.problem = problem || {};
  }
}

export function hasKey() {
  return sessionStorage.getItem(KEY) !== null;
}

export function forgetKey() {
  sessionStorage.removeItem(KEY);
}

/** Ask for the key once (one dialog however many requests got 401). */
export function askForKey() {
  if (asking) return asking;
  const dialog = document.getElementById("key-dialog");
  const input = document.getElementById("key-input");
  asking = new Promise((resolve) => {
    dialog.addEventListener(
      "close",
      () => {
        const key = input.value.trim();
        input.value = "";
        if (key) sessionStorage.setItem(KEY, key);
        asking = null;
        document.getElementById("forget-key").hidden = !hasKey();
        resolve(Boolean(key));
      },
      { once: true },
    );
    dialog.showModal();
    input.focus();
  });
  return asking;
}

/** fetch with the key; JSON in and out; a problem+json answer throws ApiError. 401 asks for the key and retries. */
export async function api(path, { method = "GET", body, retry = true } = {}) {
  const headers = { Accept: "application/json" };
  const key = sessionStorage.getItem(KEY);
  if (key) headers.Authorization = `Bearer ${key}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const answer = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  if (answer.status === 401 && retry) {
    if (key) forgetKey(); // the stored key was refused: ask again
    if (await askForKey()) return api(path, { method, body, retry: false });
  }
  const type = answer.headers.get("content-type") || "";
  const data = type.includes("json") ? await answer.json() : await answer.text();
  if (!answer.ok) throw new ApiError(answer.status, typeof data === "object" ? data : { title: `HTTP ${answer.status}`, detail: data });
  return { status: answer.status, data, headers: answer.headers };
}

const TYPES = ["queued", "running", "progress", "retrying", "succeeded", "failed", "cancelled"];

/**
 * Follow an SSE stream (`/v1/events` or a job's `/v1/jobs/{id}/events`) with stream tokens.
 * EventSource reconnects by itself (with Last-Event-ID) while the server answers 200; an HTTP error
 * (401: the token expired) closes it for good, so we get a new token and reopen at the last id.
 * Returns { close() }.
 */
export function follow(path, query, { jobId = null, onEvent, onReset = () => {}, onState = () => {} }) {
  let source = null, lastId = null, closed = false, refusals = 0;
  const terminal = new Set(["succeeded", "failed", "cancelled"]);
  async function open() {
    if (closed) return;
    let token;
    try {
      token = (await api("/v1/stream-tokens", { method: "POST", body: jobId ? { job_id: jobId } : {} })).data.token;
    } catch (error) {
      onState("error", error);
      if (!closed) setTimeout(open, 2000);
      return;
    }
    const params = new URLSearchParams(query);
    params.set("token", token);
    if (lastId !== null) params.set("last_event_id", lastId);
    source = new EventSource(`${path}?${params}`);
    source.onopen = () => { refusals = 0; onState("live"); };
    for (const type of TYPES) {
      source.addEventListener(type, (e) => {
        if (e.lastEventId) lastId = e.lastEventId;
        onEvent(JSON.parse(e.data), type);
        if (jobId && terminal.has(type)) { closed = true; source.close(); onState("ended"); }
      });
    }
    source.addEventListener("reset", () => onReset());
    source.onerror = () => {
      if (closed) return;
      onState("reconnecting");
      if (source.readyState === EventSource.CLOSED && ++refusals <= 5) setTimeout(open, 500 * refusals);
    };
  }
  open();
  return { close() { closed = true; if (source) source.close(); } };
}
