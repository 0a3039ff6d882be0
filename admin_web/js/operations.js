// Live progress of long-running operations (model and SAE downloads, SAE uploads,
// feature statistics).
// Progress comes from the operation's watch WebSocket; on a page load the list of
// unfinished operations is read again, so a reload reattaches to work under way.

import { api, openSocket } from "./api.js";
import { badge, busy, fill, formatBytes, formatNumber, formatSeconds, h, progressBar, toast } from "./ui.js";

const KIND_LABEL = { model_download: "Download", sae_download: "SAE download", sae_upload: "SAE upload", feature_statistics: "Feature statistics" };
// Feature statistics count tokens read in `bytes_done`; the others count bytes.
const AMOUNT = { feature_statistics: (n) => `${formatNumber(n)} tokens` };
const RETRY_ADVICE = {
  feature_statistics: "Check the corpus and that the SAE fits the served model, then start it again.",
};
const DOWNLOAD_ADVICE = "Check the repository id and revision (and token for private repositories), then start it again; it resumes where it stopped.";

export class OperationList {
  /**
   * `kinds`: the operation kinds this list shows; `onDone(operation)` runs when one
   * finishes (to refresh the list it fills).
   */
  constructor(kinds, onDone) {
    this.kinds = new Set(kinds);
    this.onDone = onDone;
    this.rows = new Map(); // operation id -> {row, socket}
    this.el = h("div", { class: "operations", "aria-label": "Operations in progress" });
  }

  /** Picks up unfinished operations of our kinds (after a page load or tab switch). */
  async resume() {
    const page = await api.get("/operations?unfinished_only=true&page_size=200");
    for (const operation of page.data) {
      if (this.kinds.has(operation.kind)) this.track(operation);
    }
  }

  track(operation) {
    if (this.rows.has(operation.id)) return;
    const row = h("div", { class: "operation card", dataset: { operationId: operation.id } });
    this.el.append(row);
    const entry = { row, socket: null };
    this.rows.set(operation.id, entry);
    this.render(operation);
    entry.socket = openSocket(`/operations/${encodeURIComponent(operation.id)}/watch`, {
      onFrame: (frame) => {
        if (frame.type === "operation") this.render(frame.operation);
        else toast(`Lost track of ${operation.target}: ${frame.error.message}`, { kind: "error" });
      },
      onClose: () => {
        entry.socket = null;
      },
    });
  }

  render(operation) {
    const entry = this.rows.get(operation.id);
    if (!entry) return;
    const total = operation.bytes_total;
    const fraction = total ? operation.bytes_done / total : null;
    const label = `${KIND_LABEL[operation.kind] || operation.kind} of ${operation.target}`;
    const amount = AMOUNT[operation.kind] || formatBytes;
    const details = [
      `${amount(operation.bytes_done)}${total ? ` of ${amount(total)}` : ""}`,
      operation.bytes_per_s ? `${amount(operation.bytes_per_s)}/s` : null,
      operation.eta_s !== null && !operation.done ? `ETA ${formatSeconds(operation.eta_s)}` : null,
    ].filter(Boolean);
    const cancel = operation.done
      ? null
      : h("button", {
          class: "secondary small",
          "aria-label": `Cancel ${label}`,
          onclick: (event) => busy(event.currentTarget, () => api.post(`/operations/${operation.id}/cancel`), "Cancel"),
        }, "Cancel");
    fill(
      entry.row,
      h("div", { class: "row between" },
        h("div", {}, h("strong", { class: "mono" }, operation.target), " ", badge(operation.state), " ",
          h("span", { class: "muted" }, operation.stage || "")),
        cancel),
      operation.state === "failed" ? null : progressBar(operation.done && operation.state === "succeeded" ? 1 : fraction, label),
      h("div", { class: "muted mono small-text" }, operation.error_message || details.join(" · ")),
    );
    if (operation.done) this.finish(operation);
  }

  finish(operation) {
    const entry = this.rows.get(operation.id);
    if (!entry || entry.finished) return;
    entry.finished = true;
    if (operation.state === "succeeded") {
      toast(`${KIND_LABEL[operation.kind] || "Operation"} of ${operation.target} finished.`, { kind: "success" });
      setTimeout(() => this.forget(operation.id), 4000);
    } else if (operation.state === "cancelled") {
      toast(`${KIND_LABEL[operation.kind] || "Operation"} of ${operation.target} cancelled.`);
      setTimeout(() => this.forget(operation.id), 4000);
    } else {
      toast(`${KIND_LABEL[operation.kind] || "Operation"} of ${operation.target} failed: ${operation.error_message}`, {
        kind: "error",
        advice: RETRY_ADVICE[operation.kind] || DOWNLOAD_ADVICE,
      });
      entry.row.append(h("button", { class: "secondary small", onclick: () => this.forget(operation.id) }, "Dismiss"));
    }
    this.onDone(operation);
  }

  forget(id) {
    const entry = this.rows.get(id);
    if (!entry) return;
    if (entry.socket) entry.socket.close();
    entry.row.remove();
    this.rows.delete(id);
  }
}
