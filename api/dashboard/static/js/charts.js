// Line charts as inline SVG (no library): one chart, several series, x = epoch.

const SVG = "http://www.w3.org/2000/svg";
const COLORS = ["#2563eb", "#dc2626", "#059669", "#d97706", "#7c3aed", "#0891b2"];

function svg(tag, attributes = {}, text) {
  const element = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes)) element.setAttribute(name, value);
  if (text !== undefined) element.textContent = text;
  return element;
}

// series: [{label, points: [[epoch, value], ...]}]; returns a <figure> (or null when nothing to draw).
export function lineChart(title, series) {
  series = series.filter((s) => s.points.length > 0);
  if (!series.length) return null;
  const width = 420, height = 220, left = 44, right = 12, top = 12, bottom = 28;
  const xs = series.flatMap((s) => s.points.map((p) => p[0]));
  const ys = series.flatMap((s) => s.points.map((p) => p[1]));
  const [xMin, xMax] = [Math.min(...xs), Math.max(...xs)];
  let [yMin, yMax] = [Math.min(...ys), Math.max(...ys)];
  if (yMin === yMax) { yMin -= 0.5; yMax += 0.5; }
  const x = (v) => left + (xMax === xMin ? 0.5 : (v - xMin) / (xMax - xMin)) * (width - left - right);
  const y = (v) => top + (1 - (v - yMin) / (yMax - yMin)) * (height - top - bottom);

  const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": title, class: "chart" });
  for (let i = 0; i <= 4; i++) {
    const value = yMin + ((yMax - yMin) * i) / 4;
    chart.append(svg("line", { x1: left, x2: width - right, y1: y(value), y2: y(value), class: "grid" }));
    chart.append(svg("text", { x: left - 6, y: y(value) + 4, class: "tick", "text-anchor": "end" },
      Math.abs(value) >= 100 ? value.toFixed(0) : value.toFixed(2)));
  }
  for (const epoch of [...new Set(xs)].sort((a, b) => a - b)) {
    chart.append(svg("text", { x: x(epoch), y: height - 8, class: "tick", "text-anchor": "middle" }, epoch));
  }
  const legend = document.createElement("figcaption");
  legend.append(title, " ");
  series.forEach((s, index) => {
    const color = COLORS[index % COLORS.length];
    const d = s.points.map((p, i) => `${i ? "L" : "M"}${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join(" ");
    chart.append(svg("path", { d, fill: "none", stroke: color, "stroke-width": 2 }));
    for (const p of s.points) chart.append(svg("circle", { cx: x(p[0]), cy: y(p[1]), r: 2.5, fill: color }));
    const key = document.createElement("span");
    key.className = "legend";
    key.dataset.color = String(index % COLORS.length);
    key.textContent = s.label;
    legend.append(key);
  });
  const figure = document.createElement("figure");
  figure.className = "chart-figure";
  figure.append(chart, legend);
  return figure;
}

// The per-epoch curves of a finished job's metrics.history: losses in one chart, accuracies in another.
export function historyCharts(history) {
  if (!history) return [];
  const stages = Object.entries(history).filter(([, entries]) => Array.isArray(entries) && entries.length);
  const pick = (key) => stages
    .filter(([, entries]) => entries.some((e) => typeof e[key] === "number"))
    .map(([stage, entries]) => ({
      label: `${stage} ${key.replaceAll("_", " ")}`,
      points: entries.filter((e) => typeof e[key] === "number").map((e) => [e.epoch, e[key]]),
    }));
  const accuracyKeys = [...new Set(stages.flatMap(([, entries]) => entries.flatMap(Object.keys)))]
    .filter((key) => key.endsWith("accuracy"));
  return [
    lineChart("Loss per epoch", pick("loss")),
    lineChart("Accuracy per epoch", accuracyKeys.flatMap(pick)),
  ].filter(Boolean);
}
