// New predictions: drop or pick images or .zip files, choose best/last and thresholds, see the
// results, download them as zip / JSON / CSV. Many files go in several requests, for real progress.

import { ApiError, upload } from "./api.js";
import { $, bytes, clear, h, num, scoreBar } from "./dom.js";
import { chunk, dropzone, isImage, isZip } from "./files.js";
import { showError, showMessage } from "./messages.js";
import { parseThreshold } from "./thresholds.js";

const MAX_SHOWN = 500;

export class UploadPanel {
  /** Wires the controls once; `use()` follows the model the page opened, `setModels()` fills the select. */
  constructor() {
    this.th = null;
    this.models = []; // the GET /models rows, for the select and each model's labels
    this.files = [];
    this.results = [];
    this.previews = [];
    this.used = null; // {fields, files} the shown results were made from, reused for downloads
    this.controller = null;
    this.maxFiles = 32;
    this.maxBytes = 16 << 20;
    this.wire();
  }

  /** The page opened the model of `summary`: predict with it unless the person picks another. */
  use(summary, thresholds) {
    this.th = thresholds;
    const serving = summary.serving || {};
    this.maxFiles = Math.min(serving.max_files || 32, 32);
    this.maxBytes = Math.min(0.8 * (serving.max_request_bytes || 32 << 20), 16 << 20);
    const select = $("#upload-model");
    if (![...select.options].some((o) => o.value === summary.tag)) {
      select.append(h("option", { value: summary.tag, text: summary.tag }));
    }
    select.value = summary.tag;
    $("#upload-which").value = thresholds.which;
    thresholds.onChange(() => {
      // follow the page's best/last switch, not every threshold change
      if (thresholds === this.th && thresholds.which !== this.which) {
        $("#upload-which").value = this.which = thresholds.which;
      }
    });
    this.which = thresholds.which;
    this.syncModel();
  }

  /** The GET /models rows that can be served, newest first. */
  setModels(rows) {
    this.models = rows.filter((row) => !row.error);
    const select = $("#upload-model");
    const chosen = select.value;
    clear(select);
    for (const row of this.models) select.append(h("option", { value: row.tag, text: row.tag }));
    if (!chosen) return;
    if (!this.models.some((row) => row.tag === chosen)) {
      select.append(h("option", { value: chosen, text: chosen }));
    }
    select.value = chosen;
  }

  /** The labels of the chosen model: from /models, or the opened model's. */
  labels() {
    const tag = $("#upload-model").value;
    if (this.th && tag === this.th.tag) return this.th.labels;
    return this.models.find((row) => row.tag === tag)?.labels || [];
  }

  wire() {
    const input = $("#file-input");
    dropzone($("#dropzone"), input, (given) => this.add(given.map((g) => g.file)));
    input.addEventListener("change", (e) => {
      this.add([...e.target.files]);
      e.target.value = "";
    });
    $("#upload-model").addEventListener("change", () => this.syncModel());
    $("#upload-mode").addEventListener("change", () => this.syncMode());
    $("#predict-btn").addEventListener("click", () => this.predict());
    $("#clear-btn").addEventListener("click", () => this.clearAll());
    $("#cancel-btn").addEventListener("click", () => this.controller?.abort());
    for (const button of document.querySelectorAll("#results-bar [data-format]")) {
      button.addEventListener("click", () => this.download(button.dataset.format));
    }
  }

  /** Another model picked: its own labels "per label"; "as on this page" for the opened model only. */
  syncModel() {
    const opened = Boolean(this.th) && $("#upload-model").value === this.th.tag;
    const page = $('#upload-mode option[value="page"]');
    page.disabled = !opened;
    if (!opened && $("#upload-mode").value === "page") $("#upload-mode").value = "saved";
    this.renderCustomInputs();
    this.syncMode();
  }

