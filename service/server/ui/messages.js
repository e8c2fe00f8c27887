// Readable messages: API errors and notices, shown at the top of the page until dismissed.

import { $, h } from "./dom.js";

export function showMessage(text, { kind = "error", timeoutMs = kind === "error" ? 15000 : 5000 } = {}) {
  const box = $("#messages");
  const close = h("button", { type: "button", class: "close", "aria-label": "dismiss", text: "×" });
  const item = h("div", { class: `message ${kind}` }, h("span", { text }), close);
  close.addEventListener("click", () => item.remove());
  box.append(item);
  while (box.children.length > 4) box.firstElementChild.remove();
  if (timeoutMs) setTimeout(() => item.remove(), timeoutMs);
  return item;
}

/** Show an ApiError (or any error) as "what failed: the server's message". */
export function showError(err, what = "") {
  if (!err) return;
  console.error(err);
  const where = err.field ? ` [${err.field}]` : "";
  showMessage(`${what ? `${what}: ` : ""}${err.message}${where}`);
}
