// Small DOM helpers and formatters shared by the views. Text always goes in as text nodes, never as HTML.

export function h(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") element.addEventListener(name.slice(2), value);
    else if (name === "class") element.className = value;
    else if (name in element && typeof value !== "string") element[name] = value;
    else element.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return element;
}

// replaceChildren() without the nulls and falses that conditional sections produce (it would print "null").
export function fill(element, ...children) {
  element.replaceChildren(...children.flat().filter((child) => child !== null && child !== undefined && child !== false));
  return element;
}

export const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
export const STATUSES = ["waiting", "queued", "running", "cancelling", "succeeded", "failed", "cancelled"];

export function number(value, digits = 3) {
  return typeof value === "number" && Number.isFinite(value) ? value.toFixed(digits) : "–";
}

export function age(iso) {
  if (!iso) return "–";
  const seconds = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
  if (seconds < 60) return `${seconds}s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)}m`;
  if (seconds < 86400) return `${Math.floor(seconds / 3600)}h`;
  return `${Math.floor(seconds / 86400)}d`;
}

export function size(bytes) {
  if (bytes < 1024) return `${bytes} B`;
  const units = ["KiB", "MiB", "GiB"];
  let value = bytes / 1024;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) { value /= 1024; unit += 1; }
  return `${value.toFixed(1)} ${units[unit]}`;
}

export function fraction(job) {
  if (job.status === "succeeded") return 1;
  return job.progress ? job.progress.fraction : 0;
}

export function statusBadge(status) {
  return h("span", { class: `badge status-${status}`, "data-status": status }, status);
}

export function progressBar(job) {
  const value = fraction(job);
  return h("span", { class: "progress" },
    h("progress", { max: 1, value, "aria-label": "progress", class: `status-${job.status}` }),
    h("span", { class: "progress-text" }, `${Math.floor(value * 100)}%`));
}

export function stepText(job) {
  const p = job.progress;
  if (!p || TERMINAL.has(job.status)) return "";
  const parts = [];
  if (p.total_epochs) parts.push(`epoch ${p.epoch}/${p.total_epochs}`);
  if (p.total_steps) parts.push(`step ${p.step}/${p.total_steps}`);
  if (p.metrics && typeof p.metrics.loss === "number") parts.push(`loss ${p.metrics.loss.toFixed(4)}`);
  return parts.join(" · ");
}

export function pair(spec) {
  const student = (spec.student || {}).arch || "?";
  const teacher = (spec.teacher || {}).arch || "?";
  return `${student} ← ${teacher}`;
}

export function errorBox(error) {
  return h("div", { class: "error-box", role: "alert" },
    h("strong", {}, error.code || "error"), ": ", error.message || String(error));
}

// A list page's refresh loop: `load()` fetches and returns the function that renders what it fetched; the
// "updated" stamp, the error box and the next refresh are handled here. Returns the function that stops it
// (the router calls it on leaving the page), after which nothing fetched late is rendered.
export function pollList(ms, message, updated, load) {
  let timer = null;
  let stopped = false;
  async function refresh() {
    try {
      const render = await load();
      if (stopped) return;
      render();
      updated.textContent = `updated ${new Date().toLocaleTimeString()}`;
    } catch (error) {
      if (!stopped) message.replaceChildren(errorBox(error));
    }
    if (!stopped) timer = setTimeout(refresh, ms);
  }
  refresh();
  return () => { stopped = true; clearTimeout(timer); };
}
