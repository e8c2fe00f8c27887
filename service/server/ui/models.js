// Trained models: every model in the store (GET /models), newest first, with its validation mAP and
// F1 for best and last; a row opens that model's views below the list.

import { getJSON } from "./api.js";
import { $, clear, h, pct } from "./dom.js";

/** "2026-01-31 14:02" in the browser's time zone. */
export function when(iso) {
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return iso || "–";
  const two = (n) => String(n).padStart(2, "0");
  return (
    `${date.getFullYear()}-${two(date.getMonth() + 1)}-${two(date.getDate())} ` +
    `${two(date.getHours())}:${two(date.getMinutes())}`
  );
}

export function modelHref(tag) {
  return `#models/${encodeURIComponent(tag)}`;
}

export class ModelsList {
  constructor() {
    this.rows = [];
    this.default = null;
    this.opened = null;
  }

  /** GET /models; resolves to {default, models} (null when superseded). */
  async load() {
    const answer = await getJSON("/models", {}, "models");
    if (!answer) return null;
    this.rows = answer.models;
    this.default = answer.default;
    this.render();
    return answer;
  }

  /** Mark `tag` as the one shown below the list. */
  select(tag) {
    this.opened = tag;
    for (const row of document.querySelectorAll("#models-list tbody tr")) {
      row.classList.toggle("selected", row.dataset.tag === tag);
      row.setAttribute("aria-current", row.dataset.tag === tag ? "true" : "false");
    }
  }

  render() {
    const body = clear($("#models-list tbody"));
    $("#models-empty").hidden = this.rows.length > 0;
    for (const row of this.rows) body.append(this.row(row));
    this.select(this.opened);
  }

  row(model) {
    const badges = [];
    if (model.tag === this.default) badges.push(h("span", { class: "chip", text: "default" }));
    if (model.loaded) badges.push(h("span", { class: "chip", title: "open on the server", text: "loaded" }));
    const quality = (which, key) => h("td", { class: "num", text: pct(model.validation?.[which]?.[key]) });
    const tag = model.tag || `${model.name}:${model.version}`;
    const name = model.error
      ? h("span", { class: "bad", title: model.error, text: model.name })
      : h("a", { href: modelHref(tag), text: model.name });
    return h(
      "tr",
      {
        "data-testid": "model-row",
        "data-tag": tag,
        class: model.error ? "broken" : "openable",
        title: model.error ? null : `open ${tag}`,
        onclick: model.error ? null : () => (location.hash = modelHref(tag)),
      },
      h("th", {}, name, " ", ...badges),
      h("td", { class: "mono", text: model.version }),
      h("td", { text: model.created ? when(model.created) : "–" }),
      model.error
        ? h("td", { colspan: 4, class: "bad small", text: model.error })
        : ["best", "last"].flatMap((which) => [quality(which, "map"), quality(which, "micro_f1")]),
      h("td", { class: "small muted", text: model.labels ? `${model.labels.length}` : "–" }),
    );
  }
}
