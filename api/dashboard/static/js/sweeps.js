// The sweeps list: newest first, each sweep's children by state and its current leader, refreshed every few
// seconds. The leader is the top leaderboard row (mean ± std over seeds of the sweep's rank_by metric).

import { getJSON } from "./api.js";
import { age, fill, h, pollList, statusBadge } from "./ui.js";

const REFRESH_MS = 3000;
const PAGE_SIZE = 20;
const ENDED = new Set(["succeeded", "failed", "cancelled"]);

function counts(sweep) {
  return Object.entries(sweep.counts).sort().map(([status, n]) => `${n} ${status}`).join(", ") || "–";
}

function leader(sweep) {
  const top = (sweep.leaderboard || [])[0];
  const stats = top && top.metrics[sweep.rank_by];
  if (!stats || stats.mean === null) return "–";
  return `${JSON.stringify(top.config)}: ${stats.mean.toFixed(4)} ± ${stats.std.toFixed(4)}`;
}

function sweepRow(sweep) {
  const done = Object.entries(sweep.counts).filter(([s]) => ENDED.has(s)).reduce((sum, [, n]) => sum + n, 0);
  return h("tr", { "data-sweep-id": sweep.id, "data-status": sweep.status },
    h("td", { "data-label": "Sweep" }, h("div", {}, sweep.name, h("div", { class: "muted mono" }, sweep.id))),
    h("td", { "data-label": "Status", class: "status" }, statusBadge(sweep.status)),
    h("td", { "data-label": "Children", class: "num" }, `${done}/${sweep.children}`),
    h("td", { "data-label": "States" }, counts(sweep)),
    h("td", { "data-label": `Leader (${sweep.rank_by})`, class: "mono small" }, leader(sweep)),
    h("td", { "data-label": "Age", class: "num", title: sweep.created_at }, age(sweep.created_at)),
  );
}

export function sweepsView(root) {
  const body = h("tbody", { id: "sweeps-body" });
  const message = h("div", { class: "message" });
  const updated = h("span", { class: "muted small", id: "sweeps-updated" });
  fill(root,
    h("div", { class: "toolbar" }, h("h1", {}, "Sweeps"), updated),
    message,
    h("table", { class: "jobs", id: "sweeps-table" },
      h("thead", {}, h("tr", {}, ["Sweep", "Status", "Children", "States", "Leader", "Age"]
        .map((title) => h("th", {}, title)))),
      body),
  );

  return pollList(REFRESH_MS, message, updated, async () => {
    const page = await getJSON(`/v1/sweeps?limit=${PAGE_SIZE}`);
    // The list carries summaries; the leader comes from each listed sweep's full document.
    const sweeps = await Promise.all(page.items.map((item) => getJSON(`/v1/sweeps/${encodeURIComponent(item.id)}`)));
    return () => {
      body.replaceChildren(...sweeps.map(sweepRow));
      fill(message, sweeps.length ? null : h("p", { class: "muted" },
        "No sweeps yet. Start one with `distill sweep SWEEP.json`."));
    };
  });
}
