// Steering: the live features of the attached SAE with a slider per feature whose
// range follows the feature's observed maximum, the on/off switch, and a try-it
// panel that shows the default and the steered reply side by side.

import { api } from "../api.js";
import { on, refreshContext, servedModelId, store } from "../store.js";
import { busy, emptyState, field, fill, formatNumber, h, toast, toastError } from "../ui.js";

const SAVE_DELAY_MS = 250;
// Without an observed maximum, sliders for `add` span this many decoder-row units.
const DEFAULT_ADD_RANGE = 50;
const MULTIPLY_RANGE = [-2, 4];

let root;
let features = []; // the live features as edited here
let saveTimer = null;
let shownSae = null;
let showing = false; // show() refreshes the context itself

function sliderRange(feature) {
  const observed = store.steering && store.steering.max_activations[String(feature.index)];
  const span = observed ? Math.max(1, Math.ceil(observed * 2)) : DEFAULT_ADD_RANGE;
  if (feature.mode === "multiply") return { min: MULTIPLY_RANGE[0], max: MULTIPLY_RANGE[1], step: 0.05 };
  if (feature.mode === "clamp") return { min: 0, max: span, step: span / 200 };
  return { min: -span, max: span, step: span / 200 };
}

function scheduleSave() {
  clearTimeout(saveTimer);
  saveTimer = setTimeout(save, SAVE_DELAY_MS);
}

/**
 * Sends the live features. On a refusal it toasts the server's message, goes back to
 * what the server holds and answers the error; `rerender` false leaves the page as
 * it is (the add form keeps what the user typed).
 */
async function save({ rerender = true } = {}) {
  clearTimeout(saveTimer);
  try {
    store.steering = await api.put("/steering", { features });
    return null;
  } catch (err) {
    toastError(err, "Steering not changed");
    store.steering = await api.get("/steering").catch(() => store.steering);
    features = structuredClone(store.steering.live.features);
    if (rerender) render();
    return err;
  }
}

function featureRow(feature) {
  const observed = store.steering.max_activations[String(feature.index)];
  const range = sliderRange(feature);
  const name = `feature ${feature.index}`;
  const slider = h("input", { type: "range", min: range.min, max: range.max, step: range.step, value: feature.strength, "aria-label": `Strength of ${name}` });
  const exact = h("input", { type: "number", step: "any", value: feature.strength, class: "mono narrow", "aria-label": `Exact strength of ${name}` });
  const mode = h("select", { "aria-label": `Mode of ${name}` }, ["add", "clamp", "multiply"].map((m) => h("option", { value: m, selected: feature.mode === m }, m)));
  const label = h("input", { value: feature.label || "", placeholder: "label", class: "narrow", "aria-label": `Label of ${name}` });
  slider.addEventListener("input", () => {
    feature.strength = Number(slider.value);
    exact.value = slider.value;
    scheduleSave();
  });
  exact.addEventListener("input", () => {
    if (exact.value === "" || !Number.isFinite(Number(exact.value))) {
      exact.setAttribute("aria-invalid", "true");
      return;
    }
    exact.removeAttribute("aria-invalid");
    feature.strength = Number(exact.value);
    slider.value = exact.value;
    scheduleSave();
  });
  mode.addEventListener("change", () => {
    feature.mode = mode.value;
    const r = sliderRange(feature);
    Object.assign(slider, { min: r.min, max: r.max, step: r.step });
    slider.value = feature.strength;
    scheduleSave();
  });
  label.addEventListener("change", () => {
    feature.label = label.value.trim() || null;
    scheduleSave();
  });
  return h("li", { class: "feature-row", dataset: { feature: feature.index } },
    h("span", { class: "mono index" }, `#${feature.index}`),
    label, mode, slider, exact,
    h("span", { class: "muted mono small-text" }, observed ? `observed max ${formatNumber(observed)}` : "no observed max"),
    h("button", {
      class: "secondary small", "aria-label": `Remove ${name}`,
      onclick: async () => {
        features = features.filter((f) => f !== feature);
        if (!(await save())) render();
      },
    }, "Remove"));
}

function addForm(dSae) {
  const index = h("input", { name: "index", type: "number", min: "0", step: "1", required: true, class: "mono", "aria-describedby": "add-feature-hint" });
  const label = h("input", { name: "label", placeholder: "e.g. all caps", autocomplete: "off" });
  const hint = h("p", { id: "add-feature-hint", class: "muted small-text" }, `An index from 0 to ${dSae - 1}.`);
  const form = h("form", { class: "row wrap", "aria-label": "Add a feature", novalidate: true },
    field("Feature index", index), field("Label", label),
    h("button", { class: "primary", type: "submit" }, "Add feature"), hint);
  index.addEventListener("input", () => {
    index.removeAttribute("aria-invalid");
    hint.textContent = `An index from 0 to ${dSae - 1}.`;
    hint.className = "muted small-text";
  });
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const value = Number(index.value);
    if (!Number.isInteger(value) || value < 0) {
      index.setAttribute("aria-invalid", "true");
      hint.textContent = "Enter a whole number, 0 or more.";
      hint.className = "error-text small-text";
      return;
    }
    const observed = store.steering.max_activations[String(value)];
    features.push({ index: value, mode: "add", strength: observed ? Number(observed.toFixed(2)) : 10, normalize: false, label: label.value.trim() || null });
    const error = await save({ rerender: false });
    if (!error) {
      render();
      root.querySelector(`[data-feature="${value}"] input[type=range]`).focus();
    } else {
      index.setAttribute("aria-invalid", "true");
      hint.textContent = error.message;
      hint.className = "error-text small-text";
      index.focus();
    }
  });
  return form;
}

