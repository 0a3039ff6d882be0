// Training: a start form fed by saved templates, corpus upload, the runs with
// stop/resume/delete, and live loss, L0, FVU and dead-feature charts of one run.

import { api, openSocket } from "../api.js";
import { onEvent } from "../store.js";
import { badge, busy, confirmDialog, emptyState, field, fill, formatBytes, formatNumber, h, lineChart, progressBar, toast } from "../ui.js";

const POLL_MS = 3000;
// Form fields that map one to one onto TrainingConfig numbers.
const NUMBER_FIELDS = ["d_sae", "expansion_factor", "k", "l1_coefficient", "l0_coefficient", "learning_rate", "batch_size_tokens", "total_tokens", "seed", "context_size", "checkpoint_every_steps", "warmup_steps"];
const SITES = [["resid_post", "residual stream after the layer"], ["resid_pre", "residual stream before the layer"], ["mlp_in", "MLP input"], ["mlp_out", "MLP output"]];

let form;
let templateSelect;
let corpusSelect;
let runsEl;
let chartsEl;
let watched = null; // {id, socket, metrics}
let pollTimer = null;
let templates = [];
let shownRuns = null; // the runs as last rendered, to skip identical refreshes

function numberInput(name, label, attrs = {}) {
  return field(label, h("input", { name, type: "number", step: "any", min: "0", class: "mono", ...attrs }));
}

function buildForm() {
  templateSelect = h("select", { name: "template", "aria-label": "Template" });
  corpusSelect = h("select", { name: "corpus_id", "aria-label": "Uploaded corpus" });
  const upload = h("input", { type: "file", accept: ".txt,.jsonl", "aria-label": "Corpus file to upload (.txt or .jsonl)" });
  const templateFile = h("input", { type: "file", accept: ".json", "aria-label": "Template JSON file to import" });
  form = h("form", { class: "training-form", "aria-label": "Start a training run" },
    h("fieldset", {}, h("legend", {}, "Template"),
      h("div", { class: "row wrap" }, templateSelect,
        h("button", { type: "button", class: "secondary small", onclick: applyTemplate }, "Use template"),
        h("button", { type: "button", class: "secondary small", onclick: saveTemplate }, "Save form as template"),
        h("button", { type: "button", class: "secondary small", onclick: toggleFavourite }, "Toggle favourite"),
        h("button", { type: "button", class: "secondary small", onclick: exportTemplate }, "Export"),
        h("button", { type: "button", class: "danger small", onclick: deleteTemplate }, "Delete template")),
      h("div", { class: "row wrap" }, templateFile, h("button", { type: "button", class: "secondary small", onclick: (e) => importTemplate(e.currentTarget, templateFile) }, "Import template"))),
    h("fieldset", {}, h("legend", {}, "Corpus"),
      h("div", { class: "row wrap" }, field("Uploaded corpus", corpusSelect), upload,
        h("button", { type: "button", class: "secondary small", onclick: (e) => uploadCorpus(e.currentTarget, upload) }, "Upload")),
      field("…or a file or folder under the server's training data root", h("input", { name: "corpus_path", placeholder: "corpora/wiki.jsonl", autocomplete: "off", spellcheck: "false" }))),
    h("fieldset", {}, h("legend", {}, "Site and architecture"),
      h("div", { class: "grid-form" },
        field("Run name", h("input", { name: "name", placeholder: "derived from the config", autocomplete: "off" })),
        numberInput("layer", "Layer", { step: "1", required: true, value: "6" }),
        field("Site", h("select", { name: "site" }, SITES.map(([v, t]) => h("option", { value: v }, t)))),
        field("Transcoder target (optional)", h("select", { name: "site_out" }, h("option", { value: "" }, "none: an ordinary SAE"), SITES.map(([v, t]) => h("option", { value: v }, t)))),
        field("Architecture", h("select", { name: "architecture" }, ["topk", "batchtopk", "jumprelu", "standard"].map((a) => h("option", { value: a }, a)))),
        field("Normalize activations", h("select", { name: "normalize_activations" }, h("option", { value: "none" }, "none"), h("option", { value: "constant_norm" }, "constant norm"))))),
    h("fieldset", {}, h("legend", {}, "Hyperparameters (empty: the default)"),
      h("div", { class: "grid-form" },
        numberInput("d_sae", "Features (d_sae)", { step: "1" }),
        numberInput("expansion_factor", "Expansion factor", { step: "1", placeholder: "8" }),
        numberInput("k", "k (TopK)", { step: "1", placeholder: "32" }),
        numberInput("l1_coefficient", "L1 coefficient", { placeholder: "5" }),
        numberInput("l0_coefficient", "L0 coefficient", { placeholder: "1" }),
        numberInput("learning_rate", "Learning rate", { placeholder: "0.0004" }),
        numberInput("warmup_steps", "Warm-up steps", { step: "1" }),
        numberInput("batch_size_tokens", "Batch size (tokens)", { step: "1", placeholder: "4096" }),
        numberInput("total_tokens", "Total tokens", { step: "1", placeholder: "one pass over the corpus" }),
        numberInput("context_size", "Context size", { step: "1", placeholder: "128" }),
        numberInput("checkpoint_every_steps", "Checkpoint every (steps)", { step: "1", placeholder: "500" }),
        numberInput("seed", "Seed", { step: "1", placeholder: "0" }))),
    h("div", { class: "row end" }, h("button", { class: "primary", type: "submit" }, "Start training")));
  form.addEventListener("submit", startRun);
  return form;
}

