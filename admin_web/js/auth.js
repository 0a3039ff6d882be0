// The bridge's optional API key (MILLM_API_KEY). The page asks for it when a call is
// refused with 401 and keeps it in this browser's localStorage; every REST call
// sends it as a Bearer token. A WebSocket cannot carry headers from a browser, and a
// key in its URL would land in the server's access log, so it is offered as a
// subprotocol instead: `millm.key.<base64url(key)>` next to `millm.v1`, the one the
// bridge selects (base64url: a subprotocol must be an HTTP token).

import { h } from "./ui.js";

const STORAGE_KEY = "millm.api_key";

export function apiKey() {
  return localStorage.getItem(STORAGE_KEY) || "";
}

/** The subprotocols a WebSocket offers: the API version, and the key when there is one. */
export function socketProtocols() {
  const key = apiKey();
  if (!key) return ["millm.v1"];
  const bytes = new TextEncoder().encode(key);
  const base64 = btoa(String.fromCharCode(...bytes));
  const base64url = base64.replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  return ["millm.v1", `millm.key.${base64url}`];
}

let asking = false;

/** Shows the key dialog once; saving the key reloads the page with it. */
export function askForKey(message) {
  if (asking) return;
  asking = true;
  const input = h("input", { type: "password", id: "api-key-input", autocomplete: "off", required: true });
  const dialog = h(
    "dialog",
    { class: "confirm", "aria-labelledby": "api-key-title" },
    h("h2", { id: "api-key-title" }, "API key needed"),
    h("p", {}, message),
    h("p", { class: "muted" }, "It is kept in this browser only and sent with every request to this server."),
    h(
      "form",
      { method: "dialog" },
      h("div", { class: "field" }, h("label", { for: "api-key-input" }, "API key"), input),
      h("div", { class: "row end" }, h("button", { value: "save", class: "primary" }, "Save and reload")),
    ),
  );
  dialog.addEventListener("close", () => {
    if (dialog.returnValue === "save" && input.value.trim()) {
      localStorage.setItem(STORAGE_KEY, input.value.trim());
      location.reload();
    }
    asking = false;
    dialog.remove();
  });
  document.body.append(dialog);
  dialog.showModal();
  input.focus();
}
