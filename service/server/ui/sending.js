// Sending a dataset's files: images in groups within the server's limits (one request each, with
// real upload progress), the labels CSV once every image is there to match it; and the image cards
// the dataset views show.

import { uploadJSON } from "./api.js";
import { write } from "./auth.js";
import { $, h } from "./dom.js";
import { chunk, isZip } from "./files.js";

export function datasetHref(id) {
  return `#datasets/${encodeURIComponent(id)}`;
}

export function datasetPath(id, rest = "") {
  return `/datasets/${encodeURIComponent(id)}${rest}`;
}

/** Show upload progress in the box `#${prefix}-progress` (a <progress> and a status line); null hides it. */
export function progressIn(prefix) {
  return (fraction, text) => {
    $(`#${prefix}-progress`).hidden = fraction === null;
    if (fraction === null) return;
    const bar = $(`#${prefix}-bar`);
    if (fraction === undefined) bar.removeAttribute("value"); // the server is reading the images
    else bar.value = fraction;
    $(`#${prefix}-status`).textContent = text;
  };
}

/** [{file, name}] in consecutive groups within `limits` ({maxFiles, maxBytes}); each zip alone. */
export function groupsOf(given, limits) {
  const byFile = new Map(given.map((g) => [g.file, g]));
  return chunk(
    given.map((g) => g.file),
    limits.maxFiles,
    limits.maxBytes,
  ).map((files) => files.map((file) => byFile.get(file)));
}

export function sendLabels(id, file) {
  const form = new FormData();
  form.append("labels", file, file.name);
  return write("adding labels", (token) => uploadJSON(datasetPath(id, "/labels"), form, { token }));
}

/**
 * Send [{file, name}] in groups. With `create` (a name), the first group creates the dataset
 * (POST /datasets, with the labels CSV when everything fits one request) and the others go to
 * /datasets/{id}/images; a CSV that did not fit goes last, once every image is there to match it.
 * Resolves to the last answer, or null when a request failed (the error is shown).
 */
export async function sendImages(given, { create, id, labels, limits, progress }) {
  const groups = groupsOf(given, limits);
  const total = given.reduce((sum, g) => sum + g.file.size, 0) || 1;
  let sent = 0;
  let answer = null;
  try {
    for (const [i, group] of groups.entries()) {
      const form = new FormData();
      const first = create && i === 0;
      if (first) form.append("name", create);
      if (labels && i === 0 && groups.length === 1) form.append("labels", labels, labels.name);
      for (const g of group) form.append("images", g.file, g.name);
      const path = first ? "/datasets" : datasetPath(id ?? answer.id, "/images");
      const groupBytes = group.reduce((sum, g) => sum + g.file.size, 0);
      const what = groups.length > 1 ? ` · request ${i + 1} of ${groups.length}` : "";
      answer = await write(create ? "creating the dataset" : "adding images", (token) =>
        uploadJSON(path, form, {
          token,
          onProgress: (done, size, phase) =>
            phase === "waiting"
              ? progress(undefined, `Reading the images…${what}`)
              : progress((sent + (size ? (done / size) * groupBytes : 0)) / total, `Uploading${what}`),
        }),
      );
      if (!answer) return null;
      sent += groupBytes;
    }
  } finally {
    progress(null);
  }
  if (labels && groups.length > 1) return sendLabels(answer.id, labels);
  return answer;
}

/** A thumbnail card: the local file's picture when the page still has it, else its name only. */
export function imageCard(name, labels, file, urls) {
  let preview;
  if (file && !isZip(file)) {
    const url = URL.createObjectURL(file);
    urls.push(url);
    preview = h("img", { src: url, alt: name, width: 120, height: 120 });
  } else {
    preview = h("div", { class: "placeholder", text: name.split("/").pop().replace(/\.[^.]*$/, "") });
  }
  const chips = labels?.length
    ? labels.map((label) => h("span", { class: "chip pred", text: label }))
    : [h("span", { class: "muted small", text: labels ? "no label" : "not labelled" })];
  return h(
    "figure",
    { class: "card thumb", "data-name": name },
    preview,
    h("figcaption", {}, h("span", { class: "fname", title: name, text: name })),
    h("div", { class: "chips" }, ...chips),
  );
}
