// Analytics: GET /v1/stats/series as uPlot charts (throughput, end-to-end latency quantiles,
// failure rate, batch size), refreshed while the page is open.
import { api } from "./api.js";
import { h, toast } from "./dom.js";

const WINDOWS = [["15m", "1m"], ["1h", "1m"], ["6h", "5m"], ["24h", "15m"], ["7d", "1h"]];
const REFRESH_MS = 15000;
const COLORS = ["#2563eb", "#d97706", "#dc2626", "#059669"];

const CHARTS = [
  { id: "throughput", title: "Throughput (jobs/s)", series: (d) => [["finished/s", d.throughput_per_s], ["submitted/s", d.submitted.map((n) => n / d.step_s)]] },
  { id: "latency", title: "End-to-end latency (s)", series: (d) => [["p50", d.latency_s.p50], ["p90", d.latency_s.p90], ["p99", d.latency_s.p99]] },
  { id: "failures", title: "Failure rate", series: (d) => [["failed / finished", d.failure_rate]] },
  { id: "batches", title: "Batch size", series: (d) => [["avg", d.batch_size.avg], ["p50", d.batch_size.p50], ["max", d.batch_size.max]] },
];

export function render(main) {
  const since = h("select", { id: "since" }, WINDOWS.map(([w]) => h("option", { value: w, selected: w === "1h" }, `last ${w}`)));
  const step = h("select", { id: "step" }, h("option", { value: "" }, "auto"), ["1m", "5m", "15m", "1h"].map((s) => h("option", { value: s }, s)));
  const kind = h("select", { id: "kind" }, h("option", { value: "" }, "every kind"));
  const totals = h("p", { id: "totals", class: "muted", "aria-live": "polite" });
  const grid = h("div", { class: "charts" });
  const boxes = Object.fromEntries(CHARTS.map((c) => [c.id, h("div", { class: "chart", id: `chart-${c.id}`, role: "img", "aria-label": c.title })]));
  for (const c of CHARTS) grid.append(h("section", { class: "card" }, h("h2", {}, c.title), boxes[c.id]));
  const plots = {};
  let uPlot = null, timer = null, gone = false;

  main.append(
    h("h1", {}, "Analytics"),
    h("form", { class: "filters", "aria-label": "Chart window", onsubmit: (e) => e.preventDefault() },
      h("label", { for: "since" }, "Window"), since, h("label", { for: "step" }, "Step"), step,
      h("label", { for: "kind" }, "Kind"), kind),
    totals,
    grid,
  );

  api("/v1/kinds").then(({ data }) => data.forEach((k) => kind.append(h("option", { value: k.kind }, k.kind))));

  function draw(data) {
    const width = Math.max(280, grid.clientWidth / (grid.clientWidth > 900 ? 2 : 1) - 40);
    for (const c of CHARTS) {
      const series = c.series(data);
      const columns = [data.t, ...series.map(([, values]) => values)];
      if (plots[c.id] && plots[c.id].series.length === series.length + 1) {
        plots[c.id].setData(columns);
        plots[c.id].setSize({ width, height: 220 });
        continue;
      }
      if (plots[c.id]) plots[c.id].destroy();
      plots[c.id] = new uPlot(
        {
          width, height: 220,
          series: [{}, ...series.map(([label], i) => ({ label, stroke: COLORS[i], width: 2, points: { show: true, size: 5, fill: COLORS[i] } }))],
          axes: [{}, { size: 60 }],
          scales: { x: { time: true } },
        },
        columns, boxes[c.id],
      );
    }
  }

  async function refresh() {
    if (gone) return;
    const windowStep = WINDOWS.find(([w]) => w === since.value)[1];
    const query = new URLSearchParams({ since: since.value, step: step.value || windowStep });
    if (kind.value) query.set("kind", kind.value);
    try {
      const { data } = await api(`/v1/stats/series?${query}`);
      const finished = data.finished.reduce((a, b) => a + b, 0);
      const failed = data.failed.reduce((a, b) => a + b, 0);
      totals.textContent = `${data.submitted.reduce((a, b) => a + b, 0)} submitted, ${finished} finished, ${failed} failed since ${new Date(data.since).toLocaleString()} (buckets of ${data.step_s / 60} min)`;
      if (uPlot) draw(data);
    } catch (error) {
      toast(error.message, "error");
    }
    clearTimeout(timer);
    timer = setTimeout(refresh, REFRESH_MS);
  }

  for (const control of [since, step, kind]) control.addEventListener("change", refresh);
  const onResize = () => refresh();
  window.addEventListener("resize", onResize);

  import("/ui/vendor/uplot/uPlot.esm.js")
    .then((module) => { uPlot = module.default; })
    .catch(() => grid.prepend(h("p", { class: "error" }, "Charts need the uPlot library: run `make console` on the server.")))
    .finally(refresh);

  return () => { gone = true; clearTimeout(timer); window.removeEventListener("resize", onResize); };
}
