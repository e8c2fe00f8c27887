// Small DOM and formatting helpers shared by the panels.

const SVG_NS = "http://www.w3.org/2000/svg";

function build(el, attrs, children) {
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") el.setAttribute("class", value);
    else if (key === "text") el.textContent = value;
    else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(el.dataset, value);
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

/** h("div", {class: "x", onclick: f}, child, ...) -> HTMLElement */
export function h(tag, attrs, ...children) {
  return build(document.createElement(tag), attrs, children);
}

/** s("circle", {cx: 1}) -> SVGElement */
export function s(tag, attrs, ...children) {
  return build(document.createElementNS(SVG_NS, tag), attrs, children);
}

export function $(selector, root = document) {
  const el = root.querySelector(selector);
  if (!el) throw new Error(`missing element ${selector}`);
  return el;
}

export function $$(selector, root = document) {
  return [...root.querySelectorAll(selector)];
}

export function clear(el) {
  el.replaceChildren();
  return el;
}

export function pct(x) {
  return x === null || x === undefined ? "–" : `${(100 * x).toFixed(1)}%`;
}

export function num(x, digits = 3) {
  return x === null || x === undefined ? "–" : Number(x).toFixed(digits);
}

export function bytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1 << 20) return `${(n / 1024).toFixed(1)} KB`;
  return `${(n / (1 << 20)).toFixed(1)} MB`;
}

/** The value of the checked radio button named `name`. */
export function radioValue(name) {
  const el = document.querySelector(`input[name="${name}"]:checked`);
  return el ? el.value : null;
}

/** Briefly mark `el` as changed (CSS animation), e.g. a statistic that moved with a threshold. */
export function flash(el) {
  el.classList.remove("changed");
  void el.offsetWidth; // restart the animation
  el.classList.add("changed");
}

/** A score bar: the fill is the score, the tick is the threshold. */
export function scoreBar(score, threshold, { above } = {}) {
  const fill = h("span", { class: `fill${above ? " above" : ""}` });
  fill.style.width = `${Math.max(0, Math.min(1, score)) * 100}%`;
  const tick = h("span", { class: "tick", title: `threshold ${num(threshold)}` });
  tick.style.left = `${Math.max(0, Math.min(1, threshold)) * 100}%`;
  return h("span", { class: "bar", title: `score ${num(score)} / threshold ${num(threshold)}` }, fill, tick);
}
