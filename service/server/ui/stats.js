// Statistics panel: train and validation side by side, overall and per label, at the page's thresholds.

import { getJSON } from "./api.js";
import { $, clear, flash, h, num, pct } from "./dom.js";
import { showError } from "./messages.js";

const OVERALL = [
  ["Images", (m) => m.images],
  ["Labels (ground truth)", (m) => Object.values(m.per_label).reduce((n, l) => n + l.support, 0)],
  ["Accuracy (exact match)", (m) => pct(m.accuracy)],
  ["Label accuracy", (m) => pct(m.label_accuracy)],
  ["Precision (micro)", (m) => pct(m.micro_precision)],
  ["Recall (micro)", (m) => pct(m.micro_recall)],
  ["F1 (micro)", (m) => pct(m.micro_f1)],
  ["mAP", (m) => pct(m.map)],
];
const PER_LABEL = [
  ["support", (l) => l.support],
  ["precision", (l) => pct(l.precision)],
  ["recall", (l) => pct(l.recall)],
  ["f1", (l) => pct(l.f1)],
];

/** A table cell whose text flashes when it changes between two renderings. */
function cell(id, text, previous, attrs = {}) {
  const td = h("td", { class: "num", "data-cell": id, ...attrs, text });
  if (previous.has(id) && previous.get(id) !== String(text)) queueMicrotask(() => flash(td));
  return td;
}

function texts(table) {
  return new Map([...table.querySelectorAll("[data-cell]")].map((td) => [td.dataset.cell, td.textContent]));
}

export class StatsPanel {
  constructor() {
    this.th = null;
  }

  /** Show the model of `thresholds`: the tables empty until its first answer. */
  use(thresholds) {
    this.th = thresholds;
    clear($("#stats-overall").tBodies[0]);
    clear($("#stats-labels").tBodies[0]);
    $("#stats-profile").textContent = "";
  }

  async refresh() {
    let answer;
    try {
      answer = await getJSON("/stats", this.th.params(), "stats");
    } catch (err) {
      showError(err, "statistics");
      return;
    }
    if (answer) this.render(answer);
  }

  render(answer) {
    const { train, validation } = answer.splits;
    $("#stats-profile").textContent = this.th.describe();
    const overall = $("#stats-overall");
    const before = texts(overall);
    const body = clear(overall.tBodies[0]);
    for (const [name, value] of OVERALL) {
      body.append(
        h(
          "tr",
          {},
          h("th", { text: name }),
          cell(`train:${name}`, value(train), before),
          cell(`validation:${name}`, value(validation), before),
        ),
      );
    }
    const perLabel = $("#stats-labels");
    const beforeLabels = texts(perLabel);
    const rows = clear(perLabel.tBodies[0]);
    const changed = new Set(answer.overridden || []);
    for (const [label, threshold] of Object.entries(answer.thresholds)) {
      const cells = [h("th", { text: label })];
      cells.push(
        cell(`t:${label}`, num(threshold), beforeLabels, {
          class: `num${changed.has(label) ? " unsaved" : ""}`,
          title: changed.has(label) ? "unsaved change" : null,
        }),
      );
      for (const [split, m] of [["train", train], ["validation", validation]]) {
        const l = m.per_label[label];
        const c = m.confusion?.[label];
        const title = c ? `TP ${c.tp} · FP ${c.fp} · FN ${c.fn} · TN ${c.tn}` : null;
        for (const [key, value] of PER_LABEL) {
          cells.push(cell(`${split}:${label}:${key}`, value(l), beforeLabels, { title }));
        }
      }
      rows.append(h("tr", { "data-label": label }, ...cells));
    }
  }
}
