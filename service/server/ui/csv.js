// Labels CSVs in the page: read one to show the images' labels before upload and after (the
// dataset's labels.csv). The same two layouts as training reads (training/data/labels.py):
// `000006.jpg,bus,car` rows (a `filename,...` header dropped), or one-hot `filename,cat,dog` + 0/1 cells.

const HEADER_NAMES = new Set([
  "filename", "file_name", "file", "filepath", "image", "image_name", "img", "path",
]);
const BINARY = new Set(["0", "1", ""]);

/** RFC 4180 rows: quoted cells, "" for a quote inside them, CRLF or LF; blank lines dropped. */
export function parseCsv(text) {
  const rows = [];
  let row = [];
  let cell = "";
  let quoted = false;
  const src = text.replace(/^\uFEFF/, "");
  for (let i = 0; i < src.length; i++) {
    const c = src[i];
    if (quoted) {
      if (c === '"' && src[i + 1] === '"') {
        cell += '"';
        i++;
      } else if (c === '"') quoted = false;
      else cell += c;
    } else if (c === '"') quoted = true;
    else if (c === ",") {
      row.push(cell);
      cell = "";
    } else if (c === "\n" || c === "\r") {
      if (c === "\r" && src[i + 1] === "\n") i++;
      row.push(cell);
      if (row.some((x) => x.trim() !== "")) rows.push(row);
      row = [];
      cell = "";
    } else cell += c;
  }
  row.push(cell);
  if (row.some((x) => x.trim() !== "")) rows.push(row);
  return rows.map((r) => r.map((x) => x.trim()));
}

/** Rows of a labels CSV -> Map(file name -> [labels]), in file order. */
export function labelsOf(rows) {
  if (!rows.length) return new Map();
  const first = rows[0];
  const header = HEADER_NAMES.has(first[0].toLowerCase());
  const body = header ? rows.slice(1) : rows;
  const oneHot =
    header && first.length > 1 && body.length > 0 && body.every((r) => r.slice(1).every((x) => BINARY.has(x)));
  const out = new Map();
  for (const [name, ...cells] of body) {
    if (!name) continue;
    const labels = oneHot ? first.slice(1).filter((_, j) => cells[j] === "1") : cells.filter(Boolean);
    out.set(name, [...new Set([...(out.get(name) || []), ...labels])]);
  }
  return out;
}

/** The labels of the image sent as `name` (a path): its own row, else a row naming a trailing part. */
export function labelsFor(table, name) {
  if (table.has(name)) return table.get(name);
  const parts = name.split("/");
  for (let i = 1; i < parts.length; i++) {
    const tail = parts.slice(i).join("/");
    if (table.has(tail)) return table.get(tail);
  }
  return null;
}

/** Count each label over a table: {label: images}. */
export function countLabels(table) {
  const counts = {};
  for (const labels of table.values()) for (const label of labels) counts[label] = (counts[label] || 0) + 1;
  return counts;
}
