// Entry point: the tab strip (WAI-ARIA tabs pattern, arrow keys between tabs),
// the status bar, and the tabs themselves, each in its own module.

import { $, formatBytes, h } from "./ui.js";
import { emit, events, followEvents, on, refreshContext, refreshHealth, store } from "./store.js";
import models from "./tabs/models.js";
import saes from "./tabs/saes.js";
import features from "./tabs/features.js";
import steering from "./tabs/steering.js";
import profiles from "./tabs/profiles.js";
import monitor from "./tabs/monitor.js";
import training from "./tabs/training.js";

const TABS = [models, saes, features, steering, profiles, monitor, training];
// State changes arrive as events; these polls are the fallback while the events
// WebSocket is down. The status bar's figures (memory, queue, tokens/s) have no
// events, so /health is still read for them, less often while events flow.
const POLL_TICK_MS = 2000;
const HEALTH_POLL_MS = { live: 6000, polling: 2000 };
const CONTEXT_POLL_MS = { live: 30000, polling: 5000 };

let current = null;

function buildTabs() {
  const list = $("#tablist");
  const panels = $("#panels");
  for (const tab of TABS) {
    const button = h(
      "button",
      {
        role: "tab",
        id: `tab-${tab.id}`,
        "aria-controls": `panel-${tab.id}`,
        "aria-selected": "false",
        tabindex: "-1",
        onclick: () => select(tab.id, true),
      },
      tab.title,
    );
    list.append(button);
    const panel = h("section", { role: "tabpanel", id: `panel-${tab.id}`, "aria-labelledby": `tab-${tab.id}`, hidden: true, tabindex: "0" });
    panels.append(panel);
    tab.mount(panel);
  }
  list.addEventListener("keydown", (event) => {
    const index = TABS.findIndex((t) => t.id === current);
    const moves = { ArrowRight: index + 1, ArrowLeft: index - 1, Home: 0, End: TABS.length - 1 };
    if (!(event.key in moves)) return;
    event.preventDefault();
    const next = TABS[(moves[event.key] + TABS.length) % TABS.length];
    select(next.id, true);
    $(`#tab-${next.id}`).focus();
  });
}

function select(id, updateHash) {
  const tab = TABS.find((t) => t.id === id) || TABS[0];
  if (current === tab.id) return;
  const previous = TABS.find((t) => t.id === current);
  if (previous && previous.hide) previous.hide();
  current = tab.id;
  for (const t of TABS) {
    const selected = t.id === tab.id;
    const button = $(`#tab-${t.id}`);
    button.setAttribute("aria-selected", String(selected));
    button.tabIndex = selected ? 0 : -1;
    $(`#panel-${t.id}`).hidden = !selected;
  }
  if (updateHash) history.replaceState(null, "", `#${tab.id}`);
  tab.show();
}

/** Lets one tab send the user to another (e.g. a finished training run to its SAE). */
function goTo(id) {
  select(id, true);
  $(`#tab-${id}`).focus();
}
window.addEventListener("millm:goto", (event) => goTo(event.detail));

function renderStatus() {
  const health = store.health || {};
  const model = $("#status-model");
  model.textContent = health.model || (health.model_state ? health.model_state.toLowerCase().replace("_", " ") : health.status || "–");
  model.className = `mono ${health.status === "ok" ? "ok" : health.status === "loading" ? "warn" : "bad"}`;
  const memory = health.memory;
  $("#status-memory").textContent = memory
    ? memory.device_total_bytes
      ? `${formatBytes(memory.device_allocated_bytes)} / ${formatBytes(memory.device_total_bytes)} ${memory.device}`
      : `${formatBytes(memory.resident_bytes)} RSS`
    : "–";
  $("#status-queue").textContent = health.max_queue ? `${health.queue_depth} / ${health.max_queue}` : "–";
  const batch = health.batch;
  $("#status-tps").textContent = batch ? batch.tokens_per_second.toFixed(1) : "–";
}

function renderContext() {
  const sae = $("#status-sae");
  sae.textContent = store.sae ? `${store.sae.name} @ ${store.attachment.hook_name}` : "none attached";
  sae.className = `mono ${store.sae ? "is-attached" : "muted"}`;
  const active = store.steering && store.steering.active_profile;
  const profile = $("#status-profile");
  profile.textContent = active || "none active";
  profile.className = `mono ${active ? "is-active-profile" : "muted"}`;
}

function start() {
  buildTabs();
  on("health", renderStatus);
  on("context", renderContext);
  select(location.hash.slice(1) || TABS[0].id, false);
  window.addEventListener("hashchange", () => select(location.hash.slice(1), false));
  followEvents();
  const last = { health: Date.now(), context: Date.now() };
  const poll = (what, refresh, periods) => {
    if (Date.now() - last[what] < periods[events.connected ? "live" : "polling"] - POLL_TICK_MS / 2) return;
    last[what] = Date.now();
    refresh();
  };
  refreshHealth();
  refreshContext();
  setInterval(() => {
    poll("health", refreshHealth, HEALTH_POLL_MS);
    poll("context", refreshContext, CONTEXT_POLL_MS);
  }, POLL_TICK_MS);
  emit("started");
}

start();
