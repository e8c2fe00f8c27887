// The thresholds the page shows: optimised (from the manifest), saved (custom_thresholds.json on the
// server) and unsaved changes, per model (best / last) of one stored model (`tag`). Every panel asks the
// API with `params()`, which names the model, so every view shows the model the page opened.

export class Thresholds {
  /**
   * @param labels the model's labels
   * @param optimized {best: {label: value}, last: {...}} the manifest's max-F1 thresholds
   * @param state the GET /thresholds answer ({custom, thresholds}) or null when unavailable
   * @param tag the model's NAME:VERSION, sent as `model=` with every request
   */
  constructor(labels, optimized, state, tag) {
    this.tag = tag;
    this.labels = labels;
    this.optimized = optimized;
    this.which = "best";
    this.draft = { best: {}, last: {} };
    this.useOptimized = { best: true, last: true };
    this.listeners = new Set();
    this.setSaved(state);
  }

  /** Take the server's state after load or save; drops unsaved changes of both models. */
  setSaved(state) {
    this.state = state;
    for (const which of ["best", "last"]) {
      this.draft[which] = {};
      this.useOptimized[which] = !this.hasCustom(which);
    }
    this.changed();
  }

  hasCustom(which = this.which) {
    return Boolean(this.state && Object.keys(this.state.custom[which] || {}).length);
  }

  /** label -> value in force on the server (custom where saved, else optimised). */
  saved(which = this.which) {
    return this.state ? this.state.thresholds[which] : this.optimized[which];
  }

  /** label -> value the page uses now. */
  current(which = this.which) {
    if (this.useOptimized[which]) return { ...this.optimized[which] };
    return { ...this.saved(which), ...this.draft[which] };
  }

  /** True when the page differs from what the server applies by default. */
  dirty(which = this.which) {
    if (this.useOptimized[which]) return this.hasCustom(which); // saving would reset the custom values
    return Object.keys(this.draft[which]).length > 0;
  }

  /** Query parameters for /stats, /pr_curve, /predictions. */
  params() {
    const which = this.which;
    const model = this.tag;
    if (this.useOptimized[which]) return { model, which, profile: "optimized" };
    const draft = this.draft[which];
    return {
      model,
      which,
      profile: "custom",
      thresholds: Object.keys(draft).length ? JSON.stringify(draft) : undefined,
    };
  }

  /** The POST /thresholds body that saves the page's state, or null when there is nothing to save. */
  saveBody() {
    const which = this.which;
    if (!this.dirty(which)) return null;
    if (this.useOptimized[which]) return { which, reset: true };
    return { which, set: { ...this.draft[which] } };
  }

  setWhich(which) {
    this.which = which;
    this.changed();
  }

  setUseOptimized(flag) {
    this.useOptimized[this.which] = flag;
    this.changed();
  }

  set(label, value) {
    this.draft[this.which] = { ...this.draft[this.which], [label]: value };
    this.changed();
  }

  setAll(value) {
    this.draft[this.which] = Object.fromEntries(this.labels.map((label) => [label, value]));
    this.changed();
  }

  discard() {
    this.draft[this.which] = {};
    this.useOptimized[this.which] = !this.hasCustom(this.which);
    this.changed();
  }

  /** "optimised", "saved custom" or "unsaved", for the panels' captions. */
  describe() {
    if (this.dirty()) return "unsaved changes";
    return this.useOptimized[this.which] ? "optimised thresholds" : "saved custom thresholds";
  }

  onChange(listener) {
    this.listeners.add(listener);
  }

  changed() {
    for (const listener of this.listeners) listener(this);
  }
}

/** A threshold typed by a person: a number in [0, 1], else an Error saying so. */
export function parseThreshold(text) {
  const value = Number(String(text).trim());
  if (String(text).trim() === "" || !Number.isFinite(value) || value < 0 || value > 1) {
    throw new Error(`threshold: ${JSON.stringify(String(text))} is not a number in [0, 1]`);
  }
  return value;
}
