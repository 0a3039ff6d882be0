// One feature's dashboard in the Features tab: statistics and histogram, the contexts
// it fires on most with tokens shaded by activation, the logit lens, the label
// editor, and "steer with this feature", which adds it to the live steering.

import { api } from "../api.js";
import { refreshContext, store } from "../store.js";
import { busy, field, fill, formatNumber, h, histogram, shadedTokens, toast } from "../ui.js";

// Steering strength offered when nothing has been observed to suggest one.
const FALLBACK_STRENGTH = 10;

/** Adds (or replaces) `index` in the live steering with `add` at `strength`; answers the new state. */
export async function steerWith(index, strength, label) {
  const state = await api.get("/steering");
  const features = state.live.features.filter((f) => f.index !== index);
  features.push({ index, mode: "add", strength, normalize: false, label: label || null });
  store.steering = await api.put("/steering", { features });
  refreshContext();
  return store.steering;
}

/** Whether `saeId` is the attached SAE, the only one steering can use. */
export function isAttached(saeId) {
  return Boolean(store.attachment && store.attachment.sae_id === saeId);
}

function goToSteering() {
  window.dispatchEvent(new CustomEvent("millm:goto", { detail: "steering" }));
}

/** What "steer with" says once done: the feature's place in the live steering. */
export function steeredNotice(index, strength, state) {
  return h("p", { class: "notice steered-notice", role: "status" },
    `Feature ${index} is in the live steering at strength ${formatNumber(strength)} (add). `,
    state.active_profile ? `Profile ${state.active_profile} is active, so requests follow it until it is deactivated. ` : null,
    h("button", { class: "secondary small", onclick: goToSteering }, "Open Steering"));
}

function statisticsFacts(stats) {
  const [p50, p90, p99] = stats.quantiles;
  const facts = [
    ["Firing rate", `${formatNumber(stats.firing_rate * 100)} %`],
    ["Max activation", formatNumber(stats.max_activation)],
    ["Mean when firing", formatNumber(stats.mean_activation)],
    ["Quantiles 50 / 90 / 99 %", [p50, p90, p99].map((q) => formatNumber(q)).join(" / ")],
    ["Tokens read", formatNumber(stats.tokens)],
  ];
  return h("dl", { class: "facts" }, facts.map(([k, v]) => h("div", {}, h("dt", {}, k), h("dd", { class: "mono" }, v))));
}

function contexts(feature) {
  if (!feature.top_contexts.length) return h("p", { class: "muted" }, "No contexts yet: compute statistics to find where it fires most.");
  const strongest = Math.max(...feature.top_contexts.map((c) => c.max_activation));
  return h("ol", { class: "contexts", "aria-label": `Top contexts of feature ${feature.index}` },
    feature.top_contexts.map((context) => h("li", {},
      h("span", { class: "muted mono small-text" }, formatNumber(context.max_activation)),
      shadedTokens(context.tokens, context.activations, strongest, (i) => `activation ${formatNumber(context.activations[i])}${i === context.peak ? " (peak)" : ""}`))));
}

function lensList(title, tokens) {
  return h("div", {}, h("h4", {}, title),
    tokens.length
      ? h("ol", { class: "lens mono", "aria-label": title }, tokens.map((t) => h("li", {}, h("span", { class: "lens-token" }, JSON.stringify(t.token)), " ", h("span", { class: "muted" }, formatNumber(t.logit)))))
      : h("p", { class: "muted" }, "none"));
}

