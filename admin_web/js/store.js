// What several tabs show at once (the served model, the attached SAE, the steering),
// refreshed from the API and announced to whoever listens. The events WebSocket
// (/api/v1/events) says when something changed, whoever changed it; polling is only
// the fallback while it is down.

import { api, openSocket } from "./api.js";

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

// ---------------------------------------------------------------- events

export const events = {
  connected: false, // the events WebSocket is open
  lastSequence: 0, // the newest event seen; a reconnect resumes after it
};
const eventListeners = new Set();
const RECONNECT_MIN_MS = 500;
const RECONNECT_MAX_MS = 30000;
// What each event kind makes stale in the store; other kinds only reach `onEvent`.
const CONTEXT_EVENTS = new Set(["sae_attached", "sae_detached", "steering_changed", "profile_changed"]);
let contextTimer = null;

/** Calls `listener(event)` with every event frame (training runs, operations, ...). */
export function onEvent(listener) {
  eventListeners.add(listener);
}

/** Several events of one change (a detach clears the steering too) cost one refresh. */
function refreshContextSoon() {
  if (contextTimer) return;
  contextTimer = setTimeout(() => {
    contextTimer = null;
    refreshContext();
  }, 30);
}

function handle(event) {
  if (event.type === "error") return; // the socket closes next, and reconnects
  if (typeof event.sequence === "number") events.lastSequence = event.sequence;
  if (event.type === "resync" || event.type === "model_state_changed") {
    refreshHealth();
    refreshContext();
  } else if (CONTEXT_EVENTS.has(event.type)) {
    refreshContextSoon();
  }
  for (const listener of eventListeners) listener(event);
}

/** Follows /api/v1/events, reconnecting with backoff and resuming with `?after=`. */
export function followEvents() {
  let delay = RECONNECT_MIN_MS;
  const connect = () => {
    const after = events.lastSequence ? `?after=${events.lastSequence}` : "";
    openSocket(`/events${after}`, {
      onOpen: () => {
        delay = RECONNECT_MIN_MS;
        events.connected = true;
        document.documentElement.dataset.events = "live";
        // Without a cursor nothing is replayed: what changed before the socket opened
        // is read once more (a cursor's gap is replayed, or answered with a resync).
        if (!after) {
          refreshHealth();
          refreshContext();
        }
      },
      onFrame: handle,
      onClose: () => {
        events.connected = false;
        document.documentElement.dataset.events = "polling";
        setTimeout(connect, delay);
        delay = Math.min(delay * 2, RECONNECT_MAX_MS);
      },
    });
  };
  connect();
}
