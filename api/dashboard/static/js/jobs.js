// The jobs list: newest first, filter by status, refreshed every few seconds without a reload.
// Polling one page (a single request, cheap with ETags) scales better than one event stream per listed job.

import { getJSON } from "./api.js";
import { STATUSES, age, fill, h, number, pair, pollList, progressBar, statusBadge, stepText } from "./ui.js";

const REFRESH_MS = 2000;
const PAGE_SIZE = 50;

function jobRow(job) {
  const metrics = job.metrics || {};
  const spec = job.spec || {};
  const link = h("a", { href: `#/jobs/${encodeURIComponent(job.id)}`, class: "job-link" }, job.name || job.id);
  return h("tr", { "data-job-id": job.id, "data-status": job.status },
    h("td", { "data-label": "Job" }, h("div", {}, link, h("div", { class: "muted mono" }, job.id))),
    h("td", { "data-label": "Status", class: "status" }, statusBadge(job.status)),
    h("td", { "data-label": "Stage" }, job.stage || "–"),
    h("td", { "data-label": "Progress" }, h("div", {}, progressBar(job), h("div", { class: "muted small" }, stepText(job)))),
    h("td", { "data-label": "Method" }, spec.method || "–"),
    h("td", { "data-label": "Student ← teacher" }, pair(spec)),
    h("td", { "data-label": "Accuracy", class: "num" }, number(metrics.student_accuracy)),
    h("td", { "data-label": "Expl. cosine", class: "num" }, number(metrics.explanation_cosine)),
    h("td", { "data-label": "Age", class: "num", title: job.created_at }, age(job.created_at)),
  );
}

export function jobsView(root, query) {
  const status = query.get("status") || "";
  const filter = h("select", { id: "status-filter", "aria-label": "Filter by status" },
    h("option", { value: "" }, "all statuses"),
    STATUSES.map((s) => h("option", { value: s, selected: s === status }, s)));
  filter.addEventListener("change", () => {
    location.hash = filter.value ? `#/jobs?status=${filter.value}` : "#/jobs";
  });
  const body = h("tbody", { id: "jobs-body" });
  const message = h("div", { class: "message" });
  const updated = h("span", { class: "muted small", id: "jobs-updated" });
  fill(root, 
    h("div", { class: "toolbar" }, h("h1", {}, "Jobs"), filter, updated),
    message,
    h("table", { class: "jobs", id: "jobs-table" },
      h("thead", {}, h("tr", {}, ["Job", "Status", "Stage", "Progress", "Method", "Student ← teacher",
        "Accuracy", "Expl. cosine", "Age"].map((title) => h("th", {}, title)))),
      body),
  );

  return pollList(REFRESH_MS, message, updated, async () => {
    const params = new URLSearchParams({ limit: String(PAGE_SIZE) });
    if (status) params.set("status", status);
    const page = await getJSON(`/v1/jobs?${params}`);
    return () => {
      body.replaceChildren(...page.items.map(jobRow));
      fill(message, page.next_cursor ? h("p", { class: "muted small" },
        `Showing the newest ${PAGE_SIZE}; filter by status to see others (distill jobs --limit 0 lists all).`) : null,
      page.items.length ? null : h("p", { class: "muted" },
        status ? `No ${status} jobs.` : "No jobs yet. Submit one with `distill submit SPEC.json`."));
    };
  });
}
