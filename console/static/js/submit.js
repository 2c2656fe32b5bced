// Submit: pick a kind from /v1/kinds; a form generated from its params' JSON Schema; POST /v1/jobs;
// then the job's live page. A 422 puts each problem next to the field it names.
import { api, ApiError } from "./api.js";
import { h, json, toast } from "./dom.js";
import { paramsKey } from "./job.js";

/** The schema a property really has: $ref resolved, `X | None` turned into X (and optional). */
function resolve(schema, root) {
  let nullable = false;
  if (schema.anyOf) {
    const others = schema.anyOf.filter((s) => s.type !== "null");
    nullable = others.length < schema.anyOf.length;
    if (others.length === 1) schema = { ...schema, ...others[0], anyOf: undefined };
  }
  if (schema.$ref) {
    const name = schema.$ref.split("/").pop();
    schema = { ...(root.$defs || {})[name], ...schema, $ref: undefined };
  }
  return { schema, nullable };
}

function numbers(text) {
  return text.split(/[\s,;]+/).filter(Boolean).map(Number);
}

/** One control per property; returns { element, read() -> value|undefined, path }. */
function control(name, raw, root, path, required, fields) {
  const { schema } = resolve(raw, root);
  const id = `param-${path.join("-")}`;
  const label = schema.title || name;
  const hint = schema.description || "";
  const error = h("span", { class: "field-error", id: `${id}-error`, "aria-live": "polite" });
  const describedBy = `${id}-error${hint ? ` ${id}-hint` : ""}`;
  const hintEl = hint ? h("small", { id: `${id}-hint`, class: "muted" }, hint) : null;
  let input, read;
  const type = schema.type;

  if (type === "object" && schema.properties) {
    const inner = Object.entries(schema.properties).map(([k, s]) =>
      control(k, s, root, [...path, k], (schema.required || []).includes(k), fields),
    );
    const include = required ? null : h("input", { type: "checkbox", id: `${id}-include` });
    const fieldset = h(
      "fieldset",
      { disabled: !required },
      h("legend", {}, label),
      inner.map((c) => c.element),
    );
    if (include) include.addEventListener("change", () => { fieldset.disabled = !include.checked; });
    const element = h(
      "div",
      { class: "field nested" },
      include ? h("label", { for: `${id}-include`, class: "inline" }, include, ` Use ${label}`) : null,
      fieldset,
      error,
    );
    fields.push({ path, error });
    return {
      element,
      read() {
        if (include && !include.checked) return undefined;
        const value = {};
        for (const [i, [k]] of Object.entries(schema.properties).entries()) {
          const v = inner[i].read();
          if (v !== undefined) value[k] = v;
        }
        return value;
      },
    };
  }
  if (type === "boolean") {
    input = h("input", { type: "checkbox", id, checked: schema.default === true, "aria-describedby": describedBy });
    read = () => (input.checked === (schema.default ?? false) && !required ? undefined : input.checked);
    fields.push({ path, error });
    return { element: h("div", { class: "field" }, h("label", { for: id, class: "inline" }, input, ` ${label}`), hintEl, error), read };
  }
  if (type === "integer" || type === "number") {
    input = h("input", {
      type: "number", id, step: type === "integer" ? "1" : "any", min: schema.minimum, max: schema.maximum,
      placeholder: schema.default ?? "", required, "aria-describedby": describedBy,
    });
    read = () => (input.value === "" ? undefined : Number(input.value));
  } else if (type === "string" && schema.enum) {
    input = h("select", { id, required, "aria-describedby": describedBy },
      required ? null : h("option", { value: "" }, "(default)"), schema.enum.map((v) => h("option", { value: v }, v)));
    read = () => (input.value === "" ? undefined : input.value);
  } else if (type === "string") {
    input = h("input", { type: "text", id, placeholder: schema.default ?? "", required, "aria-describedby": describedBy });
    read = () => (input.value === "" ? undefined : input.value);
  } else if (type === "array" && resolve(schema.items || {}, root).schema.type === "number") {
    input = h("input", { type: "text", id, inputmode: "decimal", placeholder: "1, 2, 3.5", required, "aria-describedby": describedBy });
    read = () => (input.value.trim() === "" ? undefined : numbers(input.value));
  } else if (type === "array" && (schema.items || {}).type === "array") {
    input = h("textarea", { id, rows: "3", placeholder: "one row per line: 1, 2\n3, 4", required, "aria-describedby": describedBy });
    read = () => (input.value.trim() === "" ? undefined : input.value.trim().split("\n").map(numbers));
  } else {
    input = h("textarea", { id, rows: "3", placeholder: "JSON", required, "aria-describedby": describedBy });
    read = () => (input.value.trim() === "" ? undefined : JSON.parse(input.value));
  }
  fields.push({ path, error });
  return {
    element: h("div", { class: "field" }, h("label", { for: id }, label, required ? h("span", { "aria-hidden": "true" }, " *") : null), input, hintEl, error),
    read,
  };
}

