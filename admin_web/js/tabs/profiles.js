// Profiles: save the live steering under a name, edit, activate, import and
// export JSON, and the `model:profile` id chat clients use to pick one.

import { ApiError, api, listAll } from "../api.js";
import { onEvent, refreshContext, servedModelId, store } from "../store.js";
import { badge, busy, confirmDialog, emptyState, field, fill, formatNumber, formatTime, h, toast, toastError } from "../ui.js";

const NAME_PATTERN = "[A-Za-z0-9._\\-]{1,64}";
let list;

function saveForm() {
  const name = h("input", { name: "name", required: true, pattern: NAME_PATTERN, maxlength: "64", autocomplete: "off", spellcheck: "false", "aria-describedby": "profile-name-hint" });
  const description = h("input", { name: "description", autocomplete: "off" });
  const form = h("form", { class: "grid-form", "aria-label": "Save the live steering as a profile" },
    field("Profile name", name),
    field("Description", description),
    h("p", { id: "profile-name-hint", class: "muted small-text" }, "1 to 64 letters, digits, '-', '_' or '.'."),
    h("div", { class: "row end" }, h("button", { class: "primary", type: "submit" }, "Save profile")));
  name.addEventListener("input", () => name.setAttribute("aria-invalid", String(!name.validity.valid)));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = { name: name.value.trim() };
    if (description.value.trim()) body.description = description.value.trim();
    const profile = await busy(form.querySelector("[type=submit]"), () => api.post("/profiles", body), "Save profile");
    if (profile) {
      toast(`Saved profile ${profile.name} with ${profile.features.length} feature(s).`, { kind: "success" });
      form.reset();
      refresh();
    }
  });
  return form;
}

function importForm() {
  const file = h("input", { type: "file", accept: ".json,application/json", "aria-label": "Profile JSON file" });
  const go = h("button", { class: "secondary", type: "submit" }, "Import");
  const form = h("form", { class: "row wrap", "aria-label": "Import a profile" }, file, go);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (!file.files.length) {
      toast("Choose an exported profile file first.", { kind: "error" });
      return;
    }
    const text = await file.files[0].text();
    const send = (overwrite) => api.post("/profiles/import", { json: text, overwrite });
    let result;
    go.disabled = true;
    try {
      result = await send(false);
    } catch (err) {
      if (err instanceof ApiError && err.status === 409 && (await confirmDialog("Replace the profile?", `${err.message} Replace it with the imported one?`, "Replace"))) {
        result = await send(true).catch((e) => toastError(e, "Import") && null);
      } else if (!(err instanceof ApiError && err.status === 409)) {
        toastError(err, "Import");
      }
    } finally {
      go.disabled = false;
    }
    if (result) {
      toast(`Imported profile ${result.profile.name}.`, { kind: "success" });
      for (const mismatch of result.mismatches || []) toast(`Imported with a mismatch: ${mismatch.message || mismatch}`, { kind: "warning" });
      form.reset();
      refresh();
    }
  });
  return form;
}

async function refresh() {
  let profiles;
  try {
    profiles = await listAll("/profiles");
  } catch (err) {
    fill(list, h("p", { class: "error-text" }, `Could not list profiles: ${err.message}`));
    return;
  }
  if (!profiles.length) {
    fill(list, emptyState("No profiles yet", h("p", {}, "Set features in the Steering tab, then save them here under a name. Chat clients can then pick the profile as a model of its own.")));
    return;
  }
  fill(list, h("div", { class: "cards" }, profiles.map(profileCard)));
}