export class FeatureDashboard {
  /** `onLabelSaved()` runs after a label changes (to refresh label searches). */
  constructor(onLabelSaved) {
    this.onLabelSaved = onLabelSaved;
    this.saeId = null;
    this.feature = null;
    this.index = h("input", { type: "number", min: "0", step: "1", class: "mono narrow", required: true });
    this.body = h("div", { class: "dashboard", "aria-live": "polite" });
    const form = h("form", { class: "row wrap", "aria-label": "Open a feature" },
      field("Feature index", this.index), h("button", { class: "primary", type: "submit" }, "Open"));
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const value = Number(this.index.value);
      if (this.index.value === "" || !Number.isInteger(value) || value < 0) {
        this.index.setAttribute("aria-invalid", "true");
        toast("Enter a feature index: a whole number, 0 or more.", { kind: "warning" });
        return;
      }
      this.index.removeAttribute("aria-invalid");
      this.open(value);
    });
    this.el = h("div", { class: "card", id: "feature-dashboard" }, h("h2", {}, "Feature dashboard"), form, this.body);
  }

  /** Shows another SAE: the open feature belonged to the previous one. */
  setSae(saeId) {
    if (saeId === this.saeId) return;
    this.saeId = saeId;
    this.feature = null;
    fill(this.body, h("p", { class: "muted" }, "Open a feature by index, or from a search result."));
  }

  async open(index, { scroll = false } = {}) {
    if (!this.saeId) return;
    this.index.value = String(index);
    fill(this.body, h("p", { class: "muted" }, `Loading feature ${index}…`));
    try {
      this.feature = await api.get(`/saes/${this.saeId}/features/${index}`);
    } catch (err) {
      fill(this.body, h("p", { class: "error-text" }, `Feature ${index}: ${err.message}`));
      return;
    }
    this.render();
    if (scroll) this.el.scrollIntoView({ block: "start" });
  }

  /** Reloads the open feature (after statistics finish). */
  reload() {
    if (this.feature) this.open(this.feature.index);
  }

  render() {
    const feature = this.feature;
    const stats = feature.statistics;
    fill(this.body,
      h("article", { class: "feature", dataset: { feature: feature.index }, "aria-label": `Feature ${feature.index}` },
        h("h3", {}, `Feature ${feature.index}`, feature.label && feature.label.label ? h("span", { class: "muted" }, ` · ${feature.label.label}`) : null),
        h("div", { class: "split" },
          h("div", {},
            stats ? statisticsFacts(stats) : h("p", { class: "muted" }, "No statistics yet: compute them above to see how often and how strongly it fires."),
            stats ? histogram(stats.histogram.bin_edges, stats.histogram.counts, { title: "Activation histogram" }) : null,
            h("h4", {}, "Top contexts"), contexts(feature)),
          h("div", {},
            h("div", { class: "compare" }, lensList("Promoted tokens", feature.promoted), lensList("Suppressed tokens", feature.suppressed)),
            this.labelEditor(), this.steerForm()))));
  }

  labelEditor() {
    const feature = this.feature;
    const current = feature.label || { label: "", notes: "" };
    const label = h("input", { name: "label", maxlength: "200", value: current.label || "", autocomplete: "off", placeholder: "e.g. upper-case letters" });
    const notes = h("textarea", { name: "notes", rows: "3", maxlength: "10000" }, current.notes || "");
    const form = h("form", { class: "label-editor", "aria-label": `Label of feature ${feature.index}` },
      field("Label", label), field("Notes", notes),
      h("div", { class: "row end" }, h("button", { class: "primary", type: "submit" }, "Save label")));
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const body = { label: label.value.trim(), notes: notes.value.trim() };
      const saved = await busy(form.querySelector("[type=submit]"), () => api.put(`/saes/${this.saeId}/features/${feature.index}/label`, body), "Save label");
      if (!saved) return;
      feature.label = saved.label;
      toast(saved.label ? `Saved the label of feature ${feature.index}.` : `Removed the label of feature ${feature.index}.`, { kind: "success" });
      this.onLabelSaved();
    });
    return h("div", {}, h("h4", {}, "Label and notes"), form);
  }

  steerForm() {
    const feature = this.feature;
    const suggested = feature.suggested_strength;
    const strength = h("input", { type: "number", step: "any", class: "mono narrow", value: suggested !== null ? Number(suggested.toFixed(2)) : FALLBACK_STRENGTH });
    const outcome = h("div");
    const attached = isAttached(this.saeId);
    const form = h("form", { class: "row wrap", "aria-label": `Steer with feature ${feature.index}` },
      field("Strength (add)", strength),
      h("button", { class: "primary", type: "submit", disabled: !attached }, "Steer with this feature"));
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const value = Number(strength.value);
      if (strength.value === "" || !Number.isFinite(value)) {
        strength.setAttribute("aria-invalid", "true");
        return;
      }
      strength.removeAttribute("aria-invalid");
      const name = feature.label && feature.label.label;
      const state = await busy(form.querySelector("[type=submit]"), () => steerWith(feature.index, value, name), "Steer");
      if (state) fill(outcome, steeredNotice(feature.index, value, state));
    });
    const hint = attached
      ? suggested !== null ? "Suggested from its observed activations." : "Nothing observed yet to suggest a strength from."
      : "Attach this SAE (SAEs tab) to steer with its features.";
    return h("div", {}, h("h4", {}, "Steer"), form, h("p", { class: "muted small-text" }, hint), outcome);
  }
}
