// One job: live progress through its event stream, then curves, metrics, heatmaps and downloads.

import { ApiError, blobURL, getJSON, hasKey, postJSON, streamEvents } from "./api.js";
import { historyCharts } from "./charts.js";
import { TERMINAL, age, errorBox, fill, h, number, pair, progressBar, size, statusBadge, stepText } from "./ui.js";

const RECONNECT_MS = 2000;
const METRIC_ROWS = [
  ["student_accuracy", "Student top-1", 4], ["teacher_accuracy", "Teacher top-1", 4],
  ["agreement", "Teacher-student agreement", 4], ["explanation_cosine", "Explanation cosine", 4],
  ["ece", "ECE (15 bins)", 4], ["student_params", "Student parameters", 0],
  ["teacher_params", "Teacher parameters", 0], ["compression_ratio", "Compression (teacher/student params)", 2],
  ["student_latency_ms", "Student latency (ms/image)", 3], ["teacher_latency_ms", "Teacher latency (ms/image)", 3],
];

function confirmCancel(job) {
  const dialog = document.getElementById("confirm-dialog");
  document.getElementById("confirm-text").textContent =
    `Cancel job ${job.name || job.id}? A running job stops at its next training step; this cannot be undone.`;
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "yes"), { once: true });
    dialog.returnValue = "";
    dialog.showModal();
  });
}

function metricsTable(metrics) {
  const rows = METRIC_ROWS.filter(([key]) => typeof metrics[key] === "number").map(([key, label, digits]) =>
    h("tr", { "data-metric": key }, h("th", { scope: "row" }, label),
      h("td", { class: "num" }, digits ? number(metrics[key], digits) : metrics[key].toLocaleString())));
  return h("table", { class: "metrics", id: "metrics-table" }, h("tbody", {}, rows));
}

// Artifact links. Without a key a plain link works (and report.html opens in its own tab); with a key the file
// is fetched with the header and saved from memory, so the key never goes into a URL.
function artifactLink(artifact, objectURLs, signal) {
  const link = h("a", { href: artifact.url, class: "artifact", "data-artifact": artifact.name }, artifact.name);
  if (artifact.name.endsWith(".html") || artifact.content_type.startsWith("image/")) link.target = "_blank";
  link.rel = "noopener";
  link.addEventListener("click", async (event) => {
    if (!hasKey()) return;
    event.preventDefault();
    const url = await blobURL(artifact.url, signal);
    objectURLs.push(url);
    const save = h("a", { href: url, download: artifact.name.split("/").pop() });
    save.click();
  });
  return link;
}

// Everything but the per-image heatmaps (the gallery shows those; grid.png stacks them in one file).
function downloads(job, objectURLs, signal) {
  const perImage = (a) => a.name.startsWith("heatmaps/") && a.name !== "heatmaps/grid.png";
  const listed = job.artifacts.filter((a) => !perImage(a)).sort((a, b) =>
    (b.name === "report.html") - (a.name === "report.html") || a.name.localeCompare(b.name));
  const heatmaps = job.artifacts.filter(perImage).length;
  return h("section", { class: "card", id: "downloads" },
    h("h2", {}, "Report and downloads"),
    h("ul", { class: "artifacts" }, listed.map((artifact) =>
      h("li", { class: artifact.name === "report.html" ? "report" : null }, artifactLink(artifact, objectURLs, signal),
        h("span", { class: "muted small" }, ` ${size(artifact.size_bytes)}`)))),
    heatmaps ? h("p", { class: "muted small" }, `${heatmaps} per-image heatmaps are shown below (click one to open it).`)
      : null);
}

function gallery(job, objectURLs, signal) {
  // One figure per test image; grid.png stacks the same rows and stays among the downloads.
  const heatmaps = job.artifacts.filter((a) => a.name.startsWith("heatmaps/") && a.name !== "heatmaps/grid.png"
    && a.content_type.startsWith("image/"));
  if (!heatmaps.length) return null;
  const grid = h("div", { class: "gallery", id: "heatmaps" });
  for (const artifact of heatmaps) {
    const image = h("img", { alt: `heatmap ${artifact.name}`, "data-artifact": artifact.name, loading: "lazy" });
    const link = h("a", { target: "_blank", rel: "noopener" }, image);
    grid.append(h("figure", {}, link, h("figcaption", {}, artifact.name.replace("heatmaps/", ""))));
    blobURL(artifact.url, signal).then((url) => { objectURLs.push(url); image.src = url; link.href = url; }).catch(() => {
      image.alt = `could not load ${artifact.name}`;
    });
  }
  return h("section", { class: "card wide" }, h("h2", {}, "Explanations: teacher vs student (Grad-CAM)"),
    h("p", { class: "muted small" }, "Each image: input, teacher map, student map."), grid);
}

