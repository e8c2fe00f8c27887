// Datasets (the studio): create one from dropped or picked images, a folder or a .zip and a labels
// CSV; see its images with their labels and its label counts, each with a tick box that decides
// whether training includes the label; add images or labels later.

import { getJSON } from "./api.js";
import { countLabels, labelsFor, labelsOf, parseCsv } from "./csv.js";
import { $, bytes, clear, h } from "./dom.js";
import { dropzone, isCsv, isImage, isZip, named } from "./files.js";
import { showMessage } from "./messages.js";
import { datasetHref, datasetPath, imageCard, progressIn, sendImages, sendLabels } from "./sending.js";

const MAX_CARDS = 60;

/** The datasets of GET /datasets, whether it answers a list or {"datasets": [...]}. */
export function datasetsOf(answer) {
  return Array.isArray(answer) ? answer : answer?.datasets || [];
}

export class DatasetsView {
  /**
   * `onTrain(id)`: the person wants to train on dataset `id`; `limits()`: {maxFiles, maxBytes} per
   * request (the server's, as the opened model's summary gives them).
   */
  constructor({ onTrain, limits }) {
    this.onTrain = onTrain;
    this.limits = limits;
    this.rows = [];
    this.current = null;
    this.pending = []; // [{file, name}] chosen for the new dataset
    this.labelsFile = null;
    // Both keyed by String(id): the address gives ids as text, the API as numbers.
    this.local = new Map(); // dataset id -> Map(name -> File): thumbnails of what this page uploaded
    this.excluded = new Map(); // dataset id -> Set(labels) left out of training
    this.problems = new Map(); // dataset id -> the last upload's problems ({file, error} rows)
    this.urls = { pending: [], detail: [] };
    this.busy = false;
    this.wire();
  }

