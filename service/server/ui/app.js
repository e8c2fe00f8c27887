// The manylabel page: loads the model summary and the saved thresholds, then wires the panels to one
// shared threshold state so that statistics, curve and predictions move together.

import { ApiError, getJSON, onBusy } from "./api.js";
import { CurvePanel } from "./curve.js";
import { $ } from "./dom.js";
import { GalleryPanel } from "./gallery.js";
import { showError } from "./messages.js";
import { renderModel } from "./model.js";
import { StatsPanel } from "./stats.js";
import { Thresholds } from "./thresholds.js";
import { UploadPanel } from "./upload.js";

async function savedThresholds() {
  try {
    return { state: await getJSON("/thresholds"), note: null };
  } catch (err) {
    if (err instanceof ApiError && err.status === 404) return { state: null, note: err.message };
    throw err;
  }
}

async function main() {
  onBusy((busy) => ($("#busy").hidden = !busy));
  const summary = await getJSON("/model");
  const { state, note } = await savedThresholds();
  const optimized = { best: summary.models.best.thresholds, last: summary.models.last.thresholds };
  const th = new Thresholds(summary.labels, optimized, state);
  const enabled = state !== null;

  const stats = new StatsPanel(th);
  const curve = new CurvePanel(th, { enabled });
  const gallery = new GalleryPanel(th, { enabled });
  new UploadPanel(summary, th);
  renderModel(summary, { onWhich: (which) => th.setWhich(which) });

  if (!enabled) {
    const box = $("#stats-note");
    box.hidden = false;
    box.textContent = note;
    for (const id of ["#stats-panel .two", "#curve-panel .curve-layout", "#gallery-panel"]) {
      document.querySelector(id).classList.add("disabled");
    }
  }
  const refresh = () => {
    if (enabled) {
      stats.refresh();
      gallery.refresh();
    }
    curve.refresh();
  };
  th.onChange(refresh);
  refresh();
  document.body.dataset.ready = "true"; // for tests and scripts: the panels are wired
}

main().catch((err) => {
  showError(err, "loading the page");
  $("#model-title").textContent = "could not load the model";
});
