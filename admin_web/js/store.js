// What several tabs show at once (the served model, the attached SAE, the steering),
// refreshed from the API and announced to whoever listens.

import { api } from "./api.js";

export const store = {
  health: null, // GET /health
  attachment: null, // the attached SAE's attachment, or null
  sae: null, // the attached SAE's record, or null
  steering: null, // GET /api/v1/steering
};

const listeners = new Map();

export function on(event, listener) {
  if (!listeners.has(event)) listeners.set(event, new Set());
  listeners.get(event).add(listener);
}

export function emit(event) {
  for (const listener of listeners.get(event) || []) listener(store);
}

/** The id chat clients use for the served model (`GET /v1/models`' first entry). */
export function servedModelId() {
  return store.health && store.health.model;
}

/** Refreshes the attachment and steering; emits "context". */
export async function refreshContext() {
  try {
    const attachments = await api.get("/saes/attachments");
    store.attachment = attachments.data[0] || null;
    store.sae = store.attachment ? await api.get(`/saes/${store.attachment.sae_id}`) : null;
    store.steering = await api.get("/steering");
  } catch {
    // The status bar shows the bridge's state; a failed refresh keeps the last values.
  }
  emit("context");
}

export async function refreshHealth() {
  try {
    store.health = await api.health();
  } catch {
    store.health = { status: "unreachable" };
  }
  emit("health");
}