function readConfig() {
  const data = Object.fromEntries(new FormData(form));
  const config = { hook_name: `blocks.${data.layer}.hook_${data.site}`, architecture: data.architecture, normalize_activations: data.normalize_activations };
  if (data.site_out) config.hook_name_out = `blocks.${data.layer}.hook_${data.site_out}`;
  for (const name of NUMBER_FIELDS) if (data[name] !== "" && data[name] !== undefined) config[name] = Number(data[name]);
  if (data.corpus_path.trim()) config.corpus = { path: data.corpus_path.trim() };
  else if (data.corpus_id) config.corpus = { corpus_id: data.corpus_id };
  return { name: data.name.trim(), config };
}

function writeConfig(config) {
  const hook = /^blocks\.(\d+)\.hook_(\w+)$/.exec(config.hook_name || "");
  if (hook) {
    form.layer.value = hook[1];
    form.site.value = hook[2];
  }
  const out = /^blocks\.\d+\.hook_(\w+)$/.exec(config.hook_name_out || "");
  form.site_out.value = out ? out[1] : "";
  form.architecture.value = config.architecture || "topk";
  form.normalize_activations.value = config.normalize_activations || "none";
  for (const name of NUMBER_FIELDS) form[name].value = config[name] ? String(config[name]) : "";
  if (config.corpus && config.corpus.corpus_id) form.corpus_id.value = config.corpus.corpus_id;
  form.corpus_path.value = config.corpus && config.corpus.path ? config.corpus.path : "";
}

async function startRun(event) {
  event.preventDefault();
  const { name, config } = readConfig();
  if (!config.corpus) {
    toast("Choose a corpus: upload a .txt or .jsonl file, or give a path under the data root.", { kind: "error" });
    corpusSelect.focus();
    return;
  }
  const body = { config };
  if (name) body.name = name;
  const result = await busy(form.querySelector("[type=submit]"), () => api.post("/training/runs", body), "Start training");
  if (result) {
    toast(`Started ${result.run.name}.`, { kind: "success" });
    await refreshRuns();
    watch(result.run.id);
  }
}

async function uploadCorpus(button, input) {
  if (!input.files.length) {
    toast("Choose a .txt or .jsonl file first.", { kind: "error" });
    return;
  }
  const file = input.files[0];
  const result = await busy(button, () => api.upload(`/training/corpora?name=${encodeURIComponent(file.name)}`, file), "Upload");
  if (result) {
    toast(`Uploaded ${result.corpus.name}: ${formatNumber(result.corpus.documents)} documents, ${formatBytes(result.corpus.size_bytes)}.`, { kind: "success" });
    input.value = "";
    await refreshCorpora();
    corpusSelect.value = result.corpus.id;
  }
}

async function refreshCorpora() {
  const { data: corpora } = await api.get("/training/corpora");
  const keep = corpusSelect.value;
  fill(corpusSelect, h("option", { value: "" }, corpora.length ? "choose…" : "none uploaded yet"),
    corpora.map((c) => h("option", { value: c.id }, `${c.name} (${formatNumber(c.documents)} docs, ${formatBytes(c.size_bytes)})`)));
  if (keep) corpusSelect.value = keep;
}

async function refreshTemplates() {
  ({ data: templates } = await api.get("/training/templates"));
  const keep = templateSelect.value;
  fill(templateSelect, h("option", { value: "" }, templates.length ? "choose…" : "no templates yet"),
    templates.map((t) => h("option", { value: t.id }, `${t.favourite ? "★ " : ""}${t.name}`)));
  if (keep) templateSelect.value = keep;
}

function chosenTemplate() {
  const template = templates.find((t) => t.id === templateSelect.value);
  if (!template) toast("Choose a template first.", { kind: "error" });
  return template;
}

function applyTemplate() {
  const template = chosenTemplate();
  if (!template) return;
  writeConfig(template.config);
  toast(`Form filled from ${template.name}.`);
}

