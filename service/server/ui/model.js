// Model panel: name, version, provider, best/last switch and the labels with their image counts.

import { $, $$, clear, h, num } from "./dom.js";

export function renderModel(summary, { onWhich }) {
  $("#model-title").textContent = `${summary.name}:${summary.version}`;
  document.title = `manylabel · ${summary.name}`;
  const provider = summary.provider || {};
  const facts = [
    ["Name", summary.name],
    ["Version", summary.version],
    ["Created", (summary.created_at || "").replace("T", " ").slice(0, 19)],
    ["Backbone", summary.backbone?.id],
    ["Provider", `${provider.active || "?"}${provider.note ? ` (${provider.note})` : ""}`],
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
  for (const input of $$('input[name="which"]')) {
    input.addEventListener("change", () => input.checked && onWhich(input.value));
  }
}
