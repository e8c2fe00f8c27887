// Datasets (the studio): the list, and one dataset: its label counts, each with a tick box that
// decides whether training includes the label; more images or labels; its images to label in the
// page (labelling.js) and a retrain on them (retrain.js). A new dataset: newdataset.js.

import { getJSON } from "./api.js";
import { $, clear, h } from "./dom.js";
import { isImage, isZip, named } from "./files.js";
import { LabellingView } from "./labelling.js";
import { showMessage } from "./messages.js";
import { NewDataset } from "./newdataset.js";
import { RetrainPanel } from "./retrain.js";
import { datasetHref, datasetPath, progressIn, sendImages, sendLabels } from "./sending.js";

const COUNTS_DELAY_MS = 300; // labels changed: the counts are asked again once the clicks pause

/** The datasets of GET /datasets, whether it answers a list or {"datasets": [...]}. */
export function datasetsOf(answer) {
  return Array.isArray(answer) ? answer : answer?.datasets || [];
}

export class DatasetsView {
  /**
   * `onTrain(id)`: the person wants to train on dataset `id`; `limits()`: {maxFiles, maxBytes} per
   * request (the server's, as the opened model's summary gives them); `onRetrain(job)`: a retrain
   * was queued (the top bar follows it).
   */
  constructor({ onTrain, limits, onRetrain }) {
    this.onTrain = onTrain;
    this.limits = limits;
    this.rows = [];
    this.current = null;
    // Both keyed by String(id): the address gives ids as text, the API as numbers.
    this.excluded = new Map(); // dataset id -> Set(labels) left out of training
    this.problems = new Map(); // dataset id -> the last upload's problems ({file, error} rows)
    this.timer = null;
    this.labelling = new LabellingView({ onChanged: () => this.later() });
    this.retrain = new RetrainPanel({
      onStarted: (job) => onRetrain?.(job),
      onDone: (job) => this.retrained(job),
    });
    this.form = new NewDataset({
      limits,
      onCreated: async (answer) => {
        this.problems.set(String(answer.id), answer.problems || []);
        await this.load();
        location.hash = datasetHref(answer.id);
      },
    });
    this.wire();
  }

  wire() {
    $("#dataset-add-images").addEventListener("change", (e) => {
      const files = named([...e.target.files], []);
      e.target.value = "";
      this.addImages(files);
    });
    $("#dataset-add-labels").addEventListener("change", (e) => {
      const file = e.target.files[0];
      e.target.value = "";
      if (file) this.addLabels(file);
    });
    $("#dataset-train").addEventListener("click", () => this.current && this.onTrain(this.current.id));
    $("#labels-all").addEventListener("click", () => this.tickAll(true));
    $("#labels-none").addEventListener("click", () => this.tickAll(false));
  }

  /** Labels left out of training for dataset `id` (unticked). */
  excludedLabels(id) {
    return [...(this.excluded.get(String(id)) || [])];
  }

  /** The GET /datasets row of `id` (a number or its text). */
  row(id) {
    return this.rows.find((r) => String(r.id) === String(id)) || null;
  }

  async load() {
    const answer = await getJSON("/datasets", {}, "datasets");
    if (!answer) return this.rows;
    this.rows = datasetsOf(answer);
    this.renderList();
    return this.rows;
  }

  renderList() {
    const body = clear($("#datasets-list tbody"));
    $("#datasets-empty").hidden = this.rows.length > 0;
    for (const row of this.rows) {
      body.append(
        h(
          "tr",
          {
            class: `openable${String(row.id) === String(this.current?.id) ? " selected" : ""}`,
            "data-id": row.id,
            onclick: () => (location.hash = datasetHref(row.id)),
          },
          h("th", {}, h("a", { href: datasetHref(row.id), text: row.name })),
          h("td", { class: "num", text: row.images ?? "–" }),
          h("td", { class: "num", text: row.labelled ?? "–" }),
          h("td", { class: "num", text: row.labels ? Object.keys(row.labels).length : "–" }),
        ),
      );
    }
  }

  // --- one dataset ----------------------------------------------------------------------------------

  /** Show dataset `id`: its facts, problems, label counts with tick boxes and its images to label. */
  async open(id) {
    const dataset = await this.summary(id);
    if (!dataset) return;
    this.retrain.use(dataset.id, null);
    await this.labelling.open(dataset);
    this.retrain.use(dataset.id, this.labelling.model);
  }