async function saveTemplate(event) {
  const name = form.name.value.trim() || `template ${new Date().toISOString().slice(0, 16)}`;
  const { config } = readConfig();
  const result = await busy(event.currentTarget, () => api.post("/training/templates", { name, config }), "Save template");
  if (result) {
    toast(`Saved template ${result.template.name}.`, { kind: "success" });
    await refreshTemplates();
    templateSelect.value = result.template.id;
  }
}

async function toggleFavourite(event) {
  const template = chosenTemplate();
  if (!template) return;
  if (await busy(event.currentTarget, () => api.patch(`/training/templates/${template.id}`, { favourite: !template.favourite }), "Favourite")) refreshTemplates();
}

async function exportTemplate(event) {
  const template = chosenTemplate();
  if (!template) return;
  await busy(event.currentTarget, () => api.download(`/training/templates/${template.id}/export`), "Export");
}

async function importTemplate(button, input) {
  if (!input.files.length) {
    toast("Choose an exported template file first.", { kind: "error" });
    return;
  }
  const text = await input.files[0].text();
  let document;
  try {
    document = JSON.parse(text);
  } catch {
    toast("That file is not JSON.", { kind: "error", advice: "Pick a file exported from a training template." });
    return;
  }
  const result = await busy(button, () => api.post("/training/templates/import", document), "Import template");
  if (result) {
    toast(`Imported template ${result.template.name}.`, { kind: "success" });
    input.value = "";
    await refreshTemplates();
    templateSelect.value = result.template.id;
  }
}

async function deleteTemplate(event) {
  const template = chosenTemplate();
  if (!template || !(await confirmDialog(`Delete template ${template.name}?`, "Runs started from it are kept."))) return;
  if (await busy(event.currentTarget, () => api.del(`/training/templates/${template.id}`), "Delete template")) {
    toast(`Deleted template ${template.name}.`);
    templateSelect.value = "";
    refreshTemplates();
  }
}

const FINISHED = new Set(["stopped", "completed", "failed", "interrupted"]);

async function refreshRuns() {
  let runs;
  try {
    ({ data: runs } = await api.get("/training/runs?page_size=50"));
  } catch (err) {
    fill(runsEl, h("p", { class: "error-text" }, `Could not list runs: ${err.message}`));
    shownRuns = null;
    return;
  }
  // The poll re-renders only what changed, so focus and the page stay put.
  const snapshot = JSON.stringify([runs, watched && watched.id]);
  if (snapshot === shownRuns) return;
  shownRuns = snapshot;
  if (!runs.length) {
    fill(runsEl, emptyState("No training runs yet", h("p", {}, "Upload a corpus, pick a layer and start a run above. The trained SAE appears in the SAEs tab, ready to attach.")));
    return;
  }
  fill(runsEl, h("table", { class: "data" },
    h("caption", { class: "sr-only" }, "Training runs, newest first"),
    h("thead", {}, h("tr", {}, ["Run", "State", "Progress", "Loss", "L0", "FVU", "Actions"].map((c) => h("th", { scope: "col" }, c)))),
    h("tbody", {}, runs.map(runRow))));
}

function runRow(run) {
  const latest = run.latest || {};
  const fraction = run.total_steps ? run.step / run.total_steps : null;
  const running = !FINISHED.has(run.state);
  return h("tr", { dataset: { runId: run.id }, class: watched && watched.id === run.id ? "selected" : null },
    h("td", { class: "mono" }, run.name, h("div", { class: "muted small-text" }, run.config.hook_name)),
    h("td", {}, badge(run.state), h("div", { class: "muted small-text" }, run.error || run.stage || "")),
    h("td", {}, progressBar(fraction, `Progress of ${run.name}`), h("div", { class: "muted mono small-text" }, `step ${run.step} / ${run.total_steps || "?"}`)),
    h("td", { class: "mono" }, formatNumber(latest.loss)),
    h("td", { class: "mono" }, formatNumber(latest.l0)),
    h("td", { class: "mono" }, formatNumber((run.final_eval || latest).fvu)),
    h("td", { class: "actions" },
      h("button", { class: "secondary small", "aria-label": `Show charts of ${run.name}`, onclick: () => watch(run.id) }, "Charts"),
      running ? h("button", { class: "secondary small", "aria-label": `Stop ${run.name}`, onclick: (e) => runAction(e.currentTarget, run, "stop") }, "Stop") : null,
      ["stopped", "failed", "interrupted"].includes(run.state) ? h("button", { class: "secondary small", "aria-label": `Resume ${run.name}`, onclick: (e) => runAction(e.currentTarget, run, "resume") }, "Resume") : null,
      run.sae_id ? h("button", { class: "primary small", "aria-label": `Open the SAE of ${run.name}`, onclick: () => openSae(run.sae_id) }, "Open SAE") : null,
      h("button", { class: "danger small", "aria-label": `Delete ${run.name}`, disabled: running, onclick: async (e) => {
        if (!(await confirmDialog(`Delete run ${run.name}?`, "Its metrics and checkpoints go; an SAE it produced stays."))) return;
        if (await busy(e.currentTarget, () => api.del(`/training/runs/${run.id}`), "Delete run")) refreshRuns();
      } }, "Delete")));
}