function profileCard(profile) {
  const chatId = `${servedModelId() || profile.model}:${profile.name}`;
  const editArea = h("div");
  return h("article", { class: `card profile-card${profile.active ? " active" : ""}`, dataset: { profile: profile.name }, "aria-label": `Profile ${profile.name}` },
    h("div", { class: "row between" }, h("h3", { class: "mono" }, profile.name), profile.active ? badge("active profile", "active-profile") : null),
    profile.description ? h("p", {}, profile.description) : null,
    h("dl", { class: "facts" },
      h("div", { class: "wide" }, h("dt", {}, "Chat model id"), h("dd", { class: "mono" }, h("code", { class: "chat-id" }, chatId), " ",
        h("button", { class: "secondary small", "aria-label": `Copy the model id ${chatId}`, onclick: () => copy(chatId) }, "Copy"))),
      h("div", { class: "wide" }, h("dt", {}, "SAE"), h("dd", { class: "mono" }, `${profile.sae.name} @ ${profile.sae.hook_name}`)),
      h("div", { class: "wide" }, h("dt", {}, "Features"), h("dd", { class: "mono" }, profile.features.length
        ? profile.features.map((f) => `#${f.index}${f.label ? ` (${f.label})` : ""} ${f.mode} ${formatNumber(f.strength)}`).join(", ")
        : "none")),
      h("div", {}, h("dt", {}, "Updated"), h("dd", {}, formatTime(profile.updated_at_unix_ms)))),
    h("div", { class: "actions" },
      profile.active
        ? h("button", { class: "secondary small", "aria-label": `Deactivate ${profile.name}`, onclick: (e) => act(e.currentTarget, "/profiles/deactivate", `Deactivated ${profile.name}.`) }, "Deactivate")
        : h("button", { class: "primary small", "aria-label": `Activate ${profile.name}`, onclick: (e) => act(e.currentTarget, `/profiles/${encodeURIComponent(profile.name)}/activate`, `${profile.name} is now the global steering.`) }, "Activate"),
      h("button", { class: "secondary small", "aria-label": `Edit ${profile.name}`, onclick: () => openEdit(profile, editArea) }, "Edit"),
      h("button", { class: "secondary small", "aria-label": `Export ${profile.name} as JSON`, onclick: (e) => busy(e.currentTarget, () => api.download(`/profiles/${encodeURIComponent(profile.name)}/export`), "Export") }, "Export"),
      h("button", {
        class: "danger small", "aria-label": `Delete ${profile.name}`,
        onclick: async (e) => {
          if (!(await confirmDialog(`Delete profile ${profile.name}?`, profile.active ? "It is active; deleting deactivates it." : "This cannot be undone."))) return;
          if (await busy(e.currentTarget, () => api.del(`/profiles/${encodeURIComponent(profile.name)}`), "Delete")) {
            toast(`Deleted ${profile.name}.`, { kind: "success" });
            refresh();
            refreshContext();
          }
        },
      }, "Delete")),
    editArea);
}

async function act(button, path, message) {
  if (await busy(button, () => api.post(path), "Profile")) {
    toast(message, { kind: "success" });
    refresh();
    refreshContext();
  }
}

function openEdit(profile, area) {
  const description = h("input", { value: profile.description || "", autocomplete: "off" });
  const replace = h("input", { type: "checkbox" });
  const live = store.steering ? store.steering.live.features.length : 0;
  const form = h("form", { class: "grid-form", "aria-label": `Edit ${profile.name}` },
    field("Description", description),
    h("label", { class: "check" }, replace, ` Replace its features with the ${live} live feature(s) from Steering`),
    h("div", { class: "row end" }, h("button", { class: "secondary", type: "button", onclick: () => area.replaceChildren() }, "Cancel"), h("button", { class: "primary", type: "submit" }, "Save changes")));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = { description: description.value.trim() };
    if (replace.checked) body.features = store.steering.live.features;
    if (await busy(form.querySelector("[type=submit]"), () => api.patch(`/profiles/${encodeURIComponent(profile.name)}`, body), "Edit")) {
      toast(`Updated ${profile.name}.`, { kind: "success" });
      refresh();
    }
  });
  fill(area, form);
  description.focus();
}

async function copy(text) {
  try {
    await navigator.clipboard.writeText(text);
    toast(`Copied ${text}.`);
  } catch {
    toast(`Copy this id by hand: ${text}`);
  }
}

export default {
  id: "profiles",
  title: "Profiles",
  mount(panel) {
    list = h("div", { "aria-live": "polite" });
    panel.append(
      h("div", { class: "card" }, h("h2", {}, "Save the live steering"), saveForm(), h("h3", {}, "Import a profile"), importForm()),
      h("div", { class: "card" }, h("h2", {}, "Profiles"), list));
    const stale = new Set(["profile_changed", "sae_attached", "sae_detached", "resync"]);
    onEvent((event) => panel.hidden || !stale.has(event.type) || refresh());
  },
  async show() {
    await refreshContext();
    refresh();
  },
};
