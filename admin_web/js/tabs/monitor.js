// Monitor: live activations of all traffic over the monitoring WebSocket, tokens
// shaded by a chosen feature, the most active features with sparklines, history
// statistics and export.

import { api, openSocket } from "../api.js";
import { refreshContext, store } from "../store.js";
import { busy, emptyState, field, fill, formatNumber, h, shade, sparkline, toast } from "../ui.js";

const MAX_REQUESTS = 8;
const RECENT_TOKENS = 60;
const TOP_ROWS = 12;

let root;
let socket = null;
let paused = false;
let selection = { features: [], top_k: 10 };
let highlight = "top";
const requests = new Map(); // request_id -> {source, tokens}
const totals = new Map(); // feature index -> {count, sum, max}
let recent = []; // per token: Map(feature -> value), newest last
let dropped = 0;
let renderQueued = false;
let els = {};

function resetData() {
  requests.clear();
  totals.clear();
  recent = [];
  dropped = 0;
}

function connect() {
  disconnect();
  socket = openSocket("/monitoring/stream", {
    onOpen: (ws) => {
      ws.send(JSON.stringify({ ...selection, paused }));
      setConnection("live");
    },
    onFrame: (message) => {
      if (message.type === "error") {
        toast(`Monitoring stopped: ${message.error.message}`, { kind: "error", advice: message.error.code === "no_sae_attached" ? "Attach an SAE in the SAEs tab." : "" });
        return;
      }
      dropped = message.dropped_frames;
      addFrame(message.frame);
    },
    onClose: (event) => {
      if (socket && event.code !== 1000) setConnection(`closed (${event.code})`);
      socket = null;
    },
  });
}

function disconnect() {
  if (socket) {
    const s = socket;
    socket = null;
    s.close(1000);
  }
}

function send(control) {
  if (socket && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify(control));
}

function setConnection(text) {
  if (els.connection) els.connection.textContent = text;
}

function addFrame(frame) {
  let entry = requests.get(frame.request_id);
  if (!entry) {
    entry = { source: frame.source, tokens: [] };
  } else {
    requests.delete(frame.request_id); // re-insert: the Map keeps recency order
  }
  requests.set(frame.request_id, entry);
  while (requests.size > MAX_REQUESTS) requests.delete(requests.keys().next().value);
  for (const token of frame.tokens) {
    entry.tokens.push(token);
    // The first position is an outlier on most models (attention sink): it would top
    // every table without saying anything about the text.
    if (token.position === 0) continue;
    const values = new Map();
    for (const f of [...token.top, ...token.features]) values.set(f.index, f.value);
    for (const [index, value] of values) {
      if (value <= 0) continue;
      const t = totals.get(index) || { count: 0, sum: 0, max: 0 };
      t.count += 1;
      t.sum += value;
      t.max = Math.max(t.max, value);
      totals.set(index, t);
    }
    recent.push(values);
  }
  if (recent.length > RECENT_TOKENS) recent = recent.slice(-RECENT_TOKENS);
  queueRender();
}

function queueRender() {
  if (renderQueued) return;
  renderQueued = true;
  requestAnimationFrame(() => {
    renderQueued = false;
    renderLive();
  });
}

function tokenValue(token) {
  if (highlight === "top") return token.top.length ? token.top[0] : null;
  const index = Number(highlight);
  return token.features.find((f) => f.index === index) || token.top.find((f) => f.index === index) || { index, value: 0 };
}