async function runAction(button, run, action) {
  const result = await busy(button, () => api.post(`/training/runs/${run.id}/${action}`), action === "stop" ? "Stop" : "Resume");
  if (result) {
    toast(action === "stop" ? `Stopping ${run.name} at the next step.` : `Resumed ${run.name}.`);
    refreshRuns();
    if (action === "resume") watch(run.id);
  }
}

function openSae(saeId) {
  window.dispatchEvent(new CustomEvent("millm:show-sae", { detail: saeId }));
  window.dispatchEvent(new CustomEvent("millm:goto", { detail: "saes" }));
}

async function watch(id) {
  unwatch();
  const current = { id, socket: null, metrics: [], run: null };
  watched = current;
  const { data: metrics } = await api.get(`/training/runs/${id}/metrics?limit=10000`);
  current.metrics = metrics;
  current.socket = openSocket(`/training/runs/${id}/watch`, {
    onFrame: (frame) => {
      if (watched !== current) return;
      if (frame.type === "error") {
        toast(`Lost the run's progress: ${frame.error.message}`, { kind: "error" });
        return;
      }
      current.run = frame.run;
      const last = current.metrics.length ? current.metrics[current.metrics.length - 1].step : -1;
      current.metrics.push(...frame.metrics.filter((m) => m.step > last || m.eval));
      renderCharts();
      if (FINISHED.has(frame.run.state)) {
        refreshRuns();
        if (frame.run.state === "completed") toast(`${frame.run.name} finished: SAE ${frame.run.sae_id} is ready to attach.`, { kind: "success" });
        if (frame.run.state === "failed") toast(`${frame.run.name} failed: ${frame.run.error}`, { kind: "error", advice: "Fix the config or corpus and press Resume to retry." });
      }
    },
  });
  refreshRuns();
}

function unwatch() {
  if (watched && watched.socket) watched.socket.close(1000);
  watched = null;
}

function renderCharts() {
  const { run, metrics } = watched;
  const steps = metrics.filter((m) => !m.eval);
  const series = (key) => steps.map((m) => ({ x: m.step, y: m[key] }));
  const evals = metrics.filter((m) => m.eval);
  fill(chartsEl,
    h("div", { class: "row between" }, h("h2", {}, "Run ", h("span", { class: "mono" }, run ? run.name : watched.id)),
      run ? h("div", {}, badge(run.state), " ", h("span", { class: "muted" }, run.stage || "")) : null),
    h("div", { class: "charts" },
      lineChart(series("loss"), { title: "Loss", log: true, color: "#79c0ff" }),
      lineChart(series("l0"), { title: "L0 (active features per token)", color: "#56d364" }),
      lineChart(series("fvu"), { title: "FVU (fraction of variance unexplained)", color: "#e3b341" }),
      lineChart(series("dead_features"), { title: "Dead features", color: "#ff7b72" })),
    evals.length ? h("p", { class: "muted mono small-text" }, `held-out at step ${evals[evals.length - 1].step}: FVU ${formatNumber(evals[evals.length - 1].fvu)}, L0 ${formatNumber(evals[evals.length - 1].l0)}`) : null,
    run && run.sae_id ? h("button", { class: "primary", onclick: () => openSae(run.sae_id) }, "Open the trained SAE") : null);
}

export default {
  id: "training",
  title: "Training",
  mount(panel) {
    runsEl = h("div", { "aria-live": "polite" });
    chartsEl = h("div", { class: "card", "aria-live": "off" }, h("p", { class: "muted" }, "Choose a run's Charts to follow its loss, L0, FVU and dead features live."));
    panel.append(h("div", { class: "card" }, h("h2", {}, "Train an SAE on the served model"), buildForm()), h("div", { class: "card" }, h("h2", {}, "Runs"), runsEl), chartsEl);
    // A run's state changes at once; its step counts still come from the poll below.
    onEvent((event) => panel.hidden || event.type !== "training_run_changed" || refreshRuns());
  },
  show() {
    refreshCorpora().catch(() => {});
    refreshTemplates().catch(() => {});
    refreshRuns();
    // The poll skips a refresh while focus is in the table, so keyboard users keep their place.
    pollTimer = setInterval(() => runsEl.contains(document.activeElement) || refreshRuns(), POLL_MS);
  },
  hide() {
    clearInterval(pollTimer);
  },
};
