// Features: which features of a cached SAE fire on a text, which separate two sets
// of texts, which carry a label; statistics over a corpus as an operation with
// progress; and one feature's dashboard (feature_dashboard.js).

import { api, listAll } from "../api.js";
import { OperationList } from "../operations.js";
import { on } from "../store.js";
import { busy, emptyState, field, fill, formatNumber, h, shadedTokens, toast } from "../ui.js";
import { FeatureDashboard, isAttached, steerWith, steeredNotice } from "./feature_dashboard.js";

let root;
let picker; // the SAE select
let saeId = null;
let saesShown = ""; // the ready SAEs' ids, to rebuild the picker only when they change
let picked = false; // the user chose an SAE; until then the picker follows the attached one
let listing = 0; // the latest refresh; an older one that answers late is dropped
let els = {};
const dashboard = new FeatureDashboard(() => searchLabels());
const operations = new OperationList(["feature_statistics"], (operation) => {
  if (operation.state === "succeeded" && operation.target === saeId) dashboard.reload();
});

const labelText = (label) => (label && label.label ? label.label : "");

function openButton(index) {
  return h("button", { class: "secondary small", "aria-label": `Open feature ${index}`, onclick: () => dashboard.open(index, { scroll: true }) }, "Open");
}

// ---------------------------------------------------------------- the SAE and its statistics

async function refreshSaes() {
  const mine = ++listing;
  let saes;
  try {
    saes = (await listAll("/saes")).filter((s) => s.state === "ready");
  } catch (err) {
    if (mine === listing) fill(els.sae, h("p", { class: "error-text" }, `Could not list SAEs: ${err.message}`));
    return;
  }
  if (mine !== listing) return;
  const ids = saes.map((s) => `${s.id}:${s.attached_hook_name || ""}`).join(",");
  if (ids === saesShown && saeId) return;
  saesShown = ids;
  if (!saes.length) {
    saeId = null;
    fill(els.sae, emptyState("No SAEs yet", h("p", {}, "Get or train an SAE for the served model in the SAEs or Training tab; its features show here.")));
    els.work.hidden = true;
    return;
  }
  const has = (id) => saes.some((s) => s.id === id);
  const attached = (saes.find((s) => s.attached_hook_name) || {}).id;
  const keep = picked && has(saeId) ? saeId : attached || (has(saeId) ? saeId : saes[0].id);
  picker = h("select", { name: "sae", onchange: () => { picked = true; choose(picker.value); } },
    saes.map((s) => h("option", { value: s.id, selected: s.id === keep },
      `${s.name}${s.attached_hook_name ? " (attached)" : ""} · ${formatNumber(s.d_sae)} features${s.hook_name ? ` · ${s.hook_name}` : ""}`)));
  fill(els.sae, h("div", { class: "row wrap" }, field("SAE", picker), statisticsForm()));
  els.work.hidden = false;
  choose(keep, { force: true });
}

function choose(id, { force = false } = {}) {
  if (id === saeId && !force) return;
  saeId = id;
  dashboard.setSae(id);
  for (const results of [els.searchResults, els.contrastResults]) fill(results);
  searchLabels();
}

function statisticsForm() {
  const corpus = h("select", { name: "corpus_id" }, h("option", { value: "" }, "Built-in sample"));
  const maxTokens = h("input", { name: "max_tokens", type: "number", min: "1", step: "1", placeholder: "100000", class: "mono narrow" });
  api.get("/training/corpora").then(({ data }) => corpus.append(...data.map((c) => h("option", { value: c.id }, c.name)))).catch(() => {});
  const form = h("form", { class: "row wrap", "aria-label": "Compute feature statistics" },
    field("Corpus", corpus), field("Tokens at most", maxTokens),
    h("button", { class: "primary", type: "submit" }, "Compute statistics"));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = {};
    if (corpus.value) body.corpus_id = corpus.value;
    if (maxTokens.value) body.max_tokens = Number(maxTokens.value);
    const operation = await busy(form.querySelector("[type=submit]"), () => api.post(`/saes/${saeId}/features/statistics`, body), "Statistics");
    if (operation) operations.track(operation);
  });
  return form;
}

// ---------------------------------------------------------------- search by text

function textSearch() {
  const text = h("textarea", { name: "text", rows: "3", required: true, placeholder: "A GOOD BREAKFAST! Eggs, toast and coffee." });
  const form = h("form", { "aria-label": "Features on a text" }, field("Text", text),
    h("div", { class: "row end" }, h("button", { class: "primary", type: "submit" }, "Find features")));
  els.searchResults = h("div", { "aria-live": "polite" });
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (!text.value.trim()) return;
    const found = await busy(form.querySelector("[type=submit]"), () => api.post(`/saes/${saeId}/features/search`, { text: text.value }), "Search");
    if (found) renderTextHits(found);
  });
  return h("div", {}, h("h3", {}, "Features on a text"), h("p", { class: "muted small-text" }, "Ranked by summed activation. Point at, focus or pick a feature to shade where it fired."), form, els.searchResults);
}

