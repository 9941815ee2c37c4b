// The /v1 API from the browser. The key (when the service has keys) lives in sessionStorage and travels only
// in the Authorization header: EventSource cannot send headers (the key would have to go into the URL, and
// from there into access logs and history), so events are read with fetch() streaming instead, and images
// and downloads are fetched as blobs.

const KEY_STORAGE = "distill.apiKey";

export class ApiError extends Error {
  constructor(status, code, message, field) {
    super(message);
    this.status = status;
    this.code = code;
    this.field = field || null;
  }
  toString() {
    return `${this.code}: ${this.message}`;
  }
}

export function hasKey() {
  return Boolean(sessionStorage.getItem(KEY_STORAGE));
}

export function forgetKey() {
  sessionStorage.removeItem(KEY_STORAGE);
}

function authHeaders() {
  const key = sessionStorage.getItem(KEY_STORAGE);
  return key ? { Authorization: `Bearer ${key}` } : {};
}

let pendingKey = null; // one prompt at a time, however many calls were refused

function askForKey(wasWrong) {
  if (pendingKey) return pendingKey;
  const dialog = document.getElementById("key-dialog");
  const form = document.getElementById("key-form");
  const input = document.getElementById("key-input");
  document.getElementById("key-error").textContent = wasWrong ? "That key was refused; try again." : "";
  input.value = "";
  pendingKey = new Promise((resolve) => {
    form.addEventListener("submit", () => {
      sessionStorage.setItem(KEY_STORAGE, input.value.trim());
      document.getElementById("forget-key").hidden = false;
      pendingKey = null;
      resolve();
    }, { once: true });
  });
  dialog.showModal();
  input.focus();
  return pendingKey;
}

async function errorFrom(response) {
  try {
    const body = await response.json();
    if (body && body.error) return new ApiError(response.status, body.error.code, body.error.message, body.error.field);
  } catch (_) { /* not our error body */ }
  return new ApiError(response.status, `http_${response.status}`, response.statusText || "request failed");
}

// fetch() with the key; a 401 asks for the key and tries again.
export async function request(path, options = {}) {
  for (;;) {
    let response;
    try {
      response = await fetch(path, { ...options, headers: { ...authHeaders(), ...(options.headers || {}) } });
    } catch (error) {
      if (error.name === "AbortError") throw error;
      throw new ApiError(0, "connection_failed", "cannot reach the service");
    }
    if (response.status === 401) {
      await askForKey(hasKey());
      continue;
    }
    if (!response.ok) throw await errorFrom(response);
    return response;
  }
}

export async function getJSON(path, options) {
  return (await request(path, options)).json();
}

export async function postJSON(path, body) {
  const options = { method: "POST", headers: { "Content-Type": "application/json" } };
  if (body !== undefined) options.body = JSON.stringify(body);
  return (await request(path, options)).json();
}

// An artifact as an object URL (the caller revokes it when its view goes away).
export async function blobURL(path, signal) {
  const response = await request(path, { signal });
  return URL.createObjectURL(await response.blob());
}

// Server-Sent Events over fetch: calls onEvent(name, data) per event until the server ends the stream.
export async function streamEvents(path, onEvent, signal) {
  const response = await request(path, { signal, headers: { Accept: "text/event-stream" } });
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let name = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) name = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (data.length) onEvent(name, data.join("\n"));
    }
  }
}

// A multipart upload with progress (fetch cannot report upload progress; XMLHttpRequest can).
export function upload(path, formData, onProgress) {
  return new Promise((resolve, reject) => {
    const send = () => {
      const xhr = new XMLHttpRequest();
      xhr.open("POST", path);
      for (const [name, value] of Object.entries(authHeaders())) xhr.setRequestHeader(name, value);
      xhr.upload.onprogress = (event) => event.lengthComputable && onProgress(event.loaded / event.total);
      xhr.onerror = () => reject(new ApiError(0, "connection_failed", "the upload could not reach the service"));
      xhr.onload = () => {
        let body = null;
        try { body = JSON.parse(xhr.responseText); } catch (_) { /* not JSON */ }
        if (xhr.status === 401) {
          askForKey(hasKey()).then(send);
        } else if (xhr.status >= 200 && xhr.status < 300) {
          resolve(body);
        } else if (body && body.error) {
          reject(new ApiError(xhr.status, body.error.code, body.error.message, body.error.field));
        } else {
          reject(new ApiError(xhr.status, `http_${xhr.status}`, xhr.statusText || "upload failed"));
        }
      };
      xhr.send(formData);
    };
    send();
  });
}
