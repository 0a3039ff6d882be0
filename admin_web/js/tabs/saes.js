// SAEs: find them (Hub preview, the SAELens registry), download with progress,
// import a server folder, the cache as cards, compatibility check, attach, detach.

import { api, listAll } from "../api.js";
import { OperationList } from "../operations.js";
import { on, onEvent, refreshContext, servedModelId } from "../store.js";
import { badge, busy, confirmDialog, emptyState, field, fill, formatBytes, formatNumber, h, toast } from "../ui.js";

const operations = new OperationList(["sae_download", "sae_upload"], () => refresh());
let cards;
let finders;
let highlight = null; // an SAE id to scroll to (a finished training run links here)
let attachedSae = null; // the SAE attached now, if any: attaching another replaces it
let restoreNote; // why the SAE attached before the last restart did not come back

const ATTACH_SITES = [["resid_post", "residual stream after the layer"], ["resid_pre", "residual stream before the layer"]];
const ATTACH_DTYPES = [["float32", "float32"], ["float16", "float16 (half the memory)"], ["bfloat16", "bfloat16 (half the memory)"]];

function previewFinder() {
  const results = h("div", { class: "finder-results", "aria-live": "polite" });
  const form = h("form", { class: "grid-form", "aria-label": "Preview a Hub repository" },
    field("Hub repository", h("input", { name: "repo_id", required: true, placeholder: "jbloom/GPT2-Small-SAEs-Reformatted", autocomplete: "off", spellcheck: "false" })),
    field("Revision", h("input", { name: "revision", placeholder: "main", autocomplete: "off" })),
    field("Hub token (private repositories)", h("input", { name: "token", type: "password", autocomplete: "off" })),
    h("div", { class: "row end" }, h("button", { class: "primary", type: "submit" }, "Preview")));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const data = Object.fromEntries(new FormData(form));
    const body = { repo_id: data.repo_id.trim() };
    if (data.revision) body.revision = data.revision.trim();
    if (data.token) body.token = data.token;
    const preview = await busy(form.querySelector("[type=submit]"), () => api.post("/saes/preview", body), "Preview");
    if (!preview) return;
    if (!preview.candidates.length) {
      fill(results, h("p", { class: "muted" }, "No SAE configs found in that repository."));
      return;
    }
    fill(results, h("ul", { class: "list" }, preview.candidates.map((c) => h("li", { class: "row between" },
      h("div", {}, h("strong", { class: "mono" }, c.path || "(repository root)"), " ",
        h("span", { class: "muted mono" }, [c.architecture, c.d_sae && `${formatNumber(c.d_sae)} features`, c.hook_name, c.model_name, c.size_bytes && formatBytes(c.size_bytes)].filter(Boolean).join(" · ")),
        c.problem ? h("div", { class: "error-text" }, c.problem) : null),
      h("button", {
        class: "secondary small", "aria-label": `Download ${c.path || "repository root"}`,
        onclick: (e) => startDownload(e.currentTarget, { ...body, path: c.path }),
      }, "Download")))));
  });
  return h("div", {}, h("h3", {}, "Preview a Hub repository"), form, results);
}

function registryFinder() {
  const results = h("div", { class: "finder-results", "aria-live": "polite" });
  const filter = h("input", { name: "model", placeholder: "gpt2-small", autocomplete: "off", spellcheck: "false" });
  const form = h("form", { class: "grid-form", "aria-label": "Browse the SAELens registry" },
    field("Model name contains", filter),
    h("div", { class: "row end" }, h("button", { class: "primary", type: "submit" }, "Browse")));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const query = filter.value.trim() ? `?model=${encodeURIComponent(filter.value.trim())}` : "";
    const releases = await busy(form.querySelector("[type=submit]"), () => listAll(`/sae-releases${query}`), "Registry");
    if (!releases) return;
    if (!releases.length) {
      fill(results, h("p", { class: "muted" }, "No release in the registry matches that model."));
      return;
    }
    fill(results, h("ul", { class: "list" }, releases.slice(0, 100).map((release) => {
      const pick = h("select", { "aria-label": `SAE inside ${release.name}` }, release.sae_ids.map((id) => h("option", { value: id }, id)));
      return h("li", { class: "row between" },
        h("div", {}, h("strong", { class: "mono" }, release.name), " ", h("span", { class: "muted mono" }, release.model),
          release.supported ? null : h("div", { class: "error-text" }, release.unsupported_reason)),
        h("div", { class: "row" }, pick, h("button", {
          class: "secondary small", disabled: !release.supported, "aria-label": `Download from ${release.name}`,
          onclick: (e) => startDownload(e.currentTarget, { release: release.name, sae_id: pick.value }),
        }, "Download")));
    })));
  });
  return h("div", {}, h("h3", {}, "SAELens registry"), form, results);
}

