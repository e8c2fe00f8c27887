// Train (the studio): dataset, model name and minutes; in the advanced view a validation set of
// one's own (image names, or a CSV naming them) or its size, the learning rate and the seed. The
// estimate (POST /jobs/estimate) is asked again, debounced, whenever a setting changes; Start posts
// the same body to /jobs and the top bar follows the job.

import { ApiError, sendJSON } from "./api.js";
import { token, write } from "./auth.js";
import { labelsOf, parseCsv } from "./csv.js";
import { datasetHref, datasetPath } from "./sending.js";
import { $, clear, h, radioValue } from "./dom.js";
import { duration } from "./jobs.js";
import { showMessage } from "./messages.js";

const DEBOUNCE_MS = 400;
// The settings that change the estimate; every one of them is also a field of the body.
const INPUTS = [
  "#train-name", "#train-minutes", "#train-val-size", "#train-val-images", "#train-lr", "#train-seed",
];

/** A model name from a dataset's: lowercase letters, digits, "-" (BentoML's tag rules). */
export function modelName(text) {
  const name = String(text)
    .toLowerCase()
    .replace(/[^a-z0-9_.-]+/g, "-")
    .replace(/^[-_.]+|[-_.]+$/g, "");
  return name || "model";
}

/** Image names, one per line or separated by commas; blank lines dropped. */
export function namesOf(text) {
  return [
    ...new Set(
      String(text)
        .split(/[\n,]/)
        .map((x) => x.trim())
        .filter(Boolean),
    ),
  ];
}

/** "about 2 min", or "under 1 s" */
function about(seconds) {
  return seconds < 1 ? duration(seconds) : `about ${duration(seconds)}`;
}

export class TrainView {
  /** `datasets`: the DatasetsView (its rows and tick boxes); `onStarted(job, name)` after Start. */
  constructor({ datasets, onStarted }) {
    this.datasets = datasets;
    this.onStarted = onStarted;
    this.timer = null;
    this.asked = 0; // the latest estimate asked: an older answer arriving late is dropped
    this.named = false; // the person typed a model name: stop deriving it from the dataset's
    this.wire();
  }

  wire() {
    $("#train-dataset").addEventListener("change", () => this.chooseDataset($("#train-dataset").value));
    $("#train-name").addEventListener("input", () => (this.named = true));
    for (const id of INPUTS) $(id).addEventListener("input", () => this.later());
    $("#train-val-images").addEventListener("input", () => this.syncValidation());
    for (const input of document.querySelectorAll('input[name="val-mode"]')) {
      input.addEventListener("change", () => this.syncValidation());
    }
    $("#train-val-csv").addEventListener("change", async (e) => {
      const file = e.target.files[0];
      e.target.value = "";
      if (!file) return;
      const given = [...labelsOf(parseCsv(await file.text())).keys()];
      const names = await this.datasetNames($("#train-dataset").value, given);
      $("#train-val-images").value = names.join("\n");
      showMessage(`${names.length} validation image name(s) from ${file.name}.`, { kind: "info" });
      this.syncValidation();
    });
    $("#train-start").addEventListener("click", () => this.start());
  }

  /** Show the view for dataset `id` (or the chosen / newest one). */
  show(id) {
    const rows = this.datasets.rows;
    const select = $("#train-dataset");
    const chosen = id || select.value || rows[0]?.id || "";
    clear(select);
    for (const row of rows) select.append(h("option", { value: row.id, text: row.name }));
    $("#train-empty").hidden = rows.length > 0;
    $("#train-form").hidden = !rows.length;
    if (!rows.length) return;
    select.value = String(this.datasets.row(chosen)?.id ?? rows[0].id);
    this.chooseDataset(select.value);
  }

  chooseDataset(id) {
    const row = this.datasets.row(id);
    if (!row) return;
    if (!this.named) $("#train-name").value = modelName(row.name);
    const labels = Object.keys(row.labels || {});
    const excluded = this.datasets.excludedLabels(id);
    const note = $("#train-dataset-note");
    clear(note).append(
      `${row.images ?? "?"} image(s), ${row.labelled ?? "?"} labelled; ` +
        `${labels.length - excluded.length} of ${labels.length} label(s) included `,
      h("a", { href: datasetHref(id), text: "(change)" }),
    );
    this.later(0);
  }

  /**
   * `given` names as the dataset writes them: a CSV may name "a.jpg" where the dataset has
   * "images/a.jpg" (uploaded in a zip). Names that fit no labelled image, or several, stay as given.
   */
  async datasetNames(id, given) {
    let table;
    try {
      const response = await fetch(datasetPath(id, "/labels.csv"));
      if (!response.ok) return given;
      table = labelsOf(parseCsv(await response.text()));
    } catch {
      return given;
    }
    const names = [...table.keys()];
    return given.map((name) => {
      if (table.has(name)) return name;
      const fits = names.filter((n) => n.endsWith(`/${name}`));
      return fits.length === 1 ? fits[0] : name;
    });
  }