  wire() {
    const images = $("#dataset-images");
    dropzone($("#dataset-drop"), images, (given) => this.choose(given));
    images.addEventListener("change", (e) => {
      this.choose(named([...e.target.files], []));
      e.target.value = "";
    });
    $("#dataset-folder").addEventListener("change", (e) => {
      this.choose(named([...e.target.files]));
      e.target.value = "";
    });
    $("#dataset-labels").addEventListener("change", (e) => {
      this.labelsFile = e.target.files[0] || null;
      this.renderPending();
    });
    $("#dataset-name").addEventListener("input", () => this.syncCreate());
    $("#dataset-create").addEventListener("click", () => this.create());
    $("#dataset-reset").addEventListener("click", () => this.resetForm());
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

  // --- the new dataset ------------------------------------------------------------------------------

  choose(given) {
    const csvs = given.filter((g) => isCsv(g.file));
    const ok = given.filter((g) => isImage(g.file) || isZip(g.file));
    const skipped = given.filter((g) => !ok.includes(g) && !csvs.includes(g));
    if (csvs.length && !this.labelsFile) {
      this.labelsFile = csvs[0].file; // a labels CSV inside the dropped folder
      showMessage(`Using ${csvs[0].name} as the labels CSV.`, { kind: "info" });
    }
    if (skipped.length) {
      const names = skipped.slice(0, 5).map((g) => g.name);
      const text = `Skipped ${skipped.length} file(s), not an image or a .zip: ${names.join(", ")}`;
      showMessage(text, { kind: "info" });
    }
    const seen = new Set(this.pending.map((g) => g.name));
    this.pending.push(...ok.filter((g) => !seen.has(g.name)));
    this.pending.sort((a, b) => a.name.localeCompare(b.name));
    this.renderPending();
  }

  resetForm() {
    this.pending = [];
    this.labelsFile = null;
    $("#dataset-name").value = "";
    this.renderPending();
  }

  async renderPending() {
    const n = this.pending.length;
    const total = this.pending.reduce((sum, g) => sum + g.file.size, 0);
    const zips = this.pending.filter((g) => isZip(g.file)).length;
    $("#dataset-summary").textContent = n
      ? `${n} file${n > 1 ? "s" : ""} (${bytes(total)})${zips ? `, ${zips} zip` : ""}` +
        (this.labelsFile ? ` · labels: ${this.labelsFile.name}` : " · no labels CSV yet")
      : this.labelsFile
        ? `labels: ${this.labelsFile.name} · no images yet`
        : "no files chosen";
    this.syncCreate();
    let table = new Map();
    if (this.labelsFile) table = labelsOf(parseCsv(await this.labelsFile.text()));
    for (const url of this.urls.pending.splice(0)) URL.revokeObjectURL(url);
    const grid = clear($("#dataset-preview"));
    const images = this.pending.filter((g) => !isZip(g.file));
    for (const g of images.slice(0, MAX_CARDS)) {
      grid.append(imageCard(g.name, table.size ? labelsFor(table, g.name) : null, g.file, this.urls.pending));
    }
    if (images.length > MAX_CARDS) {
      grid.append(h("p", { class: "muted", text: `… and ${images.length - MAX_CARDS} more` }));
    }
  }

  syncCreate() {
    $("#dataset-create").disabled = this.busy || !this.pending.length || !$("#dataset-name").value.trim();
    $("#dataset-reset").disabled = this.busy || (!this.pending.length && !this.labelsFile);
  }

  async create() {
    const name = $("#dataset-name").value.trim();
    if (!name || !this.pending.length || this.busy) return;
    this.busy = true;
    this.syncCreate();
    const given = [...this.pending];
    let answer;
    try {
      answer = await sendImages(given, {
        create: name,
        labels: this.labelsFile,
        limits: this.limits(),
        progress: progressIn("dataset"),
      });
    } finally {
      this.busy = false;
    }
    if (!answer) return this.syncCreate();
    this.remember(answer.id, given);
    this.problems.set(String(answer.id), answer.problems || []);
    this.resetForm();
    const problems = answer.problems?.length ? `; ${answer.problems.length} problem(s), listed below` : "";
    showMessage(
      `Dataset ${answer.name} created: ${answer.images} image(s), ${answer.labelled} labelled${problems}.`,
      { kind: "info" },
    );
    await this.load();
    location.hash = datasetHref(answer.id);
  }

  remember(id, given) {
    const files = this.local.get(String(id)) || new Map();
    for (const g of given) if (!isZip(g.file)) files.set(g.name, g.file);
    this.local.set(String(id), files);
  }

  // --- one dataset ----------------------------------------------------------------------------------

  /** Show dataset `id`: its facts, problems, label counts with tick boxes and its images. */
  async open(id) {
    const dataset = await getJSON(datasetPath(id), {}, "dataset");
    if (!dataset) return;
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
    await this.renderImages(dataset);
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

  async renderImages(dataset) {
    let table = new Map();
    try {
      const response = await fetch(datasetPath(dataset.id, "/labels.csv"));
      if (response.ok) table = labelsOf(parseCsv(await response.text()));
    } catch {
      // the names and labels are a convenience: the counts above still stand
    }
    if (this.current?.id !== dataset.id) return;
    const local = this.local.get(String(dataset.id)) || new Map();
    const names = [...new Set([...table.keys(), ...local.keys()])].sort();
    for (const url of this.urls.detail.splice(0)) URL.revokeObjectURL(url);
    const grid = clear($("#dataset-gallery"));
    for (const name of names.slice(0, MAX_CARDS)) {
      grid.append(imageCard(name, labelsFor(table, name), local.get(name), this.urls.detail));
    }
    const labelled = table.size
      ? `, ${table.size} labelled (${Object.keys(countLabels(table)).length} labels)`
      : "";
    $("#dataset-gallery-note").textContent = names.length
      ? `${Math.min(names.length, MAX_CARDS)} of ${names.length} image(s) shown${labelled}`
      : "No image names to show yet: add a labels CSV.";
  }

  async addImages(given) {
    const id = this.current?.id;
    const ok = given.filter((g) => isImage(g.file) || isZip(g.file));
    if (!id || !ok.length) return;
    const answer = await sendImages(ok, { id, limits: this.limits(), progress: progressIn("dataset-add") });
    if (!answer) return;
    this.remember(id, ok);
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
