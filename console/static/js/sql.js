// SQL for SQL tenants: one read-only statement over POST /v1/sql, a result table and a CSV download.
import { api } from "./api.js";
import { h } from "./dom.js";

const EXAMPLE = "SELECT kind, status, count() AS jobs\nFROM jobs\nGROUP BY kind, status\nORDER BY jobs DESC";

function csvCell(value) {
  if (value === null || value === undefined) return "";
  const text = typeof value === "object" ? JSON.stringify(value) : String(value);
  return /[",\n\r]/.test(text) ? `"${text.replaceAll('"', '""')}"` : text;
}

export function toCsv(result) {
  return [result.columns, ...result.rows].map((row) => row.map(csvCell).join(",")).join("\n") + "\n";
}

export function render(main) {
  const query = h("textarea", { id: "sql", rows: "6", spellcheck: "false", class: "mono" }, sessionStorage.getItem("jobstream.sql") || EXAMPLE);
  const run = h("button", { type: "submit", id: "run-sql" }, "Run");
  const download = h("a", { id: "download-csv", class: "button", hidden: true, download: "result.csv" }, "Download CSV");
  const status = h("p", { id: "sql-status", "aria-live": "polite", class: "muted" });
  const table = h("table", { class: "data", id: "sql-result" });
  let url = null;

  async function submit(event) {
    event.preventDefault();
    sessionStorage.setItem("jobstream.sql", query.value);
    run.disabled = true;
    status.textContent = "Running…";
    status.classList.remove("error");
    const started = performance.now();
    try {
      const { data } = await api("/v1/sql", { method: "POST", body: { sql: query.value } });
      table.replaceChildren(
        h("thead", {}, h("tr", {}, data.columns.map((c, i) => h("th", { scope: "col", title: data.types[i] }, c)))),
        h("tbody", {}, data.rows.map((row) => h("tr", {}, row.map((v) => h("td", {}, v === null ? "NULL" : typeof v === "object" ? JSON.stringify(v) : String(v)))))),
      );
      status.textContent = `${data.row_count} rows in ${((performance.now() - started) / 1000).toFixed(2)} s`;
      if (url) URL.revokeObjectURL(url);
      url = URL.createObjectURL(new Blob([toCsv(data)], { type: "text/csv" }));
      download.href = url;
      download.hidden = false;
    } catch (error) {
      table.replaceChildren();
      download.hidden = true;
      status.textContent = error.status === 403 ? `${error.message} (SQL is for the tenants in JOBSTREAM_SQL_TENANTS)` : error.message;
      status.classList.add("error");
    } finally {
      run.disabled = false;
    }
  }
  query.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) submit(e);
  });

  main.append(
    h("h1", {}, "SQL"),
    h("p", { class: "muted" }, "One read-only statement over every tenant's data (", h("code", {}, "jobs"), ", ", h("code", {}, "job_outcomes"), ", ", h("code", {}, "job_events"), ", …). Ctrl+Enter runs it."),
    h("form", { class: "stack", onsubmit: submit },
      h("label", { for: "sql" }, "SQL query"), query, h("p", { class: "actions" }, run, download)),
    status,
    h("div", { class: "table-wrap" }, table),
  );
  return () => url && URL.revokeObjectURL(url);
}
