// Models: download from the Hub with live progress, the local cache, memory
// estimates before loading, load, unload and delete.

import { api, listAll } from "../api.js";
import { OperationList } from "../operations.js";
import { onEvent, refreshContext, refreshHealth } from "../store.js";
import { badge, busy, confirmDialog, emptyState, field, fill, formatBytes, formatNumber, h, toast } from "../ui.js";

const operations = new OperationList(["model_download"], () => refresh());
let table;
let loadPanel;

function downloadForm() {
  const form = h(
    "form",
    { class: "grid-form", "aria-label": "Download a model" },
    field("Hub repository", h("input", { name: "repo_id", required: true, placeholder: "HuggingFaceTB/SmolLM2-135M-Instruct", autocomplete: "off", spellcheck: "false" })),
    field("Revision", h("input", { name: "revision", placeholder: "main", autocomplete: "off" })),
    field("Format", h("select", { name: "format" }, h("option", { value: "" }, "safetensors, else PyTorch"), h("option", { value: "safetensors" }, "safetensors"), h("option", { value: "pytorch" }, "pytorch"))),
    field("Hub token (optional)", h("input", { name: "token", type: "password", autocomplete: "off" })),
    h("div", { class: "row end" }, h("button", { class: "primary", type: "submit" }, "Download")),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const data = Object.fromEntries(new FormData(form));
    const body = { repo_id: data.repo_id.trim() };
    for (const key of ["revision", "format", "token"]) if (data[key]) body[key] = data[key].trim();
    const operation = await busy(form.querySelector("button[type=submit]"), () => api.post("/models/download", body), "Download");
    if (operation) {
      operations.track(operation);
      form.reset();
    }
  });
  return form;
}

async function refresh() {
  let models;
  try {
    models = await listAll("/models");
  } catch (err) {
    fill(table, h("p", { class: "error-text" }, `Could not list models: ${err.message}`));
    return;
  }
  if (!models.length) {
    fill(table, emptyState("No cached models", h("p", {}, "Download one from the Hugging Face Hub above.")));
    return;
  }
  fill(
    table,
    h("table", { class: "data" },
      h("caption", { class: "sr-only" }, "Cached models"),
      h("thead", {}, h("tr", {}, ["Model", "State", "Format", "Parameters", "Size", "Actions"].map((c) => h("th", { scope: "col" }, c)))),
      h("tbody", {}, models.map(modelRow))),
  );
}

function modelRow(model) {
  // The served model keeps its Load… button: reloading it with another dtype or
  // quantization is a common reason to come here.
  const load = h("button", { class: "secondary small", "aria-label": `Load ${model.id}`, disabled: model.state !== "ready", onclick: () => openLoadPanel(model) }, model.loaded ? "Reload…" : "Load…");
  const unload = h("button", {
    class: "secondary small", "aria-label": `Unload ${model.id}`,
    onclick: async (event) => {
      const result = await busy(event.currentTarget, () => api.post("/models/unload"), "Unload");
      if (result) {
        toast(`Unloaded; resident memory ${formatBytes(result.rss_before_bytes)} → ${formatBytes(result.rss_after_bytes)}.`, { kind: "success" });
        refresh();
        refreshHealth();
        refreshContext(); // unloading detaches the SAE
      }
    },
  }, "Unload");
  const remove = h("button", {
    class: "danger small", "aria-label": `Delete ${model.id}`, disabled: model.loaded,
    title: model.loaded ? "Unload it before deleting" : null,
    onclick: async (event) => {
      if (!(await confirmDialog(`Delete ${model.id}?`, `This removes ${formatBytes(model.size_bytes)} of files from the cache.`))) return;
      const result = await busy(event.currentTarget, () => api.del(`/models/${model.id}`), "Delete");
      if (result) {
        toast(`Deleted ${model.id}; freed ${formatBytes(result.freed_bytes)}.`, { kind: "success" });
        refresh();
      }
    },
  }, "Delete");
  return h("tr", { dataset: { modelId: model.id } },
    h("td", { class: "mono" }, model.id, model.repo_id ? null : h("span", { class: "muted" }, " (built-in)")),
    h("td", {}, badge(model.state), " ", model.loaded ? badge("served", "active") : null),
    h("td", { class: "mono" }, model.format),
    h("td", { class: "mono" }, formatNumber(model.parameter_count)),
    h("td", { class: "mono" }, model.size_bytes ? formatBytes(model.size_bytes) : "–"),
    h("td", { class: "actions" }, load, model.loaded ? unload : null, remove),
  );
}

