// The manylabel page: views chosen by the address's #fragment (#models/NAME:VERSION, #datasets/ID,
// #train/ID), the training job in the top bar on every view. Datasets and training are the studio's:
// on a server without them (GET /datasets answers 404) those views stay hidden and the model views
// work as before.

import { ApiError, getJSON, onBusy } from "./api.js";
import { initToken } from "./auth.js";
import { DatasetsView } from "./datasets.js";
import { $, $$ } from "./dom.js";
import { JobBar } from "./jobs.js";
import { showError, showMessage } from "./messages.js";
import { ModelView } from "./model.js";
import { ModelsList, modelHref } from "./models.js";
import { TrainView } from "./train.js";

const VIEWS = ["models", "datasets", "train"];

/** "#datasets/abc" -> {view: "datasets", arg: "abc"}; an unknown view is the models'. */
export function route(hash) {
  const [view, ...rest] = hash.replace(/^#\/?/, "").split("/");
  const arg = rest.length ? decodeURIComponent(rest.join("/")) : null;
  return VIEWS.includes(view) ? { view, arg } : { view: "models", arg: null };
}

/** Whether the server is a studio: GET /datasets answers (404 or 405 on a plain `bentoml serve`). */
async function hasStudio() {
  try {
    await getJSON("/datasets", {}, "datasets");
    return true;
  } catch (err) {
    if (err instanceof ApiError && (err.status === 404 || err.status === 405)) return false;
    showError(err, "datasets");
    return true;
  }
}

class Page {
  constructor() {
    this.models = new ModelsList();
    this.model = new ModelView();
    this.studio = false;
    this.datasets = null;
    this.train = null;
    this.jobs = null;
    this.shown = false; // the models view was shown once: later visits ask GET /models again
  }

  async start() {
    const [, studio] = await Promise.all([this.models.load(), hasStudio()]);
    this.studio = studio;
    document.body.dataset.studio = String(studio);
    for (const link of $$(".nav .studio")) link.hidden = !studio;
    this.upload = this.model.upload;
    this.upload.setModels(this.models.rows);
    if (studio) {
      this.datasets = new DatasetsView({
        onTrain: (id) => (location.hash = `#train/${encodeURIComponent(id)}`),
        limits: () => ({ maxFiles: this.upload.maxFiles, maxBytes: this.upload.maxBytes }),
        onRetrain: (job) => this.jobs.follow(job.id, job.model_name),
      });
      this.train = new TrainView({
        datasets: this.datasets,
        onStarted: (job, name) => this.jobs.follow(job.id, name),
      });
      this.jobs = new JobBar({ onDone: (job, name) => this.trained(job, name) });
      this.jobs.resume().catch((err) => showError(err, "training jobs"));
    }
    $("#model-title").textContent = ""; // the opened model's tag, once one is
    window.addEventListener("hashchange", () => this.show());
    await this.show();
  }

  /** Show the view the address names. */
  async show() {
    let { view, arg } = route(location.hash);
    if (!this.studio && view !== "models") view = "models";
    for (const el of $$("main > .view")) el.hidden = el.dataset.view !== view;
    for (const link of $$(".nav a")) link.classList.toggle("current", link.dataset.view === view);
    try {
      if (view === "models") await this.showModel(arg);
      else if (view === "datasets") await this.showDatasets(arg);
      else await this.showTrain(arg);
    } catch (err) {
      showError(err, `the ${view} view`);
    }
  }

  async showModel(tag) {
    if (this.shown) await this.refreshModels(); // models trained meanwhile (here or by the CLI) are listed
    this.shown = true;
    const rows = this.models.rows.filter((row) => !row.error);
    const wanted = tag || this.model.tag || this.models.default || rows[0]?.tag || null;
    $("#model-views").hidden = !wanted;
    if (!wanted) {
      $("#model-title").textContent = "no model yet";
      return;
    }
    if (wanted !== this.model.tag) await this.model.open(wanted);
    this.models.select(this.model.tag);
  }

  async showDatasets(id) {
    await this.datasets.load();
    if (id) await this.datasets.open(id);
    else $("#dataset-panel").hidden = !this.datasets.current;
  }

  async showTrain(id) {
    await this.datasets.load();
    this.train.show(id);
  }

  async refreshModels() {
    await this.models.load();
    this.upload.setModels(this.models.rows);
  }

  /** A followed job finished: list its model and offer to open it. */
  async trained(job, name) {
    await this.refreshModels();
    const what = job.model || name || "the model";
    showMessage(`Training done: ${what} is ready.`, { kind: "info" });
    if (route(location.hash).view === "models" && !this.model.tag && job.model) {
      location.hash = modelHref(job.model); // nothing was open: show the new model
    }
  }
}

async function main() {
  onBusy((busy) => ($("#busy").hidden = !busy));
  initToken();
  await new Page().start();
  document.body.dataset.ready = "true"; // for tests and scripts: the views are wired
}

main().catch((err) => {
  showError(err, "loading the page");
  $("#model-title").textContent = "could not load the page";
});