function importFinder() {
  const form = h("form", { class: "grid-form", "aria-label": "Import a folder on the server" },
    field("Folder on the server (absolute path)", h("input", { name: "path", required: true, placeholder: "/data/saes/layer-6", autocomplete: "off", spellcheck: "false" })),
    field("Name", h("input", { name: "name", placeholder: "the folder's name", autocomplete: "off" })),
    h("div", { class: "row end" }, h("button", { class: "primary", type: "submit" }, "Import")));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const data = Object.fromEntries(new FormData(form));
    const body = { path: data.path.trim() };
    if (data.name.trim()) body.name = data.name.trim();
    const sae = await busy(form.querySelector("[type=submit]"), () => api.post("/saes/import", body), "Import");
    if (sae) {
      toast(`Imported ${sae.name} (${formatNumber(sae.d_sae)} features).`, { kind: "success" });
      form.reset();
      highlight = sae.id;
      refresh();
    }
  });
  return h("div", {}, h("h3", {}, "Import a folder"), h("p", { class: "muted" }, "SAELens, Gemma Scope, sparsify or miStudio layout, on the server's disk."), form);
}

/** A warning when the SAE attached before the last restart could not be attached again. */
async function showRestore() {
  let restore = null;
  try {
    restore = (await api.get("/saes/attachments")).restore;
  } catch {
    // The list of SAEs already says what is wrong.
  }
  if (restore && restore.state === "failed") {
    fill(restoreNote, h("p", { class: "warn", role: "status" },
      `After the last restart, SAE ${restore.sae_id} could not be attached again at ${restore.hook_name}: ${restore.message}`));
  } else {
    restoreNote.replaceChildren();
  }
}

async function startDownload(button, body) {
  const operation = await busy(button, () => api.post("/saes/download", body), "Download");
  if (operation) operations.track(operation);
}

async function refresh() {
  let saes;
  try {
    saes = await listAll("/saes");
  } catch (err) {
    fill(cards, h("p", { class: "error-text" }, `Could not list SAEs: ${err.message}`));
    return;
  }
  attachedSae = saes.find((s) => s.attached_hook_name) || null;
  showRestore();
  if (!saes.length) {
    fill(cards, emptyState("No SAEs yet",
      h("p", {}, "A Sparse Autoencoder (SAE) splits one layer's hidden state into many sparse, mostly human-readable features. Attach one to a layer of the served model to watch which features fire (Monitor) and to turn them up or down (Steering)."),
      h("p", {}, "Get one above from the Hugging Face Hub or the SAELens registry, import a folder, or train your own on the served model in the Training tab.")));
    return;
  }
  fill(cards, h("div", { class: "cards" }, saes.map(saeCard)));
  if (highlight) {
    const card = cards.querySelector(`[data-sae-id="${highlight}"]`);
    if (card) {
      card.classList.add("highlight");
      card.scrollIntoView({ block: "nearest" });
    }
    highlight = null;
  }
}

