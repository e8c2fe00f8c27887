// One image of the labelling grid as a card: its thumbnail, a tick box to select it, its labels as
// chips (a click removes one), the model's suggestions as dashed chips (a click accepts one), its
// suspected label errors with accept / reject, a field to add a label (new ones allowed), and its
// label history (GET /datasets/{id}/images/{image_id}, read when first opened).

import { peekJSON } from "./api.js";
import { clear, h, num } from "./dom.js";
import { suspectRow } from "./suspects.js";
import { datasetPath } from "./sending.js";

/** The short name shown under a thumbnail: the file name without its folders. */
function shortName(name) {
  return String(name).split("/").pop();
}

function labelChip(image, label, { number, doubted, onRemove }) {
  const hint = number ? ` (key ${number})` : "";
  return h(
    "button",
    {
      type: "button",
      class: `chip label${doubted ? " doubt" : ""}`,
      "data-label": label,
      "data-testid": "label-chip",
      "aria-label": `remove ${label} from ${image.name}`,
      title: `remove ${label}${hint}`,
      onclick: () => onRemove(label),
    },
    label,
    h("span", { class: "x", "aria-hidden": "true", text: "×" }),
  );
}

function suggestionChip(image, s, onAccept) {
  const score = `score ${num(s.score, 2)} ≥ threshold ${num(s.threshold, 2)}`;
  return h(
    "button",
    {
      type: "button",
      class: "chip suggestion",
      "data-label": s.label,
      "data-testid": "suggestion-chip",
      "aria-label": `accept the suggestion ${s.label} for ${image.name} (${score})`,
      title: `suggested by the model: ${score}; click to accept`,
      onclick: () => onAccept([s.label]),
    },
    `+ ${s.label}`,
    h("span", { class: "score", text: num(s.score, 2) }),
  );
}

/** The form that adds a typed or picked label (the datalist #lab-labels offers the dataset's). */
function addForm(image, onAdd) {
  const input = h("input", {
    type: "text",
    list: "lab-labels",
    autocomplete: "off",
    spellcheck: "false",
    placeholder: "add a label",
    "aria-label": `add a label to ${image.name}`,
    "data-testid": "add-label",
  });
  const form = h("form", { class: "add" }, input, h("button", { type: "submit", text: "Add" }));
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const label = input.value.trim();
    if (label) onAdd([label]);
  });
  return form;
}

/**
 * The card of `image` (an item of GET /datasets/{id}/images). `numbers`: label -> its shortcut
 * number; `on`: {remove(label), add(labels), decide(suspect, decision), pick({checked, shift}), focus()}.
 */
export function labelCard(dataset, image, { numbers, selected, current, on }) {
  const doubted = new Set((image.suspects || []).filter((s) => s.kind === "wrong").map((s) => s.label));
  const pick = h("input", {
    type: "checkbox",
    class: "pick",
    "data-testid": "lab-pick",
    "aria-label": `select ${image.name}`,
  });
  pick.checked = selected;
  pick.addEventListener("click", (e) => on.pick({ checked: pick.checked, shift: e.shiftKey }));
  const labels = (image.labels || []).map((label) =>
    labelChip(image, label, { number: numbers.get(label), doubted: doubted.has(label), onRemove: on.remove }),
  );
  const suggestions = (image.suggestions || []).filter((s) => !image.labels?.includes(s.label));
  const chips = [
    ...labels,
    ...suggestions.map((s) => suggestionChip(image, s, on.add)),
    !labels.length && !suggestions.length
      ? h("span", { class: "muted small", text: image.labelled ? "none of the labels" : "not labelled" })
      : null,
  ];
  if (suggestions.length > 1) {
    chips.push(
      h("button", {
        type: "button",
        class: "linkbutton small",
        "data-testid": "accept-suggestions",
        text: "accept all",
        onclick: () => on.add(suggestions.map((s) => s.label)),
      }),
    );
  }
  const suspects = (image.suspects || []).map((s) => suspectRow(image, s, on.decide));
  const card = h(
    "figure",
    {
      class: `card thumb lab-card${selected ? " selected" : ""}${current ? " current" : ""}`,
      "data-id": image.id,
      "data-name": image.name,
      "data-testid": "lab-card",
      "data-labelled": String(Boolean(image.labelled)),
      tabindex: current ? 0 : -1,
      "aria-label": `${image.name}: ${(image.labels || []).join(", ") || "no labels"}`,
    },
    h("div", { class: "thumb-box" }, pick, thumbnail(dataset, image)),
    h("figcaption", {}, h("span", { class: "fname", title: image.name, text: shortName(image.name) })),
    h("div", { class: "chips" }, ...chips),
    suspects.length ? h("div", { class: "suspects" }, ...suspects) : null,
    addForm(image, on.add),
    historyBox(dataset, image),
  );
  card.addEventListener("focusin", () => on.focus());
  card.addEventListener("click", (e) => {
    if (e.target !== card && e.target.tagName !== "IMG") return; // a chip, a button, the field
    if (e.shiftKey) on.pick({ checked: !pick.checked, shift: true }); // shift-click selects a range
    on.focus();
  });
  return card;
}

function thumbnail(dataset, image) {
  return h("img", {
    src: datasetPath(dataset, `/images/${encodeURIComponent(image.id)}/thumbnail`),
    alt: image.name,
    loading: "lazy",
    width: 128,
    height: 110,
  });
}

const SOURCES = { edit: "edited", bulk: "bulk edit", suspect: "suspect accepted" };

/** "csv:labels.csv" -> "labels.csv (CSV)", "edit" -> "edited". */
function sourceText(source) {
  const text = String(source || "");
  return text.startsWith("csv:") ? `${text.slice(4)} (CSV)` : SOURCES[text] || text;
}

/** A closed <details> that lists the image's label changes, newest first, once opened. */
function historyBox(dataset, image) {
  const list = h("ol", { class: "history small", "data-testid": "lab-history" });
  const summary = h("summary", { class: "small", text: "history" });
  const box = h("details", { class: "history-box" }, summary, list);
  box.addEventListener("toggle", async () => {
    if (!box.open) return;
    clear(list).append(h("li", { class: "muted", text: "reading…" }));
    try {
      const answer = await peekJSON(datasetPath(dataset, `/images/${encodeURIComponent(image.id)}`));
      const rows = [...(answer.history || [])].reverse().map((event) => {
        const when = new Date(event.at * 1000).toLocaleString();
        const labels = (event.labels || []).join(", ") || "no labels";
        return h(
          "li",
          { "data-source": event.source },
          h("span", { class: "muted", text: `v${event.version} · ${when} · ` }),
          `${sourceText(event.source)}: ${labels}`,
        );
      });
      clear(list).append(...(rows.length ? rows : [h("li", { class: "muted", text: "no label changes" })]));
    } catch (err) {
      clear(list).append(h("li", { class: "error", text: `cannot read the history (${err.message})` }));
    }
  });
  return box;
}
