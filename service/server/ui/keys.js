// The labelling grid's keyboard shortcuts: j / k or the arrows move between images, 1–9 add or
// remove the label of that number (the legend above the grid), x selects, a types a label, s accepts
// the suggestions, ? shows the list. Keys typed into a field are the field's, never a shortcut.

import { $, h } from "./dom.js";

const MAX_NUMBERED = 9;
const NEXT = new Set(["j", "ArrowRight", "ArrowDown"]);
const PREVIOUS = new Set(["k", "ArrowLeft", "ArrowUp"]);
const NOT_TYPING = new Set(["checkbox", "radio", "button", "submit", "reset", "file"]);

/** Whether keys pressed in `el` are text for it (a text field, a list), not shortcuts. */
function typing(el) {
  if (!(el instanceof HTMLElement)) return false;
  if (el.isContentEditable || el.tagName === "TEXTAREA" || el.tagName === "SELECT") return true;
  return el.tagName === "INPUT" && !NOT_TYPING.has(el.type);
}

/** label -> its shortcut number (1–9), for the first nine of `labels`. */
export function numbered(labels) {
  return new Map(labels.slice(0, MAX_NUMBERED).map((label, i) => [label, i + 1]));
}

/** The legend of the numbers: "1 cat · 2 dog · …". */
export function renderLegend(labels) {
  const legend = $("#lab-legend");
  legend.replaceChildren();
  if (!labels.length) return;
  legend.append(h("span", { class: "muted", text: "Keys:" }));
  for (const [label, n] of numbered(labels)) {
    legend.append(h("span", { class: "key-label", "data-label": label }, h("kbd", { text: n }), ` ${label}`));
  }
  if (labels.length > MAX_NUMBERED) {
    legend.append(h("span", { class: "muted", text: `(${labels.length - MAX_NUMBERED} more: type them)` }));
  }
}

// What the keys do to `view` (the LabellingView): its current image is view.images[view.cursor].

function next(view, pageSize) {
  const pages = Math.ceil(view.total / pageSize);
  if (view.cursor < view.images.length - 1) view.setCursor(view.cursor + 1);
  else if (view.query.page < pages) view.ask({ page: view.query.page + 1 }).then(() => view.setCursor(0));
}

function previous(view) {
  if (view.cursor > 0) view.setCursor(view.cursor - 1);
  else if (view.query.page > 1) {
    view.ask({ page: view.query.page - 1, cursor: -1 }).then(() => view.setCursor(view.cursor));
  }
}

/** Add or remove the label numbered `n` in the legend on the current image. */
function toggle(view, n) {
  const label = view.labels[n - 1];
  const image = view.images[view.cursor];
  if (!label || !image) return;
  view.edit(view.cursor, image.labels?.includes(label) ? { remove: [label] } : { add: [label] });
}

function pick(view) {
  const image = view.images[view.cursor];
  if (image) view.pick(view.cursor, { checked: !view.selected.has(image.id), shift: false });
}

function typeLabel(view) {
  view.setCursor(view.cursor, { focus: false });
  $("#dataset-gallery").querySelectorAll("[data-testid=add-label]")[view.cursor]?.focus();
}

function acceptSuggestions(view) {
  const image = view.images[view.cursor];
  const labels = (image?.suggestions || []).map((s) => s.label).filter((l) => !image.labels?.includes(l));
  if (labels.length) view.edit(view.cursor, { add: labels });
}

/**
 * Wire the shortcuts to `view`: active() says whether its grid is on screen; setCursor(i), ask(query),
 * edit(i, change) and pick(i, how) do the work; `pageSize` images a page.
 */
export function wireKeys(view, pageSize) {
  const button = $("#lab-help");
  const box = $("#lab-keys");
  const help = (show = box.hidden) => {
    box.hidden = !show;
    button.setAttribute("aria-expanded", String(show));
  };
  button.addEventListener("click", () => help());
  document.addEventListener("keydown", (e) => {
    if (e.ctrlKey || e.metaKey || e.altKey || e.defaultPrevented || !view.active()) return;
    if (typing(e.target)) {
      if (e.key === "Escape") e.target.blur(); // back to the shortcuts
      return;
    }
    // the arrows scroll the page unless the keyboard is in the grid; the letters work anywhere here
    if (e.key.startsWith("Arrow") && !$("#dataset-gallery").contains(e.target)) return;
    let handled = true;
    if (NEXT.has(e.key)) next(view, pageSize);
    else if (PREVIOUS.has(e.key)) previous(view);
    else if (/^[1-9]$/.test(e.key)) toggle(view, Number(e.key));
    else if (e.key === "x") pick(view);
    else if (e.key === "a") typeLabel(view);
    else if (e.key === "s") acceptSuggestions(view);
    else if (e.key === "?") help();
    else if (e.key === "Escape" && !box.hidden) help(false);
    else handled = false;
    if (handled) e.preventDefault();
  });
}