function openLoadPanel(model) {
  const select = (name, label, options) =>
    field(label, h("select", { name }, options.map(([value, text]) => h("option", { value }, text))));
  const estimate = h("div", { class: "estimate mono", "aria-live": "polite" }, "Estimating…");
  const overcommit = h("label", { class: "check", hidden: true }, h("input", { type: "checkbox", name: "allow_overcommit" }), " Load even though it may not fit");
  const submit = h("button", { class: "primary", type: "submit" }, "Load");
  const form = h("form", { class: "grid-form", "aria-label": `Load ${model.id}` },
    select("dtype", "Dtype", [["", "server default"], ["float32", "float32"], ["bfloat16", "bfloat16"], ["float16", "float16"]]),
    select("quantization", "Quantization", [["", "server default"], ["auto", "auto (fastest for the device)"], ["none", "none"], ["int4_weight", "4-bit weight-only (CPU)"], ["int8_weight", "int8 weight-only (CPU)"], ["int8_dynamic", "int8 dynamic (CPU)"], ["bnb_8bit", "bitsandbytes 8-bit"], ["bnb_4bit", "bitsandbytes 4-bit"]]),
    select("device", "Device", [["", "server default"], ["auto", "auto"], ["cpu", "cpu"], ["cuda", "cuda"]]),
    field("Context tokens (for the KV-cache estimate)", h("input", { name: "context_tokens", type: "number", min: "1", step: "1", placeholder: "the model's own" })),
    estimate, overcommit,
    h("div", { class: "row end" }, h("button", { class: "secondary", type: "button", onclick: () => loadPanel.replaceChildren() }, "Cancel"), submit),
  );
  const spec = () => {
    const data = Object.fromEntries(new FormData(form));
    const body = {};
    if (data.quantization) body.quantization = data.quantization;
    if (data.dtype) body.dtype = data.dtype;
    if (data.device) body.device = data.device;
    if (data.context_tokens) body.context_tokens = Number(data.context_tokens);
    return body;
  };
  const runEstimate = async () => {
    estimate.textContent = "Estimating…";
    try {
      const e = await api.post(`/models/${model.id}/estimate`, spec());
      fill(estimate,
        h("span", { class: e.fits ? "ok" : "bad" }, e.fits ? "Fits: " : "Does not fit: "),
        `needs ${formatBytes(e.total_bytes)} (weights ${formatBytes(e.weights_bytes)}, KV cache ${formatBytes(e.kv_cache_bytes)}, runtime ${formatBytes(e.overhead_bytes)}) of ${formatBytes(e.available_bytes)} free on ${e.device}`);
      overcommit.hidden = e.fits;
    } catch (err) {
      fill(estimate, h("span", { class: "bad" }, `No estimate: ${err.message}`));
    }
  };
  form.addEventListener("change", runEstimate);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = { ...spec(), allow_overcommit: form.allow_overcommit.checked };
    submit.textContent = "Loading…";
    const result = await busy(submit, () => api.post(`/models/${model.id}/load`, body), "Load");
    submit.textContent = "Load";
    if (result) {
      toast(`Loaded ${result.model.id} in ${result.load_s.toFixed(1)} s.${result.warning ? ` ${result.warning}` : ""}`, { kind: "success" });
      loadPanel.replaceChildren();
      refresh();
      refreshHealth();
      refreshContext(); // a new model starts with no SAE attached
    }
  });
  fill(loadPanel, h("div", { class: "card" }, h("h3", {}, "Load ", h("span", { class: "mono" }, model.id)), form));
  runEstimate();
  form.querySelector("select").focus();
}

export default {
  id: "models",
  title: "Models",
  mount(panel) {
    table = h("div", { "aria-live": "polite" });
    loadPanel = h("div");
    panel.append(
      h("div", { class: "card" }, h("h2", {}, "Download a model"), downloadForm(), operations.el),
      h("div", { class: "card" }, h("h2", {}, "Cached models"), table, loadPanel),
    );
    // Another client loaded, unloaded or downloaded a model.
    const stale = new Set(["model_state_changed", "operation_finished", "resync"]);
    onEvent((event) => panel.hidden || !stale.has(event.type) || refresh());
  },
  show() {
    refresh();
    operations.resume().catch(() => {});
  },
};