function renderLive() {
  els.dropped.textContent = dropped ? `${dropped} frames dropped (viewer too slow)` : "";
  if (!requests.size) {
    fill(els.traffic, h("p", { class: "muted" }, "Waiting for traffic. Send a chat request and its tokens appear here."));
  } else {
    // The first position's activations are outliers on most models; scaling by them
    // would leave every other token unshaded.
    const max = Math.max(1e-9, ...[...requests.values()].flatMap((r) => r.tokens.filter((t) => t.position > 0).map((t) => (tokenValue(t) || { value: 0 }).value)));
    fill(els.traffic, [...requests.entries()].reverse().map(([id, entry]) =>
      h("article", { class: "request", dataset: { requestId: id }, "aria-label": `Request ${id}` },
        h("div", { class: "muted mono small-text" }, `${id} · ${entry.source} · ${entry.tokens.length} tokens`),
        h("p", { class: "tokens mono" }, entry.tokens.map((token) => {
          const v = tokenValue(token);
          const span = h("span", { class: "tok", title: v ? `feature ${v.index}: ${formatNumber(v.value)}` : "no active feature" }, token.token);
          span.style.backgroundColor = shade(v ? v.value / max : 0);
          return span;
        })))));
  }
  // Ranked by total activation: features that fire often and hard, not one-off spikes.
  const rows = [...totals.entries()].sort((a, b) => b[1].sum - a[1].sum).slice(0, TOP_ROWS);
  fill(els.top, rows.length
    ? h("table", { class: "data" },
        h("caption", {}, "Since this view opened, by total activation; the first position of each prompt is left out."),
        h("thead", {}, h("tr", {}, ["Feature", "Tokens active", "Max", "Mean", `Last ${RECENT_TOKENS} tokens`, ""].map((c) => h("th", { scope: "col" }, c)))),
        h("tbody", {}, rows.map(([index, t]) => h("tr", {},
          h("td", { class: "mono" }, `#${index}`),
          h("td", { class: "mono" }, t.count),
          h("td", { class: "mono" }, formatNumber(t.max)),
          h("td", { class: "mono" }, formatNumber(t.sum / t.count)),
          h("td", {}, sparkline(recent.map((m) => m.get(index) || 0), `Activation of feature ${index} over the last ${recent.length} tokens`)),
          h("td", {}, h("button", { class: "secondary small", "aria-label": `Highlight feature ${index}`, onclick: () => watchFeature(index) }, "Highlight"))))))
    : h("p", { class: "muted" }, "No activations yet."));
}

function watchFeature(index) {
  if (!selection.features.includes(index)) {
    selection.features = [...selection.features, index].slice(-64);
    els.features.value = selection.features.join(", ");
    send({ features: selection.features });
  }
  highlight = String(index);
  renderHighlightChoices();
  queueRender();
}

function renderHighlightChoices() {
  fill(els.highlight, h("option", { value: "top" }, "the most active feature"), selection.features.map((i) => h("option", { value: String(i) }, `feature ${i}`)));
  els.highlight.value = highlight;
}

function controls() {
  els.features = h("input", { placeholder: "e.g. 12, 345", class: "mono", autocomplete: "off", "aria-describedby": "monitor-features-hint" });
  const topK = h("input", { type: "number", min: "0", max: "64", value: String(selection.top_k), class: "mono narrow" });
  els.highlight = h("select", {});
  const pause = h("button", { type: "button", class: "secondary", "aria-pressed": "false" }, "Pause");
  const form = h("form", { class: "row wrap", "aria-label": "Monitoring selection" },
    field("Features to follow", els.features),
    field("Top features per token", topK),
    field("Shade tokens by", els.highlight),
    h("button", { class: "primary", type: "submit" }, "Apply"), pause,
    h("p", { id: "monitor-features-hint", class: "muted small-text" }, "Up to 64 feature indices, separated by commas."));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const parts = els.features.value.split(/[\s,]+/).filter(Boolean);
    const indices = parts.map(Number);
    if (indices.some((i) => !Number.isInteger(i) || i < 0) || indices.length > 64) {
      els.features.setAttribute("aria-invalid", "true");
      toast("Features must be up to 64 whole numbers, 0 or more.", { kind: "error" });
      return;
    }
    els.features.removeAttribute("aria-invalid");
    selection = { features: indices, top_k: Number(topK.value) };
    if (!indices.includes(Number(highlight))) highlight = "top";
    renderHighlightChoices();
    send(selection);
  });
  els.highlight.addEventListener("change", () => {
    highlight = els.highlight.value;
    queueRender();
  });
  pause.addEventListener("click", () => {
    paused = !paused;
    pause.setAttribute("aria-pressed", String(paused));
    pause.textContent = paused ? "Resume" : "Pause";
    send({ paused });
    setConnection(paused ? "paused" : "live");
  });
  renderHighlightChoices();
  return form;
}

