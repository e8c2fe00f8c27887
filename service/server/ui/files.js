// Files a person gives the page: dropped or picked images, folders and .zip files, and the groups
// they are sent in (each request within the server's limits, so progress is real and nothing is refused).

const IMAGE_EXT = /\.(jpe?g|png|gif|bmp|webp|tiff?)$/i;
export const isZip = (file) => /\.zip$/i.test(file.name) || /zip/.test(file.type);
export const isImage = (file) => file.type.startsWith("image/") || IMAGE_EXT.test(file.name);
export const isCsv = (file) => /\.csv$/i.test(file.name) || file.type === "text/csv";

/** Consecutive groups of files within the server's limits; each zip goes alone. */
export function chunk(files, maxFiles, maxBytes) {
  const out = [];
  let current = [];
  let size = 0;
  const flush = () => {
    if (current.length) out.push(current);
    current = [];
    size = 0;
  };
  for (const file of files) {
    if (isZip(file)) {
      flush();
      out.push([file]);
      continue;
    }
    if (current.length >= maxFiles || (current.length && size + file.size > maxBytes)) flush();
    current.push(file);
    size += file.size;
  }
  flush();
  return out;
}

/**
 * Each file with the name it is sent under: its path inside the folder that was picked or dropped
 * (the folder itself left out, as a labels CSV beside the images names them), else its file name.
 * Returns [{file, name}].
 */
export function named(files, paths = files.map((f) => f.webkitRelativePath || "")) {
  const tops = new Set(paths.filter(Boolean).map((p) => p.split("/")[0]));
  const strip = tops.size === 1 && paths.every((p) => p.includes("/"));
  return files.map((file, i) => {
    const path = paths[i];
    if (!path) return { file, name: file.name };
    return { file, name: strip ? path.split("/").slice(1).join("/") : path };
  });
}

function readEntries(reader) {
  return new Promise((resolve, reject) => reader.readEntries(resolve, reject));
}

async function walk(entry, out) {
  if (entry.isFile) {
    const file = await new Promise((resolve, reject) => entry.file(resolve, reject));
    out.push({ file, path: entry.fullPath.replace(/^\//, "") });
    return;
  }
  const reader = entry.createReader();
  for (;;) {
    const batch = await readEntries(reader); // a directory answers in batches of up to 100
    if (!batch.length) return;
    for (const child of batch) await walk(child, out);
  }
}

/** The files of a drop, folders walked: [{file, name}] as `named` gives them. */
export async function droppedFiles(dataTransfer) {
  const entries = [...(dataTransfer.items || [])]
    .map((item) => (item.kind === "file" && item.webkitGetAsEntry ? item.webkitGetAsEntry() : null))
    .filter(Boolean);
  if (!entries.length || entries.every((e) => e.isFile)) return named([...dataTransfer.files], []);
  const found = [];
  for (const entry of entries) await walk(entry, found);
  return named(
    found.map((f) => f.file),
    found.map((f) => (f.path.includes("/") ? f.path : "")),
  );
}

/** Make `zone` a drop target: `onFiles([{file, name}])` after a drop; Enter or Space clicks `input`. */
export function dropzone(zone, input, onFiles) {
  zone.addEventListener("dragover", (e) => {
    e.preventDefault();
    zone.classList.add("over");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", async (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    onFiles(await droppedFiles(e.dataTransfer));
  });
  zone.addEventListener("keydown", (e) => {
    if (e.target === zone && (e.key === "Enter" || e.key === " ")) input.click();
  });
}
