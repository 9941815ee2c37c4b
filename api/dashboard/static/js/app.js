// The dashboard's router: #/jobs, #/jobs/<id>, #/sweeps, #/upload. A view is a function (root, ...args) that renders
// into root and returns a cleanup function; adding a page is one import and one route below.

import { forgetKey, hasKey } from "./api.js";
import { jobView } from "./job.js";
import { jobsView } from "./jobs.js";
import { sweepsView } from "./sweeps.js";
import { uploadsView } from "./uploads.js";

const ROUTES = [
  { pattern: /^\/jobs\/([A-Za-z0-9_-]+)$/, nav: "jobs", view: (root, match) => jobView(root, match[1]) },
  { pattern: /^\/jobs$/, nav: "jobs", view: (root, match, query) => jobsView(root, query) },
  { pattern: /^\/sweeps$/, nav: "sweeps", view: (root) => sweepsView(root) },
  { pattern: /^\/upload$/, nav: "upload", view: (root) => uploadsView(root) },
];

let cleanup = null;

function route() {
  const [path, search] = (location.hash.replace(/^#/, "") || "/jobs").split("?");
  const found = ROUTES.map((r) => ({ r, match: path.match(r.pattern) })).find((x) => x.match);
  if (!found) { location.hash = "#/jobs"; return; }
  if (cleanup) cleanup();
  const root = document.getElementById("view");
  for (const link of document.querySelectorAll("[data-nav]")) {
    link.classList.toggle("active", link.dataset.nav === found.r.nav);
  }
  cleanup = found.r.view(root, found.match, new URLSearchParams(search || "")) || null;
  window.scrollTo(0, 0);
}

const forget = document.getElementById("forget-key");
forget.hidden = !hasKey();
forget.addEventListener("click", () => { forgetKey(); forget.hidden = true; route(); });
window.addEventListener("hashchange", route);
route();