function historyCard() {
  const record = h("input", { type: "checkbox", "aria-describedby": "record-hint" });
  const stats = h("div", { "aria-live": "polite" });
  const refreshStats = async (button) => {
    const data = await busy(button, () => api.get("/monitoring/statistics?limit=20"), "Statistics");
    if (!data) return;
    fill(stats, data.data.length
      ? h("table", { class: "data" },
          h("caption", {}, `${formatNumber(data.tokens)} tokens recorded`),
          h("thead", {}, h("tr", {}, ["Feature", "Active on", "Fraction", "Min", "Mean", "Max"].map((c) => h("th", { scope: "col" }, c)))),
          h("tbody", {}, data.data.map((s) => h("tr", {}, [`#${s.index}`, s.count, `${(s.fraction_active * 100).toFixed(2)}%`, formatNumber(s.min), formatNumber(s.mean), formatNumber(s.max)].map((v) => h("td", { class: "mono" }, String(v)))))))
      : h("p", { class: "muted" }, "Nothing recorded yet: switch recording on and send some requests."));
  };
  record.addEventListener("change", async () => {
    const config = await busy(record, () => api.put("/monitoring/config", { record_history: record.checked }), "Recording");
    if (config) toast(config.record_history ? "Recording every request's activations." : "Recording stopped.");
    else record.checked = !record.checked;
  });
  api.get("/monitoring/config").then((c) => (record.checked = c.record_history)).catch(() => {});
  const refreshButton = h("button", { class: "secondary", onclick: (e) => refreshStats(e.currentTarget) }, "Refresh statistics");
  return h("div", { class: "card" }, h("h2", {}, "History"),
    h("div", { class: "row wrap" },
      h("label", { class: "check" }, record, " Record history"),
      refreshButton,
      h("button", { class: "secondary", onclick: (e) => busy(e.currentTarget, () => api.download("/monitoring/export?format=json"), "Export") }, "Export JSON"),
      h("button", { class: "secondary", onclick: (e) => busy(e.currentTarget, () => api.download("/monitoring/export?format=csv"), "Export") }, "Export CSV"),
      h("button", { class: "danger", onclick: async (e) => {
        if (await busy(e.currentTarget, () => api.del("/monitoring/history"), "Clear")) {
          toast("History cleared.");
          stats.replaceChildren();
        }
      } }, "Clear history")),
    h("p", { id: "record-hint", class: "muted small-text" }, "Recording keeps the activations of every request for statistics and export, whether or not this page is open."),
    stats);
}

function render() {
  if (!store.attachment) {
    fill(root, emptyState("No SAE attached",
      h("p", {}, "Monitoring shows which SAE features fire on live traffic. Attach an SAE first."),
      h("button", { class: "primary", onclick: () => window.dispatchEvent(new CustomEvent("millm:goto", { detail: "saes" })) }, "Go to SAEs")));
    return false;
  }
  els.connection = h("span", { class: "badge state-running", "aria-live": "polite" }, "connecting");
  els.dropped = h("span", { class: "muted small-text" });
  els.traffic = h("div", { class: "traffic", "aria-label": "Recent requests" });
  els.top = h("div");
  fill(root,
    h("div", { class: "card" },
      h("div", { class: "row between" }, h("h2", {}, "Live activations ", h("span", { class: "muted mono" }, `${store.sae.name} @ ${store.attachment.hook_name}`)), h("div", {}, els.connection, " ", els.dropped)),
      controls()),
    h("div", { class: "split" },
      h("div", { class: "card" }, h("h2", {}, "Recent traffic"), els.traffic),
      h("div", { class: "card" }, h("h2", {}, "Top features"), els.top)),
    historyCard());
  renderLive();
  return true;
}

export default {
  id: "monitor",
  title: "Monitor",
  mount(panel) {
    root = panel;
  },
  async show() {
    await refreshContext();
    resetData();
    if (render()) connect();
  },
  hide() {
    disconnect();
  },
};
