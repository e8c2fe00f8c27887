// The precision-recall chart: an SVG drawn from a /pr_curve curve, with the operating point marked
// by dashed lines and a click (or hover) that picks the nearest point of the curve.

import { num, s } from "./dom.js";

const W = 480;
const H = 360;
const M = { left: 52, right: 16, top: 14, bottom: 44 };
const X = (recall) => M.left + recall * (W - M.left - M.right);
const Y = (precision) => H - M.bottom - precision * (H - M.top - M.bottom);

function axes() {
  const g = s("g", { class: "axes" });
  for (let i = 0; i <= 5; i++) {
    const v = i / 5;
    g.append(
      s("line", { class: "gridline", x1: X(0), x2: X(1), y1: Y(v), y2: Y(v) }),
      s("line", { class: "gridline", x1: X(v), x2: X(v), y1: Y(0), y2: Y(1) }),
      s("text", { x: X(v), y: Y(0) + 16, "text-anchor": "middle", text: v.toFixed(1) }),
      s("text", { x: X(0) - 8, y: Y(v) + 4, "text-anchor": "end", text: v.toFixed(1) }),
    );
  }
  g.append(
    s("line", { class: "axis", x1: X(0), x2: X(1), y1: Y(0), y2: Y(0) }),
    s("line", { class: "axis", x1: X(0), x2: X(0), y1: Y(0), y2: Y(1) }),
    s("text", { class: "axis-title", x: X(0.5), y: H - 6, "text-anchor": "middle", text: "Recall" }),
    s("text", {
      class: "axis-title",
      x: 14,
      y: Y(0.5),
      "text-anchor": "middle",
      transform: `rotate(-90 14 ${Y(0.5)})`,
      text: "Precision",
    }),
  );
  return g;
}

function points(curve) {
  return curve.recall.map((recall, i) => ({
    recall,
    precision: curve.precision[i],
    threshold: curve.thresholds[i],
  }));
}

function polyline(curve, cls) {
  const d = points(curve).map((p) => `${X(p.recall).toFixed(1)},${Y(p.precision).toFixed(1)}`);
  return s("polyline", { class: cls, points: d.join(" ") });
}

function operatingPoint(op) {
  const x = X(op.recall);
  const y = Y(op.precision);
  return s(
    "g",
    { class: "operating-point" },
    s("line", { class: "dashed", x1: x, x2: x, y1: Y(0), y2: y }),
    s("line", { class: "dashed", x1: X(0), x2: x, y1: y, y2: y }),
    s("circle", { cx: x, cy: y, r: 5 }),
  );
}

/** The curve point nearest to (x, y) in chart units, among points that have a threshold. */
function nearest(pts, x, y) {
  let best = null;
  let bestD = Infinity;
  for (const p of pts) {
    if (p.threshold === null) continue;
    const d = (X(p.recall) - x) ** 2 + (Y(p.precision) - y) ** 2;
    if (d < bestD) [best, bestD] = [p, d];
  }
  return best;
}

function chartXY(svg, event) {
  const m = svg.getScreenCTM();
  if (!m) return null;
  const pt = new DOMPoint(event.clientX, event.clientY).matrixTransform(m.inverse());
  return { x: pt.x, y: pt.y };
}

/**
 * Draw `curve` ({precision, recall, thresholds, operating_point}) into `svg`; `background` curves are
 * drawn faint behind it. `onPick(point)` on click, `onHover(point | null, {x, y})` while hovering.
 */
export function drawCurve(svg, curve, { background = [], onPick, onHover } = {}) {
  svg.replaceChildren(axes());
  for (const other of background) svg.append(polyline(other, "curve faint"));
  if (!curve) return;
  svg.append(polyline(curve, "curve"));
  const op = curve.operating_point;
  if (op) svg.append(operatingPoint(op));
  const marker = s("circle", { class: "hover-marker", r: 4, cx: -10, cy: -10 });
  const pad = 8; // points on the plot's edges (recall 1, precision 1) stay easy to hit
  const overlay = s("rect", {
    class: "overlay",
    x: M.left - pad,
    y: M.top - pad,
    width: W - M.left - M.right + 2 * pad,
    height: H - M.top - M.bottom + 2 * pad,
  });
  svg.append(marker, overlay);
  const pts = points(curve);
  const hit = (event) => {
    const xy = chartXY(svg, event);
    return xy ? nearest(pts, xy.x, xy.y) : null;
  };
  overlay.addEventListener("mousemove", (event) => {
    const p = hit(event);
    if (!p) return;
    marker.setAttribute("cx", X(p.recall));
    marker.setAttribute("cy", Y(p.precision));
    onHover?.(p, { x: X(p.recall) / W, y: Y(p.precision) / H });
  });
  overlay.addEventListener("mouseleave", () => {
    marker.setAttribute("cx", -10);
    onHover?.(null);
  });
  overlay.addEventListener("click", (event) => {
    const p = hit(event);
    if (p) onPick?.(p);
  });
}

/** "threshold 0.312 · precision 0.905 · recall 0.932" */
export function describePoint(p) {
  return `threshold ${num(p.threshold)} · precision ${num(p.precision)} · recall ${num(p.recall)}`;
}

/** Chart coordinates of a curve point, as fractions of the SVG box (for tests and tooltips). */
export function position(p) {
  return { x: X(p.recall) / W, y: Y(p.precision) / H };
}
