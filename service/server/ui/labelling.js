// The dataset's images as a labelling tool: a page of cards (cards.js) filtered by all / unlabelled /
// suspects and by label; one image's labels changed with PATCH .../images/{id}, the selected images'
// with POST .../images/labels (bulk.js); suggestions accepted, suspects decided (suspects.js); the
// keyboard (keys.js) moves a current image through the pages and acts on it. Every change is the
// server's at once: a reload shows it.

import { getJSON, sendJSON } from "./api.js";
import { write } from "./auth.js";
import { acceptSuggestions, labelMany, suggestedByLabel } from "./bulk.js";
import { labelCard } from "./cards.js";
import { $, clear, h } from "./dom.js";
import { numbered, renderLegend, wireKeys } from "./keys.js";
import { showError, showMessage } from "./messages.js";
import { datasetPath } from "./sending.js";
import { countSuspects, decide } from "./suspects.js";

const PAGE_SIZE = 24;
const FILTER_WORDS = { all: "", unlabelled: " unlabelled", suspects: " with suspected label errors" };

export class LabellingView {
  /** `onChanged(version)`: labels changed on the server (the counts above are stale). */
  constructor({ onChanged }) {
    this.onChanged = onChanged;
    this.id = null;
    this.query = { filter: "all", label: "", page: 1 };
    this.images = [];
    this.labels = [];
    this.model = null; // "NAME:VERSION" of the suggestions and suspects, or null
    this.selected = new Set(); // image ids, kept across pages
    this.cursor = 0; // the current image: its index on the page
    this.anchor = null; // the last image picked: shift-click picks the range from it
    this.wire();
    wireKeys(this, PAGE_SIZE);
  }

  wire() {
    $("#lab-filter").addEventListener("change", (e) => this.ask({ filter: e.target.value }));
    $("#lab-label").addEventListener("change", (e) => this.ask({ label: e.target.value }));
    $("#lab-review").addEventListener("click", () => this.ask({ filter: "suspects", label: "" }));
    $("#lab-select-page").addEventListener("change", (e) => this.pickPage(e.target.checked));
    $("#lab-bulk-label").addEventListener("input", () => this.syncBulk());
    $("#lab-bulk-label").addEventListener("keydown", (e) => e.key === "Enter" && this.bulk("add"));
    $("#lab-bulk-add").addEventListener("click", () => this.bulk("add"));
    $("#lab-bulk-remove").addEventListener("click", () => this.bulk("remove"));
    $("#lab-accept-all").addEventListener("click", () => this.acceptShown());
  }

  /** The grid is on screen (the shortcuts apply). */
  active() {
    return !$("#view-datasets").hidden && !$("#dataset-panel").hidden && this.id !== null;
  }

  /** Show dataset `dataset` (its GET /datasets/{id} answer); a new one starts on its first page. */
  async open(dataset) {
    if (String(dataset.id) !== String(this.id)) {
      this.id = dataset.id;
      this.query = { filter: "all", label: "", page: 1 };
      this.selected.clear();
      this.anchor = null;
    }
    await this.load({ keep: true });
  }

  /** Change the filter, label or page; a new filter or label forgets the selection. */
  ask({ cursor = 0, ...change }) {
    if ("filter" in change || "label" in change) {
      this.selected.clear();
      change.page = 1;
    }
    Object.assign(this.query, change);
    return this.load({ cursor });
  }

  /** GET the page; `keep`: stay on the current image, else go to image `cursor`. */
  async load({ keep = false, cursor = 0 } = {}) {
    const id = this.id;
    const { filter, label, page } = this.query;
    const params = { filter, label, page, page_size: PAGE_SIZE };
    let answer;
    try {
      answer = await getJSON(datasetPath(id, "/images"), params, "lab-images");
    } catch (err) {
      if (err.field === "label" && label) return this.ask({ label: "" }); // gone since: show them all
      showError(err, "the dataset's images");
      return;
    }
    if (!answer || String(id) !== String(this.id)) return;
    if (!answer.images?.length && page > 1 && answer.total > 0) {
      this.query.page = Math.ceil(answer.total / PAGE_SIZE); // fewer pages since the last change
      return this.load({ keep });
    }
    this.images = answer.images || [];
    this.labels = answer.labels || [];
    this.model = answer.model || null;
    this.total = answer.total ?? this.images.length;
    this.query.page = answer.page ?? page;
    const wanted = keep ? this.cursor : cursor < 0 ? this.images.length - 1 : cursor;
    this.cursor = Math.max(0, Math.min(wanted, this.images.length - 1));
    this.render();
    this.review();
  }