  add(files) {
    const ok = files.filter((f) => isZip(f) || isImage(f));
    const skipped = files.filter((f) => !ok.includes(f));
    if (skipped.length) {
      showMessage(`Skipped ${skipped.map((f) => f.name).join(", ")}: not an image or a .zip`, { kind: "info" });
    }
    this.files.push(...ok);
    this.syncFiles();
  }

  clearAll() {
    this.files = [];
    this.results = [];
    this.used = null;
    for (const url of this.previews) URL.revokeObjectURL(url);
    this.previews = [];
    clear($("#results"));
    $("#results-bar").hidden = true;
    this.syncFiles();
  }

  syncFiles() {
    const n = this.files.length;
    const total = this.files.reduce((sum, f) => sum + f.size, 0);
    const zips = this.files.filter(isZip).length;
    $("#file-summary").textContent = n
      ? `${n} file${n > 1 ? "s" : ""} (${bytes(total)})${zips ? `, ${zips} zip` : ""}: ` +
        this.files.slice(0, 5).map((f) => f.name).join(", ") + (n > 5 ? ", …" : "")
      : "no files chosen";
    $("#predict-btn").disabled = !n || Boolean(this.controller);
    $("#clear-btn").disabled = !n;
  }

  renderCustomInputs() {
    const box = clear($("#upload-custom"));
    for (const label of this.labels()) {
      box.append(
        h("label", {}, label, h("input", { type: "number", min: 0, max: 1, step: 0.01, "data-label": label })),
      );
    }
  }

  syncMode() {
    const mode = $("#upload-mode").value;
    $("#upload-one-box").hidden = mode !== "one";
    $("#upload-custom").hidden = mode !== "custom";
    if (mode === "custom") {
      // the opened model: start from the page's thresholds; another: blank, its saved ones apply
      const opened = $("#upload-model").value === this.th?.tag;
      const current = opened ? this.th.current($("#upload-which").value) : {};
      for (const input of document.querySelectorAll("#upload-custom input")) {
        const value = current[input.dataset.label];
        if (input.value === "" && value !== undefined) input.value = Number(value).toFixed(4);
      }
    }
  }

  /** The form fields besides the images: model, which, and threshold or thresholds. Throws on a bad value. */
  options() {
    const model = $("#upload-model").value;
    const which = $("#upload-which").value;
    const mode = $("#upload-mode").value;
    const fields = [
      ["model", model],
      ["which", which],
    ];
    if (mode === "one") fields.push(["threshold", String(parseThreshold($("#upload-one").value))]);
    if (mode === "page") fields.push(["thresholds", JSON.stringify(this.th.current(which))]);
    if (mode === "custom") {
      const values = {};
      for (const input of document.querySelectorAll("#upload-custom input")) {
        if (input.value !== "") values[input.dataset.label] = parseThreshold(input.value);
      }
      fields.push(["thresholds", JSON.stringify(values)]);
    }
    return fields;
  }

  form(files, fields) {
    const form = new FormData();
    for (const [name, value] of fields) form.append(name, value);
    for (const file of files) form.append("images", file, file.name);
    return form;
  }

  progress(fraction, text) {
    $("#upload-progress").hidden = fraction === null;
    if (fraction === null) return;
    const bar = $("#upload-bar");
    if (fraction === undefined) bar.removeAttribute("value"); // indeterminate: the server is scoring
    else bar.value = fraction;
    $("#upload-status").textContent = text;
  }

