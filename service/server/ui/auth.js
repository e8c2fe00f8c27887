// The API token for writes (saving thresholds, datasets, training): asked for once, when a write is
// refused with 401, and kept for the browser tab (sessionStorage), never in the page's address.

import { ApiError } from "./api.js";
import { $ } from "./dom.js";
import { showError } from "./messages.js";

const TOKEN_KEY = "manylabel.token";

export function initToken() {
  $("#token-input").value = sessionStorage.getItem(TOKEN_KEY) || "";
}

export function token() {
  return $("#token-input").value.trim();
}

/**
 * Run the write `send(token)`; resolves to its answer, or null when it failed (the error is shown).
 * A 401 shows the token box and asks to try again; a success keeps the token for the tab.
 */
export async function write(what, send) {
  const given = token();
  try {
    const answer = await send(given);
    if (given) sessionStorage.setItem(TOKEN_KEY, given);
    $("#token-box").hidden = true;
    return answer;
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) {
      $("#token-box").hidden = false;
      $("#token-input").focus();
      showError(err, `${what} needs the server's API token; enter it above and try again`);
    } else if (!(err instanceof ApiError && err.message === "cancelled")) {
      showError(err, what);
    }
    return null;
  }
}