  render() {
    const { filter, label, page } = this.query;
    $("#lab-filter").value = filter;
    this.renderLabels();
    const grid = clear($("#dataset-gallery"));
    this.images.forEach((image, i) => grid.append(this.card(i)));
    const pages = Math.max(1, Math.ceil(this.total / PAGE_SIZE));
    const which = `${FILTER_WORDS[filter] ?? ` (${filter})`}${label ? ` labelled ${label}` : ""}`;
    $("#dataset-gallery-note").textContent = this.total
      ? `${this.total} image(s)${which}; page ${page} of ${pages}`
      : `No image${which}.`;
    $("#lab-model").textContent = this.model
      ? `suggestions and suspects from ${this.model}`
      : "train a model on it for suggestions and suspects";
    this.renderPager(pages);
    this.syncBulk();
  }

  renderLabels() {
    const select = clear($("#lab-label"));
    select.append(h("option", { value: "", text: "any" }));
    for (const label of this.labels) select.append(h("option", { value: label, text: label }));
    select.value = this.labels.includes(this.query.label) ? this.query.label : "";
    const list = clear($("#lab-labels"));
    for (const label of this.labels) list.append(h("option", { value: label }));
    renderLegend(this.labels);
  }

  renderPager(pages) {
    const nav = clear($("#lab-pages"));
    if (pages <= 1) return;
    const page = this.query.page;
    const go = (to, text) => {
      const off = to < 1 || to > pages;
      return h("button", { type: "button", text, disabled: off, onclick: () => this.ask({ page: to }) });
    };
    const where = h("span", { text: `page ${page} of ${pages}` });
    nav.append(go(page - 1, "‹ Previous"), where, go(page + 1, "Next ›"));
  }

  /** The card of the image at `i` on this page. */
  card(i) {
    const image = this.images[i];
    return labelCard(this.id, image, {
      numbers: numbered(this.labels),
      selected: this.selected.has(image.id),
      current: i === this.cursor,
      on: {
        remove: (label) => this.edit(i, { remove: [label] }),
        add: (labels) => this.edit(i, { add: labels }),
        decide: (s, decision) => this.decide(i, s, decision),
        pick: (how) => this.pick(i, how),
        focus: () => this.setCursor(i, { focus: false }),
      },
    });
  }

  /** Draw the card at `i` again after its image changed, keeping the keyboard where it was. */
  redraw(i) {
    const old = this.cardOf(this.images[i].id);
    if (!old) return;
    const focused = old.contains(document.activeElement);
    const typing = focused && document.activeElement.matches("[data-testid=add-label]");
    const card = this.card(i);
    old.replaceWith(card);
    if (typing) card.querySelector("[data-testid=add-label]").focus();
    else if (focused) card.focus();
  }

  cardOf(id) {
    return $("#dataset-gallery").querySelector(`[data-id="${CSS.escape(String(id))}"]`);
  }

  // --- changes --------------------------------------------------------------------------------------

  /** PATCH one image with {add} or {remove}; its card shows the server's answer. */
  async edit(i, change) {
    const image = this.images[i];
    const path = datasetPath(this.id, `/images/${encodeURIComponent(image.id)}`);
    const answer = await write("changing labels", (token) => sendJSON("PATCH", path, change, { token }));
    if (!answer) return;
    this.onChanged?.(answer.version);
    if (this.images[i] !== image) return; // another page since: nothing to draw
    const touched = new Set([...(change.add || []), ...(change.remove || [])]);
    this.images[i] = {
      ...image,
      labels: answer.labels,
      labelled: answer.labelled,
      suggestions: (image.suggestions || []).filter((s) => !answer.labels.includes(s.label)),
      suspects: (image.suspects || []).filter((s) => !touched.has(s.label)),
    };
    const fresh = (change.add || []).filter((label) => !this.labels.includes(label));
    if (fresh.length) {
      this.labels = [...this.labels, ...fresh];
      this.renderLabels();
    }
    this.redraw(i);
  }