  async predict() {
    let fields;
    try {
      fields = this.options();
    } catch (err) {
      showError(err);
      return;
    }
    const files = [...this.files];
    const groups = chunk(files, this.maxFiles, this.maxBytes);
    const totalBytes = files.reduce((sum, f) => sum + f.size, 0) || 1;
    this.controller = new AbortController();
    this.syncFiles();
    const results = [];
    let sentBefore = 0;
    try {
      for (const [i, group] of groups.entries()) {
        const groupBytes = group.reduce((sum, f) => sum + f.size, 0);
        const label = `request ${i + 1} of ${groups.length} · ${results.length} image(s) scored`;
        const answer = await upload("/predict", this.form(group, fields), {
          signal: this.controller.signal,
          onProgress: (sent, total, phase) => {
            const done = sentBefore + (total ? (sent / total) * groupBytes : 0);
            if (phase === "waiting") this.progress(undefined, `Scoring… ${label}`);
            else this.progress(done / totalBytes, `Uploading ${bytes(done)} of ${bytes(totalBytes)} · ${label}`);
          },
        });
        const data = JSON.parse(await answer.blob.text());
        data.images.forEach((image, k) => {
          const file = !isZip(group[0]) ? group[k] : null;
          results.push({ ...image, file });
        });
        sentBefore += groupBytes;
      }
    } catch (err) {
      if (!(err instanceof ApiError && err.message === "cancelled")) showError(err, "prediction");
      this.progress(null);
      this.controller = null;
      this.syncFiles();
      return;
    }
    this.controller = null;
    this.progress(null);
    this.used = { fields, files };
    this.results = results;
    this.renderResults(Object.fromEntries(fields));
    this.syncFiles();
  }

  renderResults({ model, which }) {
    for (const url of this.previews) URL.revokeObjectURL(url);
    this.previews = [];
    const box = clear($("#results"));
    const labelled = this.results.filter((r) => r.predicted.length).length;
    $("#results-summary").textContent =
      `${this.results.length} image(s) scored by the ${which} model of ${model}; ` +
      `${labelled} with at least one label.`;
    $("#results-bar").hidden = !this.results.length;
    for (const result of this.results.slice(0, MAX_SHOWN)) box.append(this.resultCard(result));
    if (this.results.length > MAX_SHOWN) {
      box.append(h("p", { class: "muted", text: `… and ${this.results.length - MAX_SHOWN} more: download them.` }));
    }
  }

  resultCard(result) {
    let preview;
    if (result.file) {
      const url = URL.createObjectURL(result.file);
      this.previews.push(url);
      preview = h("img", { src: url, alt: result.filename, width: 160, height: 160 });
    } else {
      preview = h("div", { class: "placeholder", text: "from zip" });
    }
    const predicted = new Set(result.predicted);
    const rows = Object.entries(result.scores).map(([label, score]) =>
      h(
        "div",
        { class: "score-row" },
        h("span", { class: `name${predicted.has(label) ? " pred" : ""}`, text: label }),
        scoreBar(score, result.thresholds[label], { above: result.above[label] }),
        h("span", { class: "num small", text: num(score, 2) }),
      ),
    );
    const chips = result.predicted.length
      ? result.predicted.map((label) => h("span", { class: "chip pred", text: label }))
      : [h("span", { class: "muted small", text: "no label" })];
    return h(
      "figure",
      { class: "card result", "data-name": result.filename },
      preview,
      h("figcaption", {}, h("span", { class: "fname", title: result.filename, text: result.filename })),
      h("div", { class: "chips" }, ...chips),
      h("div", { class: "scores" }, ...rows),
    );
  }

  async download(format) {
    if (!this.used || this.controller) return;
    const { fields, files } = this.used;
    const totalBytes = files.reduce((sum, f) => sum + f.size, 0) || 1;
    this.controller = new AbortController();
    try {
      const answer = await upload("/predict_bundle", this.form(files, [...fields, ["format", format]]), {
        signal: this.controller.signal,
        onProgress: (sent, total, phase) =>
          phase === "waiting"
            ? this.progress(undefined, `Preparing ${format.toUpperCase()}…`)
            : this.progress(total ? sent / total : 0, `Uploading ${bytes(sent)} of ${bytes(totalBytes)}`),
      });
      save(answer.blob, answer.filename || `predictions.${format}`);
    } catch (err) {
      if (!(err instanceof ApiError && err.message === "cancelled")) showError(err, `download ${format}`);
    } finally {
      this.controller = null;
      this.progress(null);
      this.syncFiles();
    }
  }
}

function save(blob, filename) {
  const url = URL.createObjectURL(blob);
  const a = h("a", { href: url, download: filename, hidden: true });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60000);
}