function tryIt() {
  const prompt = h("textarea", { rows: 3, name: "prompt", "aria-label": "Prompt to try" }, "Write one sentence about the sea.");
  const maxTokens = h("input", { type: "number", min: "1", max: "512", value: "40", class: "narrow mono", "aria-label": "Maximum tokens" });
  const out = h("div", { class: "compare", "aria-live": "polite" });
  const go = h("button", { class: "primary", type: "submit" }, "Compare");
  const form = h("form", { "aria-label": "Try it" }, prompt,
    h("div", { class: "row" }, h("label", { class: "inline" }, "Max tokens ", maxTokens), go));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    fill(out, h("p", { class: "muted" }, "Generating both replies…"));
    const reply = await busy(go, () => api.openai("/v1/chat/completions", {
      model: servedModelId(),
      messages: [{ role: "user", content: prompt.value }],
      max_tokens: Number(maxTokens.value) || 40,
      temperature: 0,
      millm: { compare: true },
    }), "Try it");
    if (!reply) {
      out.replaceChildren();
      return;
    }
    fill(out,
      h("div", { class: "reply" }, h("h4", {}, "Default"), h("p", { class: "default-reply" }, reply.millm.default.choices[0].message.content)),
      h("div", { class: "reply steered" }, h("h4", {}, "Steered"), h("p", { class: "steered-reply" }, reply.choices[0].message.content)));
  });
  return h("div", { class: "card" }, h("h2", {}, "Try it"), h("p", { class: "muted" }, "Sends the prompt twice with temperature 0: once with no steering, once with the steering in force now."), form, out);
}

function render() {
  const state = store.steering;
  if (!state || !state.sae_id) {
    fill(root, emptyState("No SAE attached",
      h("p", {}, "Steering turns SAE features up or down while the model generates. Attach an SAE first."),
      h("button", { class: "primary", onclick: () => window.dispatchEvent(new CustomEvent("millm:goto", { detail: "saes" })) }, "Go to SAEs")));
    return;
  }
  const enabled = state.live.enabled;
  const toggle = h("button", {
    role: "switch", "aria-checked": String(enabled), class: `switch${enabled ? " on" : ""}`, "aria-label": "Live steering enabled",
    onclick: async (e) => {
      const next = await busy(e.currentTarget, () => api.post(enabled ? "/steering/disable" : "/steering/enable"), "Switch");
      if (next) {
        store.steering = next;
        render();
      }
    },
  }, h("span", { class: "knob", "aria-hidden": "true" }), enabled ? "On" : "Off");
  const clear = h("button", {
    class: "secondary", disabled: !features.length,
    onclick: async (e) => {
      const next = await busy(e.currentTarget, () => api.del("/steering"), "Clear");
      if (next) {
        store.steering = next;
        features = [];
        render();
        toast("Cleared the live features.");
      }
    },
  }, "Clear all");
  const sae = store.sae;
  fill(root,
    h("div", { class: "card" },
      h("div", { class: "row between" },
        h("h2", {}, "Live steering ", h("span", { class: "muted mono" }, sae ? `${sae.name} · ${formatNumber(state.d_sae)} features` : "")),
        h("div", { class: "row" }, toggle, clear)),
      state.active_profile
        ? h("p", { class: "notice" }, `Profile `, h("strong", { class: "mono" }, state.active_profile), " is active: requests follow it, not these live features. ",
          h("button", { class: "secondary small", onclick: async (e) => {
            if (await busy(e.currentTarget, () => api.post("/profiles/deactivate"), "Deactivate")) refreshContext();
          } }, "Deactivate it"))
        : null,
      addForm(state.d_sae),
      features.length
        ? h("ul", { class: "features", "aria-label": "Steered features" }, features.map(featureRow))
        : h("p", { class: "muted" }, "No features steered yet. Add one by index; Monitor shows which features fire on your traffic.")),
    tryIt());
}

export default {
  id: "steering",
  title: "Steering",
  mount(panel) {
    root = panel;
    on("context", () => {
      // Re-render only when the SAE changed, so a slider being dragged keeps its focus.
      const sae = store.steering && store.steering.sae_id;
      if (!showing && sae !== shownSae && !root.hidden) this.show();
    });
  },
  async show() {
    showing = true;
    try {
      await refreshContext();
    } finally {
      showing = false;
    }
    shownSae = store.steering && store.steering.sae_id;
    features = store.steering ? structuredClone(store.steering.live.features) : [];
    render();
  },
  hide() {
    if (saveTimer) save();
  },
};
