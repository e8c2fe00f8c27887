// One model's views: facts and labels, statistics, curve and thresholds, predictions and new
// predictions, for the model the page opened. Every request names it (`model=NAME:VERSION`).

import { ApiError, getJSON } from "./api.js";
import { CurvePanel } from "./curve.js";
import { $, $$, clear, h, num } from "./dom.js";
import { GalleryPanel } from "./gallery.js";
import { modelHref } from "./models.js";
import { StatsPanel } from "./stats.js";
import { Thresholds } from "./thresholds.js";
import { UploadPanel } from "./upload.js";

const DISABLED_WITHOUT_RECORDS = ["#stats-panel .two", "#curve-panel .curve-layout", "#gallery-panel"];

async function savedThresholds(tag) {
  try {
    return { state: await getJSON("/thresholds", { model: tag }, "thresholds"), note: null };
  } catch (err) {
    if (err instanceof ApiError && err.status === 404) return { state: null, note: err.message };
    throw err;
  }
}

function renderFacts(summary) {
  const provider = summary.provider || {};
  const facts = [
    ["Name", summary.name],
    ["Version", summary.version],
    ["Created", (summary.created_at || "").replace("T", " ").slice(0, 19)],
    ["Backbone", summary.backbone?.id],
    ["Provider", `${provider.active || "?"}${provider.note ? ` (${provider.note})` : ""}`],
    ["Precision", precisionText(summary)],
    ["int8 vs fp32", int8Text(summary)],
    [
      "Epochs",
      `best ${summary.models.best.epoch} (val loss ${num(summary.models.best.val_loss)}), ` +
        `last ${summary.models.last.epoch} (val loss ${num(summary.models.last.val_loss)})`,
    ],
  ];
  const dl = clear($("#model-facts"));
  for (const [term, value] of facts) dl.append(h("dt", { text: term }), h("dd", { text: value ?? "–" }));

  const counts = summary.label_counts || {};
  const body = clear($("#label-table tbody"));
  for (const label of summary.labels) {
    body.append(
      h(
        "tr",
        {},
        h("th", { text: label }),
        h("td", { class: "num", text: counts.train?.[label] ?? "–" }),
        h("td", { class: "num", text: counts.validation?.[label] ?? "–" }),
      ),
    );
  }
}

export class ModelView {
  constructor() {
    this.stats = new StatsPanel();
    this.curve = new CurvePanel();
    this.gallery = new GalleryPanel();
    this.upload = new UploadPanel();
    this.th = null;
    this.tag = null;
    this.opening = 0; // the latest open(): an older one that answers late is dropped
    for (const input of $$('input[name="which"]')) {
      input.addEventListener("change", () => input.checked && this.th?.setWhich(input.value));
    }
  }

  /** Open the model `tag` (NAME:VERSION); resolves to true once its panels are wired. */
  async open(tag) {
    const ticket = ++this.opening;
    const summary = await getJSON("/model", { model: tag }, "model");
    if (!summary || ticket !== this.opening) return false;
    const { state, note } = await savedThresholds(summary.tag);
    if (ticket !== this.opening) return false;
    const optimized = { best: summary.models.best.thresholds, last: summary.models.last.thresholds };
    const th = new Thresholds(summary.labels, optimized, state, summary.tag);
    const enabled = state !== null;
    this.th = th;
    this.tag = summary.tag;

    $("#model-title").textContent = summary.tag;
    $("#model-title").setAttribute("href", modelHref(summary.tag));
    document.title = `manylabel · ${summary.name}`;
    $('input[name="which"][value="best"]').checked = true;
    renderFacts(summary);
    this.stats.use(th);
    this.curve.use(th, { enabled });
    this.gallery.use(th, { enabled });
    this.upload.use(summary, th);

    const box = $("#stats-note");
    box.hidden = enabled;
    box.textContent = note || "";
    for (const selector of DISABLED_WITHOUT_RECORDS) {
      document.querySelector(selector).classList.toggle("disabled", !enabled);
    }
    const refresh = () => {
      if (enabled) {
        this.stats.refresh();
        this.gallery.refresh();
      }
      this.curve.refresh();
    };
    th.onChange(refresh);
    refresh();
    return true;
  }
}

// "best int8 (also fp32), last int8 (also fp32)": each model's default precision, then the others served.
function precisionText(summary) {
  const parts = ["best", "last"].map((which) => {
    const served = summary.models[which]?.precisions || ["fp32"];
    const others = served.slice(1);
    return `${which} ${served[0]}${others.length ? ` (also ${others.join(", ")})` : ""}`;
  });
  const notes = [...new Set(Object.values(summary.precision?.notes || {}))];
  return parts.join(", ") + (notes.length ? ` (${notes.join("; ")})` : "");
}

// The int8 variants' validation check against fp32 (from the manifest), or why there is none.
function int8Text(summary) {
  const parts = [];
  for (const which of ["best", "last"]) {
    const variant = summary.models[which]?.variants?.int8;
    if (!variant) continue;
    const c = variant.validation;
    const numbers = c
      ? `val mAP ${num(c.map_fp32)} → ${num(c.map)}, µF1 ${num(c.micro_f1_fp32)} → ${num(c.micro_f1)}, ` +
        `max |Δscore| ${num(c.max_score_diff, 2)}`
      : "";
    const dropped = variant.kept ? "" : `${numbers ? "; " : ""}not kept: ${variant.reason}`;
    parts.push(`${which}: ${numbers}${dropped}`);
  }
  return parts.length ? parts.join(" · ") : "no int8 variant (fp32 only)";
}