function saeCard(sae) {
  const attached = Boolean(sae.attached_hook_name);
  const attachArea = h("div");
  const facts = [
    ["Features", formatNumber(sae.d_sae)],
    ["Input width", formatNumber(sae.d_in)],
    ["Layer", sae.layer ?? "–"],
    ["Hook", sae.hook_name || "–"],
    ["Architecture", sae.architecture + (sae.k ? ` (k ${sae.k})` : "")],
    ["Trained on", sae.model_name || "unknown"],
    ["Format", `${sae.format}, ${sae.dtype}`],
    ["Size", formatBytes(sae.size_bytes)],
  ];
  return h("article", { class: `card sae-card${attached ? " attached" : ""}`, dataset: { saeId: sae.id }, "aria-label": `SAE ${sae.name}` },
    h("div", { class: "row between" }, h("h3", { class: "mono" }, sae.name),
      h("div", {}, badge(sae.state), " ", attached ? badge(`attached at ${sae.attached_hook_name}`, "attached") : null)),
    h("dl", { class: "facts" }, facts.map(([k, v]) => h("div", {}, h("dt", {}, k), h("dd", { class: "mono" }, breakable(String(v)))))),
    h("div", { class: "actions" },
      attached
        ? h("button", { class: "secondary small", "aria-label": `Detach ${sae.name}`, onclick: (e) => detach(e.currentTarget) }, "Detach")
        : h("button", { class: "primary small", "aria-label": `Attach ${sae.name}…`, disabled: sae.state !== "ready", onclick: () => openAttach(sae, attachArea) }, "Attach…"),
      h("button", { class: "secondary small", "aria-label": `Export ${sae.name} as a zip`, onclick: (e) => busy(e.currentTarget, () => api.download(`/saes/${sae.id}/export`, { stream: true }), "Export") }, "Export"),
      h("button", {
        class: "danger small", "aria-label": `Delete ${sae.name}`, disabled: attached, title: attached ? "Detach it before deleting" : null,
        onclick: async (e) => {
          if (!(await confirmDialog(`Delete ${sae.name}?`, `This removes ${formatBytes(sae.size_bytes)} of files from the SAE cache.`))) return;
          const result = await busy(e.currentTarget, () => api.del(`/saes/${sae.id}`), "Delete");
          if (result) {
            toast(`Deleted ${sae.name}.`, { kind: "success" });
            refresh();
          }
        },
      }, "Delete")),
    attachArea);
}

/** Lets a long dotted or slashed name (a hook, a Hub id) wrap after a separator
 * instead of mid-word; <wbr> adds nothing to copied text. */
function breakable(text) {
  return text.split(/(?<=[./])/).flatMap((part, i) => (i ? [h("wbr"), part] : [part]));
}

async function detach(button) {
  const result = await busy(button, () => api.post("/saes/detach"), "Detach");
  if (result) {
    toast(`Detached; freed ${formatBytes(result.freed_bytes)}.`, { kind: "success" });
    await refreshContext();
    refresh();
  }
}