export function render(main, { params, navigate }) {
  const kindSelect = h("select", { id: "kind", name: "kind", required: true });
  const description = h("p", { class: "muted", id: "kind-description" });
  const formFields = h("div", { id: "params-form" });
  const asJson = h("input", { type: "checkbox", id: "as-json" });
  const jsonBox = h("textarea", { id: "params-json", rows: "8", hidden: true, "aria-label": "Params as JSON", spellcheck: "false" });
  const priority = h("input", { type: "number", id: "priority", step: "1", placeholder: "0" });
  const summary = h("div", { id: "submit-errors", role: "alert" });
  const button = h("button", { type: "submit" }, "Submit job");
  let kinds = [], current = null, fields = [];

  function build() {
    const kind = kinds.find((k) => k.kind === kindSelect.value);
    if (!kind) return;
    description.textContent = kind.description || "";
    const schema = kind.params;
    fields = [];
    const controls = Object.entries(schema.properties || {}).map(([name, s]) =>
      control(name, s, schema, [name], (schema.required || []).includes(name), fields),
    );
    current = () => {
      const value = {};
      controls.forEach((c, i) => {
        const v = c.read();
        if (v !== undefined) value[Object.keys(schema.properties)[i]] = v;
      });
      return value;
    };
    formFields.replaceChildren(...controls.map((c) => c.element));
    summary.replaceChildren();
  }

  asJson.addEventListener("change", () => {
    if (asJson.checked) {
      try { jsonBox.value = json(current ? current() : {}); } catch { jsonBox.value = "{}"; }
    }
    jsonBox.hidden = !asJson.checked;
    formFields.hidden = asJson.checked;
  });
  kindSelect.addEventListener("change", build);

  async function submit(event) {
    event.preventDefault();
    for (const f of fields) f.error.textContent = "";
    summary.replaceChildren();
    let values;
    try {
      values = asJson.checked ? JSON.parse(jsonBox.value || "{}") : current();
    } catch (error) {
      summary.replaceChildren(h("p", { class: "error" }, `Params are not valid JSON: ${error.message}`));
      return;
    }
    const body = { kind: kindSelect.value, params: values };
    if (priority.value !== "") body.priority = Number(priority.value);
    button.disabled = true;
    try {
      const { data } = await api("/v1/jobs", { method: "POST", body });
      sessionStorage.setItem(paramsKey(data.job_id), JSON.stringify(values));
      navigate(`/ui/jobs/${encodeURIComponent(data.job_id)}`);
    } catch (error) {
      if (!(error instanceof ApiError)) throw error;
      const problems = error.problem.errors || [];
      const items = problems.map((p) => {
        const path = String(p.field || "").replace(/^(body\.)?(params\.)?/, "").split(".");
        const field = fields
          .filter((f) => f.path.every((part, i) => path[i] === part))
          .sort((a, b) => b.path.length - a.path.length)[0];
        if (field) field.error.textContent = p.reason;
        return h("li", {}, `${p.field || "request"}: ${p.reason}`);
      });
      summary.replaceChildren(h("p", { class: "error" }, error.message), items.length ? h("ul", {}, items) : null);
    } finally {
      button.disabled = false;
    }
  }

  main.append(
    h("h1", {}, "Submit a job"),
    h(
      "form",
      { id: "submit-form", class: "stack", onsubmit: submit, novalidate: true },
      h("div", { class: "field" }, h("label", { for: "kind" }, "Kind"), kindSelect, description),
      h("fieldset", {}, h("legend", {}, "Params"), formFields, jsonBox,
        h("label", { for: "as-json", class: "inline" }, asJson, " Write params as JSON")),
      h("div", { class: "field" }, h("label", { for: "priority" }, "Priority"), priority,
        h("small", { class: "muted" }, "Higher runs first; blank for the default.")),
      summary,
      h("p", {}, button),
    ),
  );

  api("/v1/kinds").then(({ data }) => {
    kinds = data;
    kindSelect.replaceChildren(...data.map((k) => h("option", { value: k.kind }, `${k.kind} (v${k.version})`)));
    const wanted = params.get("kind");
    if (wanted && data.some((k) => k.kind === wanted)) kindSelect.value = wanted;
    build();
  }).catch((error) => toast(error.message, "error"));
}