  /** GET /datasets/{id} and show its facts and counts (not its images). */
  async summary(id) {
    const dataset = await getJSON(datasetPath(id), {}, "dataset");
    if (!dataset) return null;
    this.current = dataset;
    this.renderList();
    $("#dataset-panel").hidden = false;
    $("#dataset-title").textContent = dataset.name;
    const facts = [
      ["Images", dataset.images],
      ["Labelled", dataset.labelled],
      ["Unlabelled", dataset.unlabelled],
      ["Labels", Object.keys(dataset.labels || {}).length],
    ];
    const dl = clear($("#dataset-facts"));
    for (const [term, value] of facts) dl.append(h("dt", { text: term }), h("dd", { text: value ?? "–" }));
    $("#dataset-csv").setAttribute("href", datasetPath(id, "/labels.csv"));
    this.renderProblems(dataset.problems ?? this.problems.get(String(id)));
    this.renderCounts(dataset);
    return dataset;
  }

  /** Labels changed in the grid: the facts, counts and list again, once the clicks pause. */
  later() {
    clearTimeout(this.timer);
    const id = this.current?.id;
    this.timer = setTimeout(() => {
      if (id === undefined || String(id) !== String(this.current?.id)) return;
      Promise.all([this.load(), this.summary(id)]).catch((err) => showMessage(`dataset: ${err.message}`));
    }, COUNTS_DELAY_MS);
  }

  /** A retrain finished: the new model's suggestions and suspects, and the counts. */
  async retrained(job) {
    if (String(job.dataset ?? this.current?.id) === String(this.current?.id)) {
      await Promise.all([this.load(), this.summary(this.current.id), this.labelling.load({ keep: true })]);
    }
  }

  /** What the last upload did not use: {file, error} rows. */
  renderProblems(problems) {
    const list = clear($("#dataset-problems"));
    for (const p of problems || []) {
      list.append(h("li", { text: typeof p === "string" ? p : p.file ? `${p.file}: ${p.error}` : p.error }));
    }
  }

  renderCounts(dataset) {
    const excluded = this.excluded.get(String(dataset.id)) || new Set();
    const body = clear($("#label-counts tbody"));
    // most images first, as the person decides which labels are worth training
    const entries = Object.entries(dataset.labels || {});
    entries.sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]));
    for (const [i, [label, count]] of entries.entries()) {
      const id = `label-tick-${i}`;
      const box = h("input", { type: "checkbox", id, "data-label": label, "aria-label": `train ${label}` });
      box.checked = !excluded.has(label);
      box.addEventListener("change", () => this.tick(label, box.checked));
      body.append(
        h(
          "tr",
          { "data-label": label },
          h("td", {}, box),
          h("th", {}, h("label", { for: id }, label)),
          h("td", { class: "num", text: count }),
        ),
      );
    }
    $("#labels-empty").hidden = entries.length > 0;
    this.syncTicks();
  }

  tick(label, on) {
    const id = String(this.current.id);
    const excluded = this.excluded.get(id) || new Set();
    if (on) excluded.delete(label);
    else excluded.add(label);
    this.excluded.set(id, excluded);
    this.syncTicks();
  }

  tickAll(on) {
    for (const box of document.querySelectorAll("#label-counts input[type=checkbox]")) {
      box.checked = on;
      this.tick(box.dataset.label, on);
    }
  }

  syncTicks() {
    const total = Object.keys(this.current?.labels || {}).length;
    const left = this.excluded.get(String(this.current?.id))?.size || 0;
    $("#labels-chosen").textContent = total ? `${total - left} of ${total} label(s) will be trained` : "";
    $("#dataset-train").disabled = !total || left === total;
  }

  async addImages(given) {
    const id = this.current?.id;
    const ok = given.filter((g) => isImage(g.file) || isZip(g.file));
    if (!id || !ok.length) return;
    const answer = await sendImages(ok, { id, limits: this.limits(), progress: progressIn("dataset-add") });
    if (!answer) return;
    this.problems.set(String(id), answer.problems || []);
    showMessage(`Added ${ok.length} file(s) to ${this.current.name}.`, { kind: "info" });
    await Promise.all([this.load(), this.open(id)]);
  }

  async addLabels(file) {
    const id = this.current?.id;
    if (!id) return;
    const answer = await sendLabels(id, file);
    if (!answer) return;
    this.problems.set(String(id), answer.problems || []);
    showMessage(`Labels from ${file.name} merged into ${this.current.name}.`, { kind: "info" });
    await Promise.all([this.load(), this.open(id)]);
  }
}