  /** Add or remove the label in the bulk field for every selected image. */
  async bulk(kind) {
    const label = $("#lab-bulk-label").value.trim();
    const ids = [...this.selected];
    if (!label || !ids.length) return;
    const answer = await labelMany(this.id, ids, label, kind);
    if (!answer) return;
    const verb = kind === "add" ? "added to" : "removed from";
    showMessage(`${label} ${verb} ${answer.changed} of ${ids.length} selected image(s).`, { kind: "info" });
    this.onChanged?.(answer.version);
    await this.load({ keep: true });
  }

  /** Accept every suggestion shown on this page. */
  async acceptShown() {
    const version = await acceptSuggestions(this.id, this.images);
    if (version !== null) this.onChanged?.(version);
    await this.load({ keep: true });
  }

  async decide(i, s, decision) {
    const image = this.images[i];
    const done = await decide(this.id, image, s, decision);
    if (!done || this.images[i] !== image) return;
    const rest = (image.suspects || []).filter((x) => x.label !== s.label);
    this.images[i] = done.image || { ...image, suspects: rest };
    this.redraw(i);
    if (decision === "accept") this.onChanged?.(done.answer.version);
    this.review();
  }

  // --- selection ------------------------------------------------------------------------------------

  /** The tick box of image `i` was clicked ({checked, shift}): shift picks the range from the last one. */
  pick(i, { checked, shift }) {
    const from = shift && this.anchor !== null ? Math.min(this.anchor, i) : i;
    const to = shift && this.anchor !== null ? Math.max(this.anchor, i) : i;
    for (let j = from; j <= to; j++) this.mark(j, checked);
    this.anchor = i;
    this.syncBulk();
  }

  pickPage(on) {
    this.images.forEach((_, i) => this.mark(i, on));
    this.syncBulk();
  }

  mark(i, on) {
    const id = this.images[i]?.id;
    if (id === undefined) return;
    if (on) this.selected.add(id);
    else this.selected.delete(id);
    const card = this.cardOf(id);
    if (!card) return;
    card.classList.toggle("selected", on);
    card.querySelector(".pick").checked = on;
  }

  syncBulk() {
    const n = this.selected.size;
    $("#lab-selected").textContent = n ? `${n} selected` : "none selected";
    const label = $("#lab-bulk-label").value.trim();
    $("#lab-bulk-add").disabled = !n || !label;
    $("#lab-bulk-remove").disabled = !n || !label;
    const page = this.images.length > 0 && this.images.every((image) => this.selected.has(image.id));
    $("#lab-select-page").checked = page;
    $("#lab-accept-all").hidden = suggestedByLabel(this.images).size === 0;
  }

  // --- the keyboard ---------------------------------------------------------------------------------

  setCursor(i, { focus = true } = {}) {
    if (!this.images.length) return;
    this.cursor = Math.max(0, Math.min(i, this.images.length - 1));
    const cards = [...$("#dataset-gallery").querySelectorAll("[data-testid=lab-card]")];
    cards.forEach((card, j) => {
      card.classList.toggle("current", j === this.cursor);
      card.tabIndex = j === this.cursor ? 0 : -1;
    });
    if (focus) cards[this.cursor]?.focus();
  }

  /** The "Review suspects" button: how many the dataset has now. */
  async review() {
    const button = $("#lab-review");
    const count = this.model ? await countSuspects(this.id) : null;
    button.hidden = !count?.n || this.query.filter === "suspects";
    if (count?.n) button.textContent = `Review ${count.n} suspect(s)`;
  }
}
