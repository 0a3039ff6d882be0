// The bridge's public REST and WebSocket API, and nothing else: every call the UI
// makes goes through here, so errors always arrive as one ApiError shape.

import { apiKey, askForKey, socketProtocols } from "./auth.js";

const API = "/api/v1";

function authHeaders() {
  const key = apiKey();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

/** An error answered by the bridge (OpenAI error JSON) or a network failure. */
export class ApiError extends Error {
  constructor(status, body) {
    const error = (body && body.error) || {};
    super(error.message || `Request failed with HTTP ${status}.`);
    this.status = status;
    this.code = error.code || null;
    this.param = error.param || null;
    this.type = error.type || null;
  }

  /** What the user can do about it, from the status and code. */
  get advice() {
    if (this.status === 0) return "Check that the miLLM bridge is running, then try again.";
    if (this.status === 503) return "The inference service is busy or loading; try again in a few seconds.";
    if (this.status === 409) return "Change the conflicting state first (detach, unload or stop), then retry.";
    if (this.status === 429) return "The server is at capacity; wait a moment and retry.";
    if (this.status === 401) return "This server needs an API key.";
    if (this.status === 404) return "It may have been removed meanwhile; reload the page to see what is there now.";
    if (this.code === "incompatible_sae") return "Pick an SAE trained for the served model, or another layer.";
    if (this.param) return `Correct the field \`${this.param}\` and try again.`;
    return "";
  }
}

/** fetch with the API key; any failure (network or HTTP) becomes an ApiError. */
async function send(path, init = {}) {
  let response;
  try {
    response = await fetch(path, { ...init, headers: { ...authHeaders(), ...init.headers } });
  } catch (err) {
    throw new ApiError(0, { error: { message: `The bridge could not be reached (${err.message}).` } });
  }
  if (response.ok) return response;
  const text = await response.text();
  let data = null;
  try {
    data = JSON.parse(text);
  } catch {
    data = { error: { message: text.slice(0, 300) } };
  }
  const error = new ApiError(response.status, data);
  if (response.status === 401) askForKey(error.message);
  throw error;
}

async function request(method, path, body, { raw = false, headers = {} } = {}) {
  const init = { method, headers: { ...headers } };
  if (body !== undefined) {
    init.body = raw ? body : JSON.stringify(body);
    if (!raw) init.headers["Content-Type"] = "application/json";
  }
  const text = await (await send(path, init)).text();
  return text ? JSON.parse(text) : null;
}

/**
 * Saves a management route's file (an export). Fetched, so errors become toasts and
 * the API key goes along; `stream` hands a large file (an SAE's zip) to the browser's
 * own download instead, straight to disk, when no key is needed.
 */
async function download(path, { stream = false } = {}) {
  if (stream && !apiKey()) {
    clickLink(API + path, "");
    return;
  }
  const response = await send(API + path);
  const name = /filename="?([^";]+)"?/.exec(response.headers.get("Content-Disposition") || "");
  const url = URL.createObjectURL(await response.blob());
  clickLink(url, name ? name[1] : "download");
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

function clickLink(href, fileName) {
  const link = document.createElement("a");
  link.href = href;
  link.download = fileName;
  document.body.append(link);
  link.click();
  link.remove();
}

export const api = {
  get: (path) => request("GET", API + path),
  post: (path, body) => request("POST", API + path, body),
  put: (path, body) => request("PUT", API + path, body),
  patch: (path, body) => request("PATCH", API + path, body),
  del: (path) => request("DELETE", API + path),
  upload: (path, blob) =>
    request("POST", API + path, blob, { raw: true, headers: { "Content-Type": "application/octet-stream" } }),
  /** An OpenAI route (`/v1/...`). */
  openai: (path, body) => request("POST", path, body),
  health: async () => {
    const response = await fetch("/health");
    return response.json();
  },
  download,
};

/** Every page of a paginated list (`data` + `next_page_token`). */
export async function listAll(path, key = "data") {
  const items = [];
  let token = null;
  do {
    const sep = path.includes("?") ? "&" : "?";
    const page = await api.get(`${path}${sep}page_size=200${token ? `&page_token=${encodeURIComponent(token)}` : ""}`);
    items.push(...page[key]);
    token = page.next_page_token;
  } while (token);
  return items;
}

/**
 * Opens a management WebSocket and calls `onFrame` with each parsed JSON frame.
 * Returns the socket; `onClose(event)` runs once when it closes.
 */
export function openSocket(path, { onFrame, onClose, onOpen }) {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const socket = new WebSocket(`${scheme}://${location.host}${API}${path}`, socketProtocols());
  socket.onopen = () => onOpen && onOpen(socket);
  socket.onmessage = (event) => onFrame(JSON.parse(event.data));
  socket.onclose = (event) => onClose && onClose(event);
  return socket;
}
