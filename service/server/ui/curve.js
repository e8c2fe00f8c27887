// Thresholds panel: the precision-recall curve of all labels or one label, a click on the curve or a
// number to set a threshold, "Set all", and saving (POST /thresholds) or discarding the changes.

import { getJSON, postJSON, query } from "./api.js";
import { write } from "./auth.js";
import { describePoint, drawCurve } from "./chart.js";
import { $, clear, h, num } from "./dom.js";
import { showError, showMessage } from "./messages.js";
import { parseThreshold } from "./thresholds.js";

export class CurvePanel {
  /** Wires the controls once; `use()` points the panel at a model's thresholds. */
  constructor() {
    this.th = null;
    this.enabled = false;
    this.label = "";
    this.split = "validation";
    this.curve = null;
    const select = $("#curve-label");
    select.addEventListener("change", () => {
      this.label = select.value;
      this.syncControls();
      this.refresh();
    });
    $("#curve-split").addEventListener("change", (e) => {
      this.split = e.target.value;
      this.refresh();
    });
    $("#use-optimized").addEventListener("change", (e) => this.th.setUseOptimized(e.target.checked));
    $("#threshold-set").addEventListener("click", () => this.setFromInput());
    $("#threshold-input").addEventListener("keydown", (e) => {
      if (e.key === "Enter") this.label ? this.setFromInput() : this.setAllFromInput();
    });
    $("#threshold-all").addEventListener("click", () => this.setAllFromInput());
    $("#thresholds-save").addEventListener("click", () => this.save());
    $("#thresholds-discard").addEventListener("click", () => this.th.discard());
  }

  /** Show the model of `thresholds`; `enabled` is false when it has no records: nothing to draw or save. */
  use(thresholds, { enabled }) {
    this.th = thresholds;
    this.enabled = enabled;
    this.label = "";
    this.curve = null;
    const select = clear($("#curve-label"));
    select.append(h("option", { value: "", text: "All labels" }));
    for (const label of thresholds.labels) select.append(h("option", { value: label, text: label }));
    drawCurve($("#curve-chart"), null);
    $("#curve-point").textContent = "";
    this.syncControls();
  }

  async refresh() {
    this.syncControls();
    if (!this.enabled) return;
    const params = { ...this.th.params(), split: this.split, label: this.label, max_points: 300 };
    let answer;
    try {
      answer = await getJSON("/pr_curve", params, "pr_curve");
    } catch (err) {
      showError(err, "precision-recall curve");
      return;
    }
    if (answer) this.render(answer);
  }

  render(answer) {
    const curve = this.label ? answer.per_label[this.label] : answer.all;
    const background = this.label ? [] : Object.values(answer.per_label);
    this.curve = curve;
    const tip = $("#curve-tip");
    drawCurve($("#curve-chart"), curve, {
      background,
      onPick: (p) => this.pick(p),
      onHover: (p, at) => {
        tip.hidden = !p;
        if (!p) return;
        tip.textContent = describePoint(p);
        tip.style.left = `${at.x * 100}%`;
        tip.style.top = `${at.y * 100}%`;
      },
    });
    const op = curve.operating_point;
    const what = this.label || "all labels (micro-average)";
    $("#curve-point").textContent =
      `${what} on ${this.split}: threshold ${op.threshold === null ? "per label" : num(op.threshold)} · ` +
      `precision ${num(op.precision)} · recall ${num(op.recall)} · F1 ${num(op.f1)} · AP ${num(curve.ap)}`;
  }

  /** A click on the curve: that point's threshold for the label shown, or for every label. */
  pick(point) {
    if (this.th.useOptimized[this.th.which]) {
      showMessage("Uncheck “Use optimised thresholds” to set thresholds on the curve.", { kind: "info" });
      return;
    }
    if (this.label) this.th.set(this.label, point.threshold);
    else this.confirmSetAll(point.threshold);
  }

  setFromInput() {
    if (!this.label) return this.setAllFromInput();
    try {
      this.th.set(this.label, parseThreshold($("#threshold-input").value));
    } catch (err) {
      showError(err);
    }
  }

  setAllFromInput() {
    try {
      this.confirmSetAll(parseThreshold($("#threshold-input").value));
    } catch (err) {
      showError(err);
    }
  }

  confirmSetAll(value) {
    const n = this.th.labels.length;
    const ok = window.confirm(
      `Set the threshold of all ${n} labels of the ${this.th.which} model to ${num(value, 4)}?\n` +
        "It applies to train and validation; nothing is saved until you click “Save thresholds”.",
    );
    if (ok) this.th.setAll(value);
  }

  async save() {
    const body = this.th.saveBody();
    if (!body) return;
    if (body.reset && !window.confirm(`Forget the saved thresholds of the ${body.which} model?`)) return;
    const path = `/thresholds${query({ model: this.th.tag })}`;
    const state = await write("saving thresholds", (token) => postJSON(path, body, { token }));
    if (!state) return;
    this.th.setSaved(state);
    showMessage(`Thresholds of the ${body.which} model saved: new predictions use them.`, { kind: "info" });
  }

  /** Checkbox, number box, buttons and the list of thresholds follow the shared state. */
  syncControls() {
    const th = this.th;
    if (!th) return;
    const optimised = th.useOptimized[th.which];
    $("#use-optimized").checked = optimised;
    const current = th.current();
    const input = $("#threshold-input");
    if (document.activeElement !== input) {
      const values = Object.values(current);
      const shown = this.label ? current[this.label] : values.every((v) => v === values[0]) ? values[0] : null;
      input.value = shown === null || shown === undefined ? "" : Number(shown).toFixed(4);
    }
    for (const id of ["#threshold-input", "#threshold-set", "#threshold-all"]) $(id).disabled = optimised;
    $("#threshold-set").hidden = !this.label;
    $("#curve-hint").textContent = optimised
      ? "Showing the optimised (max-F1) thresholds. Uncheck to set your own."
      : this.label
        ? `Click on the curve or type a value to set the threshold of ${this.label}.`
        : "Click on the curve or use “Set all” to give every label one threshold; pick a label for one.";
    const list = clear($("#threshold-list"));
    const draft = th.draft[th.which];
    for (const label of th.labels) {
      const unsaved = !optimised && label in draft;
      list.append(
        h(
          "li",
          {},
          h(
            "button",
            {
              type: "button",
              class: `chip${unsaved ? " unsaved" : ""}${label === this.label ? " selected" : ""}`,
              title: unsaved ? "unsaved" : "show this label's curve",
              "data-label": label,
              onclick: () => {
                $("#curve-label").value = label;
                $("#curve-label").dispatchEvent(new Event("change"));
              },
            },
            `${label} ${num(current[label])}`,
          ),
        ),
      );
    }
    const dirty = th.dirty();
    $("#thresholds-save").disabled = !dirty || !this.enabled;
    $("#thresholds-discard").disabled = !dirty;
    $("#thresholds-state").textContent = !this.enabled
      ? "This model has no stored records: thresholds cannot be inspected or saved here."
      : dirty
        ? optimised
          ? `Not saved yet: back to the optimised thresholds for the ${th.which} model.`
          : `Not saved yet: ${Object.keys(draft).length} label(s) changed for the ${th.which} model.`
        : th.hasCustom()
          ? `Saved custom thresholds are in force for the ${th.which} model.`
          : `The ${th.which} model uses its optimised thresholds.`;
  }
}
