// The training job in the top bar, on every view: stage, percentage, time left, cancel. Follows
// GET /jobs/{id}/events (server-sent events) and falls back to polling GET /jobs/{id} once a second
// when the stream is refused or drops.

import { peekJSON, sendJSON } from "./api.js";
import { write } from "./auth.js";
import { $, clear, h, num } from "./dom.js";
import { showMessage } from "./messages.js";
import { modelHref } from "./models.js";

export const TERMINAL = new Set(["done", "failed", "cancelled"]);
const known = (x) => x !== null && x !== undefined;
const POLL_MS = 1000;
const MAX_POLL_MS = 10000;
// Named events a server may send besides the default "message"; each carries the job as JSON.
const EVENT_NAMES = ["job", "progress", "state", "update", "done"];
// The stages training reports (service/studio/progress.py), in words; others are shown as they come.
const STAGE_WORDS = { features: "computing features", train: "training", export: "exporting" };

/** 75 -> "1 min 15 s", 4000 -> "1 h 7 min" */
export function duration(seconds) {
  if (seconds < 1) return "under 1 s";
  const s = Math.round(seconds);
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min${s % 60 ? ` ${s % 60} s` : ""}`;
  return `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} min`;
}

/** The jobs of GET /jobs, whether it answers a list or {"jobs": [...]}. */
export function jobsOf(answer) {
  return Array.isArray(answer) ? answer : answer?.jobs || [];
}

/**
 * Follow job `id`: its server-sent events (GET /jobs/{id}/events), and polling GET /jobs/{id} (once a
 * second, backing off to 10 s while unreachable) when the stream is refused or drops. `onView(job)`
 * gets every state until a terminal one; `onTrouble(err)` an unreachable server; `onGone()` a 404.
 * Returns `stop()`.
 */
export function watchJob(id, { onView, onTrouble, onGone }) {
  let source = null;
  let timer = null;
  let delay = POLL_MS;
  let stopped = false;
  const stop = () => {
    stopped = true;
    source?.close();
    source = null;
    clearTimeout(timer);
  };
  const take = (job) => {
    if (stopped || !job || typeof job !== "object") return;
    if (TERMINAL.has(job.state)) stop();
    onView(job);
  };
  const poll = () => {
    timer = setTimeout(async () => {
      if (stopped) return;
      try {
        const job = await peekJSON(`/jobs/${encodeURIComponent(id)}`);
        delay = POLL_MS;
        take(job);
      } catch (err) {
        if (err.status === 404) {
          stop();
          onGone?.();
          return;
        }
        delay = Math.min(2 * delay, MAX_POLL_MS);
        onTrouble?.(err);
      }
      if (!stopped) poll();
    }, delay);
  };
  const stream = new EventSource(`/jobs/${encodeURIComponent(id)}/events`);
  source = stream;
  const onEvent = (event) => {
    let job;
    try {
      job = JSON.parse(event.data);
    } catch {
      return; // not a job state (a keep-alive, say)
    }
    take(job);
  };
  stream.addEventListener("message", onEvent);
  for (const name of EVENT_NAMES) stream.addEventListener(name, onEvent);
  stream.onerror = () => {
    // refused (404, no streaming), or dropped: ask the job itself instead
    stream.close();
    if (source === stream && !stopped) {
      source = null;
      poll();
    }
  };
  return stop;
}

export class JobBar {
  /** `onDone(job)` once a followed job has finished with a model. */
  constructor({ onDone }) {
    this.onDone = onDone;
    this.id = null;
    this.name = "";
    this.unwatch = null;
    $("#job-cancel").addEventListener("click", () => this.cancel());
    $("#job-dismiss").addEventListener("click", () => this.stop(true));
  }

  /** Follow the newest job still queued or running, if any (after a reload, or one started elsewhere). */
  async resume() {
    const jobs = jobsOf(await peekJSON("/jobs"));
    const live = jobs.filter((job) => !TERMINAL.has(job.state));
    if (live.length) this.follow(live[0].id, live[0].name);
    return live[0] || null;
  }

  follow(id, name = "") {
    this.stop(false);
    this.id = id;
    this.name = name || "";
    this.render({ id, state: "queued", progress: 0 });
    $("#job-bar").hidden = false;
    this.listen();
  }

  listen() {
    const id = this.id;
    this.unwatch = watchJob(id, {
      onView: (job) => this.id === id && this.update(job),
      onTrouble: (err) => {
        $("#job-detail").textContent = `cannot reach the job (${err.message}); trying again`;
      },
      onGone: () => this.stop(true), // the job is gone (another data folder, say): nothing to follow
    });
  }

  update(job) {
    const before = this.state;
    this.render(job);
    if (!TERMINAL.has(job.state)) return;
    this.unwatch?.();
    if (job.state === before) return;
    if (job.state === "done") this.onDone?.(job, this.name);
    if (job.state === "failed") {
      showMessage(`Training ${this.name} failed: ${job.error || "see the server log"}`);
    }
  }

  render(job) {
    this.state = job.state;
    const done = job.state === "done";
    const fraction = done ? 1 : Math.max(0, Math.min(1, Number(job.progress) || 0));
    const bar = $("#job-bar");
    bar.dataset.state = job.state;
    if (job.name) this.name = job.name;
    $("#job-name").textContent = this.name ? `Training ${this.name}` : "Training";
    $("#job-stage").textContent =
      job.state === "running" ? STAGE_WORDS[job.stage] || job.stage || "running" : job.state;
    $("#job-meter").value = fraction;
    $("#job-progress").textContent = `${Math.floor(100 * fraction)} %`;
    $("#job-eta").textContent =
      job.state === "running" && known(job.eta_s) ? `${duration(job.eta_s)} left` : "";
    const detail = [];
    const featurising = job.state === "running" && job.stage === "features";
    if (featurising && known(job.to_featurise) && job.to_featurise > 0) {
      detail.push(`${job.featurised ?? 0} of ${job.to_featurise} images`);
    }
    if (known(job.epoch)) detail.push(`epoch ${job.epoch}`);
    if (known(job.train_loss)) detail.push(`train loss ${num(job.train_loss)}`);
    if (known(job.val_loss)) detail.push(`val loss ${num(job.val_loss)}`);
    if (job.error) detail.push(job.error);
    $("#job-detail").textContent = detail.join(" · ");
    $("#job-detail").title = detail.join(" · ");
    $("#job-cancel").hidden = TERMINAL.has(job.state);
    $("#job-dismiss").hidden = !TERMINAL.has(job.state);
    const open = clear($("#job-open"));
    open.hidden = !(done && job.model);
    if (done && job.model) {
      open.append(h("a", { href: modelHref(job.model), title: `open ${job.model}`, text: "Open the model" }));
    }
  }

  async cancel() {
    if (!this.id || !window.confirm("Cancel this training? What it has done so far is lost.")) return;
    const id = this.id;
    const answer = await write("cancelling the training", (token) =>
      sendJSON("DELETE", `/jobs/${encodeURIComponent(id)}`, undefined, { token }),
    );
    if (answer !== null && answer?.state && this.id === id) this.update(answer);
  }

  /** Stop following; `hide` also hides the bar. */
  stop(hide) {
    this.unwatch?.();
    this.unwatch = null;
    if (hide) {
      this.id = null;
      $("#job-bar").hidden = true;
    }
  }
}