function renderTextHits({ tokens, hits }) {
  if (!hits.length) {
    fill(els.searchResults, h("p", { class: "muted" }, "No feature fired on this text."));
    return;
  }
  const line = h("div", { class: "token-line" });
  const strongest = Math.max(...hits.map((hit) => hit.max_activation));
  let picked = hits[0];
  const shadeBy = (hit) => {
    // The search answers where a feature fired, not how strongly on each token:
    // its positions are shaded by its mean activation there.
    const mean = hit.positions.length ? hit.total_activation / hit.positions.length : 0;
    const values = tokens.map((_, i) => (hit.positions.includes(i) ? mean : 0));
    fill(line, shadedTokens(tokens, values, strongest, (i) => (values[i] ? `feature ${hit.index} fired here` : "")));
  };
  const rows = hits.map((hit) => {
    const pick = h("button", {
      class: "secondary small", "aria-pressed": String(hit === picked), "aria-label": `Shade the text by feature ${hit.index}`,
      onclick: () => {
        picked = hit;
        for (const b of els.searchResults.querySelectorAll("[aria-pressed]")) b.setAttribute("aria-pressed", String(b === pick));
        shadeBy(hit);
      },
      onfocus: () => shadeBy(hit),
      onblur: () => shadeBy(picked),
    }, `#${hit.index}`);
    return h("tr", { dataset: { feature: hit.index }, onmouseenter: () => shadeBy(hit), onmouseleave: () => shadeBy(picked) },
      h("td", {}, pick), h("td", {}, labelText(hit.label)),
      h("td", { class: "mono" }, formatNumber(hit.max_activation)), h("td", { class: "mono" }, formatNumber(hit.total_activation)),
      h("td", { class: "mono" }, hit.positions.length), h("td", { class: "actions" }, openButton(hit.index)));
  });
  fill(els.searchResults, line,
    h("table", { class: "data text-hits" }, h("caption", {}, `${hits.length} features on ${tokens.length} tokens`),
      h("thead", {}, h("tr", {}, ["Feature", "Label", "Max", "Total", "Tokens", ""].map((c) => h("th", { scope: "col" }, c)))),
      h("tbody", {}, rows)));
  shadeBy(picked);
}

// ---------------------------------------------------------------- contrastive search

const lines = (text) => text.split("\n").map((t) => t.trim()).filter(Boolean);

function contrastSearch() {
  const positives = h("textarea", { name: "positive_texts", rows: "4", required: true, placeholder: "One text per line" });
  const upper = h("input", { type: "checkbox", name: "uppercase", checked: true });
  const negatives = h("textarea", { name: "negative_texts", rows: "4", placeholder: "One text per line", disabled: true });
  const measure = h("select", { name: "measure" }, h("option", { value: "auroc" }, "AUROC"), h("option", { value: "firing_rate_gap" }, "Firing-rate gap"));
  upper.addEventListener("change", () => {
    negatives.disabled = upper.checked;
  });
  const form = h("form", { "aria-label": "Contrastive search" },
    field("Texts with the behaviour", positives),
    h("label", { class: "check" }, upper, "Contrast with their upper-case copy"),
    field("Texts without it", negatives),
    h("div", { class: "row wrap" }, field("Rank by", measure), h("button", { class: "primary", type: "submit" }, "Contrast")));
  els.contrastResults = h("div", { "aria-live": "polite" });
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = { positive_texts: lines(positives.value), measure: measure.value };
    if (upper.checked) body.transform = "uppercase";
    else body.negative_texts = lines(negatives.value);
    if (!body.positive_texts.length || (!upper.checked && !body.negative_texts.length)) {
      toast("Write at least one text on each side, one per line.", { kind: "warning" });
      return;
    }
    const found = await busy(form.querySelector("[type=submit]"), () => api.post(`/saes/${saeId}/features/contrast`, body), "Contrast");
    if (found) renderContrastHits(found);
  });
  return h("div", {}, h("h3", {}, "Contrastive search"), h("p", { class: "muted small-text" }, "Features that separate two sets of texts, with a steering strength from their activations."), form, els.contrastResults);
}

