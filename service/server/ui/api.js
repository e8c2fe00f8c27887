// Talking to the service: JSON GETs that cancel stale requests, JSON writes, uploads with progress.

export class ApiError extends Error {
  constructor(status, message, field = null) {
    super(message);
    this.status = status;
    this.field = field;
  }
}

let inFlight = 0;
const busyListeners = new Set();

export function onBusy(listener) {
  busyListeners.add(listener);
}

function busy(delta) {
  inFlight += delta;
  for (const listener of busyListeners) listener(inFlight > 0);
}

/** The error an API answer carries: {"error": message, "field": name}, or the status text. */
async function errorOf(response) {
  let message = `${response.status} ${response.statusText}`;
  let field = null;
  try {
    const body = await response.json();
    if (body && body.error) {
      message = String(body.error);
      field = body.field ?? null;
    }
  } catch {
    // not JSON: keep the status line
  }
  return new ApiError(response.status, message, field);
}

export function query(params) {
  const q = new URLSearchParams();
  for (const [key, value] of Object.entries(params || {})) {
    if (value !== undefined && value !== null && value !== "") q.set(key, value);
  }
  const text = q.toString();
  return text ? `?${text}` : "";
}

const controllers = new Map();

/**
 * GET path?params as JSON. Requests sharing a `key` replace each other: a new one aborts the one
 * in flight, so a quick succession of threshold clicks never paints an older answer last.
 * Resolves to null when superseded.
 */
export async function getJSON(path, params, key = path) {
  controllers.get(key)?.abort();
  const controller = new AbortController();
  controllers.set(key, controller);
  busy(+1);
  try {
    const response = await fetch(path + query(params), {
      signal: controller.signal,
      headers: { Accept: "application/json" },
    });
    if (!response.ok) throw await errorOf(response);
    return await response.json();
  } catch (err) {
    if (err.name === "AbortError") return null;
    if (err instanceof ApiError) throw err;
    throw new ApiError(0, `cannot reach the service (${err.message})`);
  } finally {
    busy(-1);
    if (controllers.get(key) === controller) controllers.delete(key);
  }
}

function authorization(headers, token) {
  if (token) headers.Authorization = `Bearer ${token}`;
  return headers;
}

/** A JSON write (POST, DELETE): resolves to the answer's JSON, or null for an empty answer. */
export async function sendJSON(method, path, body, { token } = {}) {
  const headers = authorization({ Accept: "application/json" }, token);
  if (body !== undefined) headers["Content-Type"] = "application/json";
  busy(+1);
  try {
    const response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    if (!response.ok) throw await errorOf(response);
    const text = await response.text();
    return text ? JSON.parse(text) : null;
  } catch (err) {
    if (err instanceof ApiError) throw err;
    throw new ApiError(0, `cannot reach the service (${err.message})`);
  } finally {
    busy(-1);
  }
}

export function postJSON(path, body, { token } = {}) {
  return sendJSON("POST", path, body, { token });
}

/**
 * GET path as JSON without the busy indicator or cancelling: for polling a job every second.
 * Throws ApiError like getJSON.
 */
export async function peekJSON(path) {
  let response;
  try {
    response = await fetch(path, { headers: { Accept: "application/json" } });
  } catch (err) {
    throw new ApiError(0, `cannot reach the service (${err.message})`);
  }
  if (!response.ok) throw await errorOf(response);
  return await response.json();
}

/**
 * POST a multipart form with XMLHttpRequest, the one browser API that reports upload progress.
 * `onProgress(sentBytes, totalBytes, phase)` with phase "upload" then "waiting" (the server is
 * scoring). Resolves to {blob, filename, type}; rejects with ApiError (status 0: network or cancelled).
 * `token`: sent as `Authorization: Bearer`, for the writes that need it.
 */
export function upload(path, form, { onProgress, signal, token } = {}) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", path);
    if (token) xhr.setRequestHeader("Authorization", `Bearer ${token}`);
    xhr.responseType = "blob";
    xhr.upload.onprogress = (e) => onProgress?.(e.loaded, e.lengthComputable ? e.total : 0, "upload");
    xhr.upload.onload = () => onProgress?.(1, 1, "waiting");
    xhr.onerror = () => reject(new ApiError(0, "the upload failed: the service could not be reached"));
    xhr.onabort = () => reject(new ApiError(0, "cancelled"));
    xhr.onload = async () => {
      const blob = xhr.response;
      if (xhr.status >= 200 && xhr.status < 300) {
        const disposition = xhr.getResponseHeader("Content-Disposition") || "";
        const match = /filename="([^"]+)"/.exec(disposition);
        resolve({ blob, filename: match ? match[1] : null, type: blob.type });
        return;
      }
      let message = `${xhr.status} ${xhr.statusText}`;
      let field = null;
      try {
        const body = JSON.parse(await blob.text());
        if (body.error) ({ error: message, field = null } = body);
      } catch {
        // keep the status line
      }
      reject(new ApiError(xhr.status, message, field));
    };
    signal?.addEventListener("abort", () => xhr.abort());
    busy(+1);
    xhr.onloadend = () => busy(-1);
    xhr.send(form);
  });
}

/** `upload` of a form whose answer is JSON (the studio's dataset writes). */
export async function uploadJSON(path, form, options = {}) {
  const answer = await upload(path, form, options);
  try {
    return JSON.parse(await answer.blob.text());
  } catch {
    throw new ApiError(0, `${path} did not answer JSON`);
  }
}
