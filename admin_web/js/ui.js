// Small DOM helpers shared by every tab: element building, toasts, confirmation,
// number formatting, token shading and the SVG charts (sparkline, line chart, histogram).

const SVG_NS = "http://www.w3.org/2000/svg";
const MAX_TOASTS = 4;

/**
 * Builds an element: h("button", {class: "primary", onclick}, "Save").
 * Attributes starting with "on" become listeners; null/false attributes are left out.
 */
export function h(tag, attrs = {}, ...children) {
  const el = tag.startsWith("svg:") ? document.createElementNS(SVG_NS, tag.slice(4)) : document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") el.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key === "value" && "value" in el) el.value = value;
    else el.setAttribute(key, value === true ? "" : value);
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

let fieldCount = 0;

/**
 * A labelled control: the <label> sits beside the control (for=id) rather than
 * around it, so a select's accessible name is its label alone, not label + value.
 */
export function field(text, control) {
  if (!control.id) control.id = `field-${++fieldCount}`;
  return h("div", { class: "field" }, h("label", { for: control.id }, text), control);
}

/** Replaces an element's children. */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

export const $ = (selector, root = document) => root.querySelector(selector);

// --- toasts -------------------------------------------------------------------------

/** Shows a toast; errors stay until dismissed, others fade after a few seconds. */
export function toast(message, { kind = "info", advice = "", timeout = 5000 } = {}) {
  const region = document.getElementById("toasts");
  const close = h("button", { class: "toast-close", "aria-label": "Dismiss notification", onclick: () => item.remove() }, "×");
  const item = h(
    "div",
    { class: `toast ${kind}`, role: kind === "error" ? "alert" : "status" },
    h("div", { class: "toast-body" }, h("strong", {}, message), advice ? h("p", {}, advice) : null),
    close,
  );
  region.append(item);
  while (region.children.length > MAX_TOASTS) region.firstElementChild.remove();
  if (kind !== "error") setTimeout(() => item.remove(), timeout);
  return item;
}

/** Toasts an ApiError (or any Error) with the server's message and what to do. */
export function toastError(err, context = "") {
  const message = context ? `${context}: ${err.message}` : err.message;
  return toast(message, { kind: "error", advice: err.advice || "" });
}

/**
 * Runs an async action from a button: disables it meanwhile and toasts failures.
 * Resolves to the action's result, or undefined when it failed.
 */
export async function busy(button, action, context = "") {
  if (button) button.disabled = true;
  try {
    return await action();
  } catch (err) {
    toastError(err, context);
    return undefined;
  } finally {
    if (button && button.isConnected) button.disabled = false;
  }
}

/** A modal confirmation; resolves true when confirmed. Escape or Cancel resolve false. */
export function confirmDialog(title, text, confirmLabel = "Delete") {
  return new Promise((resolve) => {
    const dialog = h(
      "dialog",
      { class: "confirm", "aria-labelledby": "confirm-title" },
      h("h2", { id: "confirm-title" }, title),
      h("p", {}, text),
      h(
        "form",
        { method: "dialog", class: "row end" },
        h("button", { value: "cancel", class: "secondary" }, "Cancel"),
        h("button", { value: "confirm", class: "danger" }, confirmLabel),
      ),
    );
    dialog.addEventListener("close", () => {
      resolve(dialog.returnValue === "confirm");
      dialog.remove();
    });
    document.body.append(dialog);
    dialog.showModal();
    dialog.querySelector("button.secondary").focus();
  });
}

// --- formatting -----------------------------------------------------------------------

export function formatBytes(bytes) {
  if (bytes === null || bytes === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let value = Number(bytes);
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${value.toFixed(unit === 0 ? 0 : value < 10 ? 2 : 1)} ${units[unit]}`;
}

export function formatSeconds(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return "–";
  if (seconds < 60) return `${Math.round(seconds)} s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ${Math.round(seconds % 60)} s`;
  return `${Math.floor(seconds / 3600)} h ${Math.round((seconds % 3600) / 60)} min`;
}

export function formatNumber(value, digits = 3) {
  if (value === null || value === undefined) return "–";
  if (typeof value === "string") return value; // "NaN", "Infinity" from the training API
  if (Number.isInteger(value)) return value.toLocaleString("en-US");
  const abs = Math.abs(value);
  if (abs >= 1e6 || abs < 1e-4) return Number(value).toExponential(digits - 1);
  return String(Number(Number(value).toPrecision(digits))); // 8.5, not 8.50
}

export function formatTime(unixMs) {
  return unixMs ? new Date(unixMs).toLocaleString() : "–";
}

/** A coloured state badge; the colour comes from the state's name (see app.css). */
export function badge(text, state = text) {
  return h("span", { class: `badge state-${String(state).toLowerCase().replace(/[^a-z]+/g, "-")}` }, text);
}

/** A labelled progress bar; `fraction` null shows an indeterminate bar. */
export function progressBar(fraction, label) {
  const attrs = { class: "progress", role: "progressbar", "aria-label": label, "aria-valuemin": "0", "aria-valuemax": "100" };
  if (fraction !== null && fraction !== undefined) attrs["aria-valuenow"] = String(Math.round(fraction * 100));
  const bar = h("div", { class: fraction === null || fraction === undefined ? "bar indeterminate" : "bar" });
  if (fraction !== null && fraction !== undefined) bar.style.width = `${Math.min(100, fraction * 100).toFixed(1)}%`;
  return h("div", attrs, bar);
}

/** An empty-state box. */
export function emptyState(title, ...body) {
  return h("div", { class: "empty" }, h("h3", {}, title), ...body);
}

// --- activations ----------------------------------------------------------------------

// Token shading: from the panel colour to a dark orange, light text keeps AA contrast.
const SHADE_FROM = [22, 27, 34];
const SHADE_TO = [181, 70, 15];

/** The background of a token whose activation is `fraction` of the strongest shown. */
export function shade(fraction) {
  const mix = SHADE_FROM.map((c, i) => Math.round(c + (SHADE_TO[i] - c) * Math.max(0, Math.min(1, fraction))));
  return `rgb(${mix.join(",")})`;
}

/**
 * A line of tokens, each shaded by `values[i] / max` and titled by `describe(i)`.
 */
export function shadedTokens(tokens, values, max, describe) {
  const top = Math.max(1e-9, max);
  return h("p", { class: "tokens mono" }, tokens.map((token, i) => {
    const span = h("span", { class: "tok", title: describe(i) }, token);
    span.style.backgroundColor = shade((values[i] || 0) / top);
    return span;
  }));
}

// --- charts -----------------------------------------------------------------------------

/** A tiny SVG line of the last values; `label` is read out by screen readers. */
export function sparkline(values, label, width = 120, height = 28) {
  const svg = h("svg:svg", { width, height, viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": label, class: "sparkline" });
  if (values.length > 1) {
    const max = Math.max(...values, 1e-9);
    const step = width / (values.length - 1);
    const points = values.map((v, i) => `${(i * step).toFixed(1)},${(height - 2 - (v / max) * (height - 4)).toFixed(1)}`);
    svg.append(h("svg:polyline", { points: points.join(" "), fill: "none", stroke: "currentColor", "stroke-width": "1.5" }));
  }
  return svg;
}

/**
 * A line chart of `series` ({x, y} points, y may be "NaN"), with axis labels.
 * `log` plots y on a log scale (losses).
 */
export function lineChart(points, { title, width = 360, height = 160, log = false, color = "currentColor" }) {
  const usable = points.filter((p) => typeof p.y === "number" && Number.isFinite(p.y) && (!log || p.y > 0));
  const last = usable.length ? usable[usable.length - 1].y : null;
  const figure = h(
    "figure",
    { class: "chart" },
    h("figcaption", {}, title, h("span", { class: "mono value" }, last === null ? "–" : formatNumber(last, 4))),
  );
  const svg = h("svg:svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": `${title}: ${usable.length} points, latest ${last === null ? "none" : formatNumber(last, 4)}` });
  figure.append(svg);
  if (usable.length < 2) {
    svg.append(h("svg:text", { x: width / 2, y: height / 2, "text-anchor": "middle", class: "chart-empty" }, "waiting for data"));
    return figure;
  }
  const f = log ? Math.log10 : (v) => v;
  const xs = usable.map((p) => p.x);
  const ys = usable.map((p) => f(p.y));
  const [x0, x1] = [Math.min(...xs), Math.max(...xs)];
  let [y0, y1] = [Math.min(...ys), Math.max(...ys)];
  if (y1 - y0 < 1e-12) [y0, y1] = [y0 - 1, y1 + 1];
  const pad = { left: 8, right: 8, top: 8, bottom: 18 };
  const sx = (x) => pad.left + ((x - x0) / Math.max(1e-12, x1 - x0)) * (width - pad.left - pad.right);
  const sy = (y) => height - pad.bottom - ((y - y0) / (y1 - y0)) * (height - pad.top - pad.bottom);
  const path = usable.map((p, i) => `${i ? "L" : "M"}${sx(p.x).toFixed(1)},${sy(f(p.y)).toFixed(1)}`).join("");
  svg.append(
    h("svg:line", { x1: pad.left, x2: width - pad.right, y1: height - pad.bottom, y2: height - pad.bottom, class: "axis" }),
    h("svg:path", { d: path, fill: "none", stroke: color, "stroke-width": "2" }),
    h("svg:text", { x: pad.left, y: height - 4, class: "chart-tick" }, `step ${x0}`),
    h("svg:text", { x: width - pad.right, y: height - 4, "text-anchor": "end", class: "chart-tick" }, `step ${x1}`),
  );
  return figure;
}

/**
 * A histogram: one bar per bin between `edges` (one more than `counts`), with the
 * first and last edge under the axis.
 */
export function histogram(edges, counts, { title, width = 720, height = 180 }) {
  const total = counts.reduce((a, b) => a + b, 0);
  const figure = h("figure", { class: "chart" }, h("figcaption", {}, title, h("span", { class: "mono value" }, `${formatNumber(total)} activations`)));
  const summary = counts.map((c, i) => `${formatNumber(edges[i])}–${formatNumber(edges[i + 1])}: ${c}`).join(", ");
  const svg = h("svg:svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": `${title}: ${summary || "no activations"}`, class: "histogram" });
  figure.append(svg);
  const pad = { left: 8, right: 8, top: 6, bottom: 18 };
  const plotHeight = height - pad.top - pad.bottom;
  const barWidth = (width - pad.left - pad.right) / Math.max(1, counts.length);
  const most = Math.max(1, ...counts);
  counts.forEach((count, i) => {
    const barHeight = (count / most) * plotHeight;
    svg.append(h("svg:rect", { x: (pad.left + i * barWidth + 0.5).toFixed(1), y: (height - pad.bottom - barHeight).toFixed(1), width: Math.max(1, barWidth - 1).toFixed(1), height: barHeight.toFixed(1), class: "bin" },
      h("svg:title", {}, `${formatNumber(edges[i])} to ${formatNumber(edges[i + 1])}: ${count}`)));
  });
  svg.append(
    h("svg:line", { x1: pad.left, x2: width - pad.right, y1: height - pad.bottom, y2: height - pad.bottom, class: "axis" }),
    h("svg:text", { x: pad.left, y: height - 4, class: "chart-tick" }, formatNumber(edges[0] ?? 0)),
    h("svg:text", { x: width - pad.right, y: height - 4, "text-anchor": "end", class: "chart-tick" }, formatNumber(edges[edges.length - 1] ?? 0)),
  );
  return figure;
}