export function jobView(root, jobId) {
  const controller = new AbortController();
  const objectURLs = [];
  const head = h("div", { class: "job-head" });
  const live = h("section", { class: "card", id: "live" });
  const results = h("div", { class: "results" });
  const message = h("div", { class: "message" });
  fill(root, h("p", {}, h("a", { href: "#/jobs" }, "← all jobs")), head, message, live, results);
  let current = null;
  let cancelling = false;

  function renderHead(job) {
    const spec = job.spec || {};
    const dataset = spec.dataset || {};
    const cancel = TERMINAL.has(job.status) ? null : h("button", {
      type: "button", id: "cancel-job", class: "danger", disabled: cancelling || job.status === "cancelling",
      onclick: async () => {
        if (!(await confirmCancel(job))) return;
        cancelling = true;
        try { render(await postJSON(`/v1/jobs/${encodeURIComponent(job.id)}/cancel`)); }
        catch (error) { message.replaceChildren(errorBox(error)); }
      },
    }, job.status === "cancelling" ? "Cancelling…" : "Cancel job");
    fill(head,
      h("div", { class: "title-row" }, h("h1", {}, job.name || job.id), statusBadge(job.status), cancel),
      h("p", { class: "muted" }, h("span", { class: "mono" }, job.id), ` · ${spec.method || "custom loss"} · `,
        pair(spec), ` · ${dataset.name || dataset.id || "dataset"} · created ${age(job.created_at)} ago`,
        job.attempts > 1 ? ` · attempt ${job.attempts}` : ""));
  }

  function renderLive(job) {
    fill(live, h("h2", {}, "Progress"),
      h("div", { class: "live-row" }, progressBar(job), h("span", { id: "stage" }, job.stage || job.status)),
      h("p", { class: "muted", id: "step" }, stepText(job)),
      TERMINAL.has(job.status) ? null
        : h("p", { class: "muted small" }, "Metrics, curves, heatmaps and downloads appear here when the job ends."),
      job.error ? errorBox(job.error) : null,
      job.error && job.error.where ? h("p", { class: "muted small" }, `failed in ${job.error.where}`) : null);
  }

  function renderResults(job) {
    // Only from a full document (artifacts listed): a summary view would leave the results empty for good.
    if (!TERMINAL.has(job.status) || !Array.isArray(job.artifacts) || results.dataset.rendered === job.status) return;
    results.dataset.rendered = job.status;
    const charts = historyCharts((job.metrics || {}).history);
    fill(results,
      job.metrics ? h("section", { class: "card" }, h("h2", {}, "Metrics"), metricsTable(job.metrics)) : null,
      job.artifacts.length ? downloads(job, objectURLs, controller.signal) : null,
      charts.length ? h("section", { class: "card", id: "curves" }, h("h2", {}, "Curves per epoch"),
        h("div", { class: "charts" }, charts)) : null,
      gallery(job, objectURLs, controller.signal));
  }

  let headKey = null;
  function render(job) {
    current = job;
    // Redraw the title (and its Cancel button) only when it changes, not on every progress event: a button
    // replaced under the pointer would swallow the click.
    const key = `${job.status}/${job.attempts}/${cancelling}`;
    if (key !== headKey) { headKey = key; renderHead(job); }
    renderLive(job);
    renderResults(job);
  }

  async function follow() {
    while (!controller.signal.aborted && !(current && TERMINAL.has(current.status))) {
      try {
        await streamEvents(`/v1/jobs/${encodeURIComponent(jobId)}/events`, (name, data) => {
          if (name === "state" || name === "progress") render(JSON.parse(data));
        }, controller.signal);
        message.replaceChildren();
      } catch (error) {
        if (controller.signal.aborted) return;
        if (error instanceof ApiError && error.status === 404) { message.replaceChildren(errorBox(error)); return; }
        message.replaceChildren(h("p", { class: "muted" }, "Connection lost; reconnecting…"));
        await new Promise((resolve) => setTimeout(resolve, RECONNECT_MS));
      }
    }
    // The last event carries the final state; read once more for the complete document (metrics, artifacts).
    if (!controller.signal.aborted) render(await getJSON(`/v1/jobs/${encodeURIComponent(jobId)}`));
  }

  getJSON(`/v1/jobs/${encodeURIComponent(jobId)}`, { signal: controller.signal })
    .then((job) => { render(job); return follow(); })
    .catch((error) => { if (!controller.signal.aborted) message.replaceChildren(errorBox(error)); });

  return () => {
    controller.abort();
    objectURLs.forEach((url) => URL.revokeObjectURL(url));
  };
}
