// The new dataset form (the studio): images, a folder or a .zip dropped or picked, and a labels CSV,
// previewed with their labels before anything is sent; Create uploads them within the server's
// limits (sending.js).

import { labelsFor, labelsOf, parseCsv } from "./csv.js";
import { $, bytes, clear, h } from "./dom.js";
import { dropzone, isCsv, isImage, isZip, named } from "./files.js";
import { showMessage } from "./messages.js";
import { imageCard, progressIn, sendImages } from "./sending.js";

const MAX_CARDS = 60;

export class NewDataset {
  /**
   * `limits()`: {maxFiles, maxBytes} per request; `onCreated(answer)`: the POST /datasets answer
   * once every file is sent.
   */
  constructor({ limits, onCreated }) {
    this.limits = limits;
    this.onCreated = onCreated;
    this.pending = []; // [{file, name}] chosen for the new dataset
    this.labelsFile = null;
    this.urls = []; // object URLs of the previews
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
  }

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
    for (const url of this.urls.splice(0)) URL.revokeObjectURL(url);
    const grid = clear($("#dataset-preview"));
    const images = this.pending.filter((g) => !isZip(g.file));
    for (const g of images.slice(0, MAX_CARDS)) {
      grid.append(imageCard(g.name, table.size ? labelsFor(table, g.name) : null, g.file, this.urls));
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
    this.resetForm();
    const problems = answer.problems?.length ? `; ${answer.problems.length} problem(s), listed below` : "";
    showMessage(
      `Dataset ${answer.name} created: ${answer.images} image(s), ${answer.labelled} labelled${problems}.`,
      { kind: "info" },
    );
    await this.onCreated(answer);
  }
}