/** The attach form: pick a layer and site, see the compatibility check, attach. */
async function openAttach(sae, area) {
  const layer = h("select", { name: "layer", "aria-label": "Layer" });
  const site = h("select", { name: "site", "aria-label": "Site" }, ATTACH_SITES.map(([v, text]) => h("option", { value: v }, text)));
  const dtype = h("select", { name: "dtype", "aria-label": "Weights dtype" }, ATTACH_DTYPES.map(([v, text]) => h("option", { value: v }, text)));
  const overcommit = h("input", { type: "checkbox", name: "allow_overcommit" });
  const result = h("div", { class: "compat", "aria-live": "polite" }, "Checking compatibility…");
  const attach = h("button", { class: "primary", type: "submit" }, "Attach");
  const form = h("form", { class: "grid-form", "aria-label": `Attach ${sae.name}` },
    field("Layer", layer), field("Site", site), field("Weights dtype", dtype),
    h("label", { class: "row" }, overcommit, " Attach even if the memory check says it does not fit"),
    attachedSae ? h("p", { class: "muted" }, `Replaces ${attachedSae.name}, attached at ${attachedSae.attached_hook_name}, once this one has loaded.`) : null,
    result,
    h("div", { class: "row end" }, h("button", { class: "secondary", type: "button", onclick: () => area.replaceChildren() }, "Cancel"), attach));
  fill(area, form);
  const trained = /^blocks\.(\d+)\.hook_(resid_pre|resid_post)$/.exec(sae.hook_name || "");
  if (trained) site.value = trained[2];
  const hookName = () => (layer.value === "" ? null : `blocks.${layer.value}.hook_${site.value}`);
  const check = async () => {
    result.textContent = "Checking compatibility…";
    try {
      const hook = hookName();
      const report = await api.post(`/saes/${sae.id}/compatibility`, hook ? { hook_name: hook } : {});
      if (!layer.options.length) {
        for (let i = 0; i < report.model_num_layers; i++) layer.append(h("option", { value: String(i) }, String(i)));
        layer.value = trained ? trained[1] : String(Math.floor(report.model_num_layers / 2));
        if (!hook) return check();
      }
      fill(result,
        h("p", { class: report.compatible ? "ok" : "bad" }, report.compatible ? "✓ Compatible" : "✗ Not compatible",
          h("span", { class: "muted" }, ` with ${report.model_name} (hidden size ${report.model_d_model}, ${report.model_num_layers} layers); needs ${formatBytes(report.sae_bytes)} of ${formatBytes(report.available_bytes)} free`)),
        report.errors.map((e) => h("p", { class: "error-text" }, e.message)),
        report.warnings.map((w) => h("p", { class: "warn" }, w.message)));
    } catch (err) {
      fill(result, h("p", { class: "error-text" }, err.message));
    }
    return undefined;
  };
  form.addEventListener("change", check);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const hook = hookName();
    const body = { dtype: dtype.value };
    if (hook) body.hook_name = hook;
    if (overcommit.checked) body.allow_overcommit = true;
    if (attachedSae) {
      // One call swaps it: the new SAE loads first, and the old stays if that fails.
      if (!(await confirmDialog(`Replace ${attachedSae.name}?`, `${sae.name} is loaded first; then ${attachedSae.name} is detached and its live steering forgotten.`, "Replace"))) return;
      body.replace = true;
    }
    const done = await busy(attach, () => api.post(`/saes/${sae.id}/attach`, body), "Attach");
    if (done) {
      toast(`Attached ${sae.name} at ${done.attachment.hook_name} (${done.attachment.dtype}, ${formatBytes(done.attachment.sae_bytes)}).`, { kind: "success" });
      for (const w of done.warnings) toast(w.message, { kind: "warning" });
      await refreshContext();
      refresh();
    }
  });
  layer.focus();
  await check();
}

/** The registry finder starts filtered to the served model, searched once. */
let registryPrimed = false;
function primeRegistry() {
  const model = servedModelId();
  const filter = finders.querySelector('[aria-label="Browse the SAELens registry"] input[name=model]');
  if (registryPrimed || !model || filter.value) return;
  registryPrimed = true;
  filter.value = model;
  filter.form.requestSubmit();
}

export default {
  id: "saes",
  title: "SAEs",
  mount(panel) {
    cards = h("div", { "aria-live": "polite" });
    restoreNote = h("div");
    finders = h("div", { class: "finders" }, previewFinder(), registryFinder(), importFinder());
    panel.append(
      h("div", { class: "card" }, h("h2", {}, "Get an SAE"), finders, operations.el),
      h("div", { class: "card" }, h("h2", {}, "Cached SAEs"), restoreNote, cards),
    );
    // The served model's name arrives with the first health poll, maybe after show().
    on("health", () => panel.hidden || primeRegistry());
    // Attached or detached elsewhere, a download or upload finished, a run trained an SAE.
    const stale = new Set(["sae_attached", "sae_detached", "operation_finished", "training_run_changed", "resync"]);
    onEvent((event) => panel.hidden || !stale.has(event.type) || refresh());
    window.addEventListener("millm:show-sae", (event) => {
      highlight = event.detail;
    });
  },
  show() {
    refresh();
    operations.resume().catch(() => {});
    primeRegistry();
  },
};
