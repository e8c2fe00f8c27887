// Retrain from the dataset view: POST /datasets/{id}/retrain starts a job with the previous job's
// settings on the labels as they are now. Its progress shows here (GET /jobs/{id}/events, polling
// GET /jobs/{id} when the stream drops) as in the top bar; once done, the new version's validation
// AP and F1 per label (GET /stats) beside the previous version's, with the change.

import { getJSON, sendJSON } from "./api.js";
import { write } from "./auth.js";
import { $, clear, h, num, pct } from "./dom.js";
import { TERMINAL, duration, watchJob } from "./jobs.js";
import { showError, showMessage } from "./messages.js";
import { modelHref } from "./models.js";
import { datasetPath } from "./sending.js";

/** "+0.031" / "−0.002" / "±0", and whether it went up, down or stayed. */
function change(after, before) {
  if (after === null || after === undefined || before === null || before === undefined) {
    return { text: before === undefined ? "new" : "–", trend: "" };
  }
  const d = after - before;
  if (Math.abs(d) < 5e-4) return { text: "±0", trend: "same" };
  return { text: `${d > 0 ? "+" : "−"}${num(Math.abs(d))}`, trend: d > 0 ? "up" : "down" };
}

function cells(key, after, before) {
  const c = change(after, before);
  return [
    h("td", { class: "num", "data-cell": `${key}-before`, text: before === undefined ? "–" : num(before) }),
    h("td", { class: "num", "data-cell": `${key}-after`, text: num(after) }),
    h("td", { class: `num delta ${c.trend}`, "data-cell": `${key}-change`, text: c.text }),
  ];
}

export class RetrainPanel {
  /** `onStarted(job)` once a retrain is queued; `onDone(job)` when it finished with a model. */
  constructor({ onStarted, onDone }) {
    this.onStarted = onStarted;
    this.onDone = onDone;
    this.dataset = null;
    this.before = null; // the dataset's newest model before the retrain: what the numbers compare with
    this.job = null;
    this.unwatch = null;
    $("#retrain").addEventListener("click", () => this.start());
  }

  /** Dataset `id`, whose newest model is `model` (null before its first). */
  use(id, model) {
    if (String(id) !== String(this.dataset)) {
      this.stop();
      $("#retrain-progress").hidden = true;
      $("#retrain-result").hidden = true;
      $("#retrain").disabled = false;
    }
    this.dataset = id;
    if (!this.job) this.before = model;
  }

  async start() {
    const dataset = this.dataset;
    if (dataset === null || this.job) return;
    $("#retrain").disabled = true;
    const answer = await write("retraining", (token) =>
      sendJSON("POST", datasetPath(dataset, "/retrain"), {}, { token }),
    );
    if (!answer) {
      $("#retrain").disabled = false;
      return;
    }
    this.onStarted?.(answer);
    $("#retrain-result").hidden = true;
    this.follow(answer.id, answer.model_name);
  }

  follow(job, name) {
    this.stop();
    this.job = job;
    this.name = name || "";
    this.show({ state: "queued", progress: 0 });
    this.unwatch = watchJob(job, {
      onView: (view) => this.show(view),
      onTrouble: (err) => {
        $("#retrain-status").textContent = `cannot reach the job (${err.message}); trying again`;
      },
      onGone: () => {
        this.stop();
        $("#retrain").disabled = false;
        $("#retrain-status").textContent = "the job is gone (the studio's data folder changed?)";
      },
    });
  }

  stop() {
    this.unwatch?.();
    this.unwatch = null;
    this.job = null;
  }

  show(view) {
    if (!view || typeof view !== "object" || (view.id !== undefined && view.id !== this.job)) return;
    const fraction = view.state === "done" ? 1 : Math.max(0, Math.min(1, Number(view.progress) || 0));
    $("#retrain-progress").hidden = false;
    $("#retrain-bar").value = fraction;
    const parts = [`${this.name ? `${this.name}: ` : ""}${view.state}`];
    if (view.state === "running" && view.stage) parts.push(view.stage);
    if (view.epoch !== null && view.epoch !== undefined) parts.push(`epoch ${view.epoch}`);
    parts.push(`${Math.floor(100 * fraction)} %`);
    if (view.state === "running" && view.eta_s) parts.push(`${duration(view.eta_s)} left`);
    if (view.error) parts.push(view.error);
    $("#retrain-status").textContent = parts.join(" · ");
    if (!TERMINAL.has(view.state)) return;
    this.stop();
    $("#retrain").disabled = false;
    if (view.state !== "done") {
      showMessage(`Retraining ${this.name} ${view.state}: ${view.error || "see the server log"}`);
      return;
    }
    const took = view.started && view.finished ? ` in ${duration(view.finished - view.started)}` : "";
    $("#retrain-status").textContent = `done${took}: ${view.model}`;
    this.compare(view.model, this.before).catch((err) => showError(err, "comparing the versions"));
    const before = this.before;
    this.before = view.model;
    this.onDone?.(view, before);
  }

  /** The new version's validation numbers beside the previous version's, per label. */
  async compare(after, before) {
    const [a, b] = await Promise.all([
      getJSON("/stats", { model: after, split: "validation" }, "retrain-after"),
      before ? getJSON("/stats", { model: before, split: "validation" }, "retrain-before") : null,
    ]);
    if (!a) return;
    const now = a.splits.validation;
    const was = b?.splits?.validation;
    const body = clear($("#retrain-diff tbody"));
    body.append(
      h(
        "tr",
        { class: "overall", "data-label": "" },
        h("th", { text: "all labels (mAP, micro F1)" }),
        ...cells("ap", now.map, was ? was.map : undefined),
        ...cells("f1", now.micro_f1, was ? was.micro_f1 : undefined),
      ),
    );
    for (const [label, l] of Object.entries(now.per_label)) {
      const old = was?.per_label?.[label];
      body.append(
        h(
          "tr",
          { "data-label": label },
          h("th", { text: label }),
          ...cells("ap", l.ap, old ? old.ap : undefined),
          ...cells("f1", l.f1, old ? old.f1 : undefined),
        ),
      );
    }
    const summary = clear($("#retrain-summary"));
    summary.append(
      "New version ",
      h("a", { href: modelHref(after), "data-testid": "retrain-model", text: after }),
      before ? ` against ${before}` : " (no earlier version to compare with)",
      `: validation mAP ${pct(now.map)}${was ? ` (was ${pct(was.map)})` : ""}, ` +
        `micro F1 ${pct(now.micro_f1)}${was ? ` (was ${pct(was.micro_f1)})` : ""}.`,
    );
    $("#retrain-result").hidden = false;
  }
}
