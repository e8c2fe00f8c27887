// Label changes to many images at once (POST /datasets/{id}/images/labels, one dataset version per
// request): a label added to or removed from the selected images, and the suggestions shown accepted.

import { sendJSON } from "./api.js";
import { write } from "./auth.js";
import { datasetPath } from "./sending.js";

/** Add (`kind` "add") or remove `label` on images `ids`; resolves to {changed, version} or null. */
export function labelMany(dataset, ids, label, kind) {
  const body = { images: ids, add: kind === "add" ? [label] : [], remove: kind === "remove" ? [label] : [] };
  return write("changing the selected images' labels", (token) =>
    sendJSON("POST", datasetPath(dataset, "/images/labels"), body, { token }),
  );
}

/** The suggestions of `images` not given yet, as label -> [image ids]. */
export function suggestedByLabel(images) {
  const byLabel = new Map();
  for (const image of images) {
    for (const s of image.suggestions || []) {
      if (!image.labels?.includes(s.label)) byLabel.set(s.label, [...(byLabel.get(s.label) || []), image.id]);
    }
  }
  return byLabel;
}

/** Accept every suggestion of `images`: one write per label; resolves to the last version, or null. */
export async function acceptSuggestions(dataset, images) {
  let version = null;
  for (const [label, ids] of suggestedByLabel(images)) {
    const answer = await labelMany(dataset, ids, label, "add");
    if (!answer) break;
    version = answer.version;
  }
  return version;
}
