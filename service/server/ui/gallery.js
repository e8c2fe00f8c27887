// Predictions panel: the stored predictions of train or validation images, filtered, sorted and paged;
// ground-truth labels in green, the others in red.

import { getJSON, query } from "./api.js";
import { $, clear, h, num, radioValue, scoreBar } from "./dom.js";
import { showError } from "./messages.js";

const PAGE_SIZE = 24;

/** The stored thumbnail of a train or validation image of the model `tag`. */
export function imageUrl(split, name, tag) {
  const path = name.split("/").map(encodeURIComponent).join("/");
  return `/image/${encodeURIComponent(split)}/${path}${query({ model: tag })}`;
}

/** Basic view: the labels above threshold (green: ground truth, red: not), then missed ground truth. */
function basicLabels(item) {
  const truth = new Set(item.true);
  const chips = item.predicted.map((label) =>
    h(
      "span",
      {
        class: `chip ${truth.has(label) ? "ok" : "bad"}`,
        title: `${truth.has(label) ? "ground truth" : "not ground truth"}, score ${num(item.scores[label])}`,
      },
      `${label} ${num(item.scores[label], 2)}`,
    ),
  );
  for (const label of item.true) {
    if (!item.predicted.includes(label)) {
      chips.push(h("span", { class: "chip ok missed", title: "ground truth, below its threshold" }, label));
    }
  }
  if (!chips.length) chips.push(h("span", { class: "muted small", text: "no label" }));
  return h("div", { class: "chips" }, ...chips);
}

/** Advanced view: every label with its score and threshold as a small bar. */
function advancedLabels(item) {
  const rows = Object.entries(item.labels).map(([label, l]) =>
    h(
      "div",
      { class: `score-row${l.correct ? "" : " wrong"}`, title: l.correct ? "correct" : "incorrect" },
      h("span", { class: `name ${l.true ? "ok" : "bad"}`, text: label }),
      scoreBar(l.score, l.threshold, { above: l.above }),
      h("span", { class: "num small", text: num(l.score, 2) }),
    ),
  );
  return h("div", { class: "scores" }, ...rows);
}

function card(item, view, tag) {
  return h(
    "figure",
    { class: `card ${item.correct ? "correct" : "incorrect"}`, "data-name": item.name },
    h("img", {
      src: imageUrl(item.split, item.name, tag),
      alt: item.name,
      loading: "lazy",
      width: 160,
      height: 160,
    }),
    h(
      "figcaption",
      {},
      h("span", { class: "verdict", title: item.correct ? "every label right" : "some label wrong" },
        item.correct ? "✓" : "✗"),
      h("span", { class: "fname", title: item.name, text: item.name }),
    ),
    view === "advanced" ? advancedLabels(item) : basicLabels(item),
  );
}

export class GalleryPanel {
  /** Wires the controls once; `use()` points the panel at a model's thresholds. */
  constructor() {
    this.th = null;
    this.enabled = false;
    this.page = 1;
    const again = () => {
      this.page = 1;
      this.refresh();
    };
    for (const id of ["#gallery-filter", "#gallery-label", "#gallery-sort"]) {
      $(id).addEventListener("change", again);
    }
    for (const input of document.querySelectorAll('input[name="gsplit"], input[name="gview"]')) {
      input.addEventListener("change", again);
    }
  }

  use(thresholds, { enabled }) {
    this.th = thresholds;
    this.enabled = enabled;
    this.page = 1;
    const label = clear($("#gallery-label"));
    label.append(h("option", { value: "", text: "any" }));
    for (const name of thresholds.labels) label.append(h("option", { value: name, text: name }));
    clear($("#gallery"));
    clear($("#gallery-pages"));
    $("#gallery-summary").textContent = "";
  }

  params() {
    return {
      ...this.th.params(),
      split: radioValue("gsplit"),
      filter: $("#gallery-filter").value,
      label: $("#gallery-label").value,
      sort: $("#gallery-sort").value,
      view: radioValue("gview"),
      page: this.page,
      page_size: PAGE_SIZE,
    };
  }

  async refresh() {
    if (!this.enabled) return;
    let answer;
    const params = this.params();
    try {
      answer = await getJSON("/predictions", params, "predictions");
    } catch (err) {
      showError(err, "predictions");
      return;
    }
    if (!answer) return;
    if (answer.pages && this.page > answer.pages) {
      this.page = answer.pages; // thresholds moved and the filter now has fewer pages
      return this.refresh();
    }
    this.render(answer, params.view);
  }

  render(answer, view) {
    const first = (answer.page - 1) * answer.page_size + 1;
    const last = first + answer.items.length - 1;
    $("#gallery-summary").textContent = answer.total
      ? `${answer.split}, ${answer.filter}${answer.label ? ` (${answer.label})` : ""}: ` +
        `images ${first}–${last} of ${answer.total}`
      : `${answer.split}, ${answer.filter}: no image`;
    const gallery = clear($("#gallery"));
    for (const item of answer.items) gallery.append(card(item, view, this.th.tag));
    this.renderPages(answer);
  }

  renderPages(answer) {
    const nav = clear($("#gallery-pages"));
    if (answer.pages <= 1) return;
    const go = (page) => () => {
      this.page = page;
      this.refresh();
    };
    const button = (text, page, disabled) =>
      h("button", { type: "button", disabled, onclick: go(page), text });
    nav.append(
      button("« first", 1, answer.page === 1),
      button("‹ previous", answer.page - 1, answer.page === 1),
      h("span", { class: "page", text: `page ${answer.page} of ${answer.pages}` }),
      button("next ›", answer.page + 1, answer.page >= answer.pages),
      button("last »", answer.pages, answer.page >= answer.pages),
    );
  }
}