  syncValidation() {
    const own = radioValue("val-mode") === "list";
    $("#train-val-size-box").hidden = own;
    $("#train-val-list-box").hidden = !own;
    const n = namesOf($("#train-val-images").value).length;
    $("#train-val-count").textContent = own ? `${n} image name(s)` : "";
    this.later();
  }

  /**
   * The POST /jobs body of the form; throws an Error naming the field when a value is not usable.
   * `needName`: Start needs the model's name, the estimate does not.
   */
  body({ needName = true } = {}) {
    const number = (id, field, { min, max }) => {
      const text = $(id).value.trim();
      const value = Number(text);
      if (text === "" || !Number.isFinite(value) || value < min || (max !== undefined && value > max)) {
        const range = max === undefined ? `≥ ${min}` : `in [${min}, ${max}]`;
        throw Object.assign(new Error(`${field}: give a number ${range}`), { field });
      }
      return value;
    };
    const name = $("#train-name").value.trim();
    if (!name && needName) throw Object.assign(new Error("name: give the model a name"), { field: "name" });
    const dataset = $("#train-dataset").value;
    const body = {
      dataset: Number.isInteger(Number(dataset)) ? Number(dataset) : dataset,
      name: name || undefined,
      minutes: number("#train-minutes", "minutes", { min: 0.01 }),
      include: [],
      exclude: this.datasets.excludedLabels(dataset),
      lr: number("#train-lr", "lr", { min: 0 }),
      seed: Math.round(number("#train-seed", "seed", { min: 0 })),
    };
    if (radioValue("val-mode") === "list") {
      body.val_images = namesOf($("#train-val-images").value);
      if (!body.val_images.length) {
        throw Object.assign(new Error("val_images: list the validation images, or choose a size"), {
          field: "val_images",
        });
      }
    } else {
      body.val_size = number("#train-val-size", "val_size", { min: 1, max: 90 }) / 100;
    }
    return body;
  }

  /** Ask the estimate again in a moment: typing does not send a request per key. */
  later(ms = DEBOUNCE_MS) {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.estimate(), ms);
  }

  async estimate() {
    const ticket = ++this.asked;
    const box = $("#train-estimate");
    let body;
    try {
      body = this.body({ needName: false });
    } catch (err) {
      this.showEstimateError(err.message);
      return;
    }
    box.classList.add("stale");
    let answer;
    try {
      answer = await sendJSON("POST", "/jobs/estimate", body, { token: token() });
    } catch (err) {
      if (ticket !== this.asked) return;
      if (err instanceof ApiError && err.status === 401) $("#token-box").hidden = false;
      this.showEstimateError(`${err.message}${err.field ? ` [${err.field}]` : ""}`);
      return;
    }
    if (ticket !== this.asked) return;
    this.renderEstimate(answer);
  }

  showEstimateError(text) {
    const box = clear($("#train-estimate"));
    box.classList.remove("stale");
    box.append(h("p", { class: "bad", text }));
  }

  renderEstimate(answer) {
    const box = clear($("#train-estimate"));
    box.classList.remove("stale");
    const chips = Object.entries(answer.labels || {}).map(([label, n]) =>
      h("span", { class: "chip", title: `${n} positive image(s)`, text: `${label} ${n}` }),
    );
    const known = (x) => x !== undefined && x !== null;
    const rows = [
      ["Labels", chips.length ? h("span", { class: "chips" }, ...chips) : "none"],
      [
        "Images",
        known(answer.images)
          ? `${answer.train_images} to train, ${answer.validation_images} to validate`
          : "–",
      ],
      [
        "Features to compute",
        known(answer.to_featurise)
          ? `${answer.to_featurise} image(s)` +
            (known(answer.feature_seconds) ? `, ${about(answer.feature_seconds)}` : "")
          : "–",
      ],
      ["Training", known(answer.steps) ? `${answer.steps} steps (${answer.epochs} epochs)` : "–"],
      ["In all", known(answer.seconds) ? about(answer.seconds) : "–"],
    ];
    const dl = h("dl", { class: "facts", id: "train-estimate-facts" });
    for (const [term, value] of rows) dl.append(h("dt", { text: term }), h("dd", {}, value));
    box.append(dl);
    if (answer.basis) box.append(h("p", { class: "muted small", text: `Basis: ${answer.basis}.` }));
  }

  async start() {
    let body;
    try {
      body = this.body();
    } catch (err) {
      showMessage(err.message);
      return;
    }
    const button = $("#train-start");
    button.disabled = true;
    const job = await write("starting the training", (t) => sendJSON("POST", "/jobs", body, { token: t }));
    button.disabled = false;
    if (!job) return;
    showMessage(`Training of ${body.name} started: follow it in the bar at the top.`, { kind: "info" });
    this.onStarted(job, body.name);
  }
}
