// Suspected label errors, ranked by the studio from the newest model's held-out scores: *missing* (a
// label not given that the image scores above its threshold) and *wrong* (a label given that it
// scores below). Each is shown with its score against the threshold and decided in one click:
// accept applies the edit, reject is remembered and the pair is not suggested again.

import { getJSON, sendJSON } from "./api.js";
import { write } from "./auth.js";
import { h, num, scoreBar } from "./dom.js";
import { datasetPath } from "./sending.js";


/** What accepting `s` does to the image, in words: "add car" / "remove car". */
export function acceptWords(s) {
  return `${s.kind === "missing" ? "add" : "remove"} ${s.label}`;
}

/** One suspect of `image` as a row: the kind, the label, score vs threshold, accept and reject. */
export function suspectRow(image, s, onDecide) {
  const missing = s.kind === "missing";
  const versus = `${num(s.score, 2)} ${missing ? "≥" : "<"} ${num(s.threshold, 2)}`;
  const why = missing
    ? `${s.label} is not given, but the model scores it ${num(s.score, 2)} (threshold ${num(s.threshold, 2)})`
    : `${s.label} is given, but the model scores it ${num(s.score, 2)} (threshold ${num(s.threshold, 2)})`;
  return h(
    "div",
    {
      class: `suspect ${s.kind}`,
      "data-testid": "suspect",
      "data-label": s.label,
      "data-kind": s.kind,
      title: why,
    },
    h("span", { class: "kind", text: missing ? "missing" : "wrong?" }),
    h("span", { class: `chip ${missing ? "suggestion" : "label doubt"}`, text: s.label }),
    h("span", { class: "versus small", text: versus }),
    scoreBar(s.score, s.threshold, { above: s.score >= s.threshold }),
    h("button", {
      type: "button",
      class: "accept",
      "data-testid": "suspect-accept",
      "aria-label": `accept: ${acceptWords(s)} (${image.name})`,
      title: `accept: ${acceptWords(s)}`,
      text: "✓",
      onclick: () => onDecide(s, "accept"),
    }),
    h("button", {
      type: "button",
      class: "reject",
      "data-testid": "suspect-reject",
      "aria-label": `reject: keep ${image.name} as it is for ${s.label}`,
      title: "reject: the label is right as it is; not suggested again",
      text: "✗",
      onclick: () => onDecide(s, "reject"),
    }),
  );
}

/**
 * Send one decision; resolves to {answer, image}: the image as it is after it (GET .../images/{id}),
 * or null when the write failed (the error is shown).
 */
export async function decide(dataset, image, s, decision) {
  const body = [{ image_id: image.id, label: s.label, decision }];
  const answer = await write("deciding on a suspect", (token) =>
    sendJSON("POST", datasetPath(dataset, "/suspects/decisions"), body, { token }),
  );
  if (!answer) return null;
  const path = datasetPath(dataset, `/images/${encodeURIComponent(image.id)}`);
  try {
    return { answer, image: await getJSON(path, {}, `image-${image.id}`) };
  } catch {
    return { answer, image: null }; // decided all the same: the card drops the suspect itself
  }
}

/** How many open suspects the dataset has now, and from which model; null on error. */
export async function countSuspects(dataset) {
  try {
    const answer = await getJSON(datasetPath(dataset, "/suspects"), { limit: 1 }, "suspects");
    return answer ? { n: answer.total ?? (answer.suspects || []).length, model: answer.model || null } : null;
  } catch {
    return null; // the count is a convenience: the grid's own filter still works
  }
}