function renderContrastHits({ measure, hits }) {
  if (!hits.length) {
    fill(els.contrastResults, h("p", { class: "muted" }, "No feature separates these texts."));
    return;
  }
  const outcome = h("div");
  const steer = (hit) => h("button", {
    class: "secondary small", disabled: !isAttached(saeId), "aria-label": `Steer with feature ${hit.index}`,
    onclick: async (e) => {
      const state = await busy(e.currentTarget, () => steerWith(hit.index, hit.suggested_strength, labelText(hit.label)), "Steer");
      if (state) fill(outcome, steeredNotice(hit.index, hit.suggested_strength, state));
    },
  }, "Steer");
  fill(els.contrastResults, outcome,
    h("table", { class: "data contrast-hits" }, h("caption", {}, `Ranked by ${measure === "firing_rate_gap" ? "firing-rate gap" : "AUROC"}`),
      h("thead", {}, h("tr", {}, ["Feature", "Label", "AUROC", "Gap", "Mean + / −", "Strength", ""].map((c) => h("th", { scope: "col" }, c)))),
      h("tbody", {}, hits.map((hit) => h("tr", { dataset: { feature: hit.index } },
        h("td", { class: "mono" }, `#${hit.index}`), h("td", {}, labelText(hit.label)),
        h("td", { class: "mono" }, formatNumber(hit.auroc)), h("td", { class: "mono" }, formatNumber(hit.firing_rate_gap)),
        h("td", { class: "mono" }, `${formatNumber(hit.mean_positive)} / ${formatNumber(hit.mean_negative)}`),
        h("td", { class: "mono" }, formatNumber(hit.suggested_strength)),
        h("td", { class: "actions" }, openButton(hit.index), steer(hit)))))));
}

// ---------------------------------------------------------------- labels

function labelSearch() {
  els.labelQuery = h("input", { type: "search", name: "query", autocomplete: "off", placeholder: "upper case" });
  els.labelResults = h("div", { "aria-live": "polite" });
  const form = h("form", { class: "row wrap", "aria-label": "Search labels" }, field("Find in labels and notes", els.labelQuery),
    h("button", { class: "primary", type: "submit" }, "Search"));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    searchLabels();
  });
  const file = h("input", { type: "file", accept: ".json,application/json" });
  const format = h("select", { name: "format" }, h("option", { value: "millm" }, "miLLM export"), h("option", { value: "neuronpedia" }, "Neuronpedia explanations"));
  const overwrite = h("input", { type: "checkbox", name: "overwrite" });
  const importForm = h("form", { class: "row wrap", "aria-label": "Import labels" },
    field("Labels file", file), field("Format", format), h("label", { class: "check" }, overwrite, "Replace existing labels"),
    h("button", { class: "secondary", type: "submit" }, "Import"),
    h("button", { class: "secondary", type: "button", onclick: (e) => busy(e.currentTarget, () => api.download(`/saes/${saeId}/labels/export`), "Export") }, "Export labels"));
  importForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (!file.files.length) {
      toast("Choose a labels file first.", { kind: "warning" });
      return;
    }
    const query = `format=${format.value}&overwrite=${overwrite.checked}`;
    const result = await busy(importForm.querySelector("[type=submit]"), () => api.upload(`/saes/${saeId}/labels/import?${query}`, file.files[0]), "Import");
    if (result) {
      toast(`Imported ${result.imported} labels${result.skipped ? `, kept ${result.skipped} existing` : ""}.`, { kind: "success" });
      searchLabels();
    }
  });
  return h("div", {}, h("h3", {}, "Labels"), form, els.labelResults, importForm);
}

async function searchLabels() {
  if (!saeId || !els.labelResults) return;
  const query = els.labelQuery.value.trim();
  let labels;
  try {
    labels = (await api.get(`/saes/${saeId}/labels?limit=200${query ? `&query=${encodeURIComponent(query)}` : ""}`)).data;
  } catch (err) {
    fill(els.labelResults, h("p", { class: "error-text" }, `Could not read labels: ${err.message}`));
    return;
  }
  fill(els.labelResults, labels.length
    ? h("ul", { class: "list labels", "aria-label": "Labelled features" }, labels.map((label) => h("li", { class: "row between", dataset: { feature: label.index } },
      h("div", {}, h("span", { class: "mono" }, `#${label.index} `), h("strong", {}, label.label || ""), label.notes ? h("span", { class: "muted" }, ` · ${label.notes}`) : null),
      openButton(label.index))))
    : h("p", { class: "muted" }, query ? "No label matches." : "No labels yet: write one in a feature's dashboard, or import a file."));
}

export default {
  id: "features",
  title: "Features",
  mount(panel) {
    root = panel;
    els.sae = h("div");
    els.work = h("div", { hidden: true },
      h("div", { class: "card" }, h("h2", {}, "Find features"), h("div", { class: "finders wide" }, textSearch(), contrastSearch(), labelSearch())),
      dashboard.el);
    root.append(h("div", { class: "card" }, h("h2", {}, "Features"), els.sae, operations.el), els.work);
    // Attaching elsewhere changes which SAE is the default and which can be steered.
    on("context", () => root.hidden || refreshSaes());
  },
  show() {
    refreshSaes();
    operations.resume().catch(() => {});
  },
};
