// Line charts with uPlot, coloured from the page's CSS variables (dark and light themes) and
// resized with their container. A chart is an image to assistive technology: its figure has
// a caption, and each page shows the same numbers in a table.

import uPlot from "../vendor/uPlot.esm.js";
import { h } from "./dom.js";

const PALETTE = ["--chart-1", "--chart-2", "--chart-3", "--chart-4"];

function cssVar(name) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim() || "#888";
}

/**
 * lineChart({caption, x: [...], series: [{label, values, axis?: "left"|"right"}], time: bool})
 * -> <figure> holding the chart. `x` is unix seconds when `time`, plain numbers otherwise.
 */
export function lineChart({ caption, x, series, time = true, xLabel = "", yLabel = "", y2Label = "" }) {
  const holder = h("div", { class: "chart", role: "img", "aria-label": caption });
  const figure = h("figure", { class: "chart-figure" }, holder, h("figcaption", {}, caption));
  if (!x.length) {
    holder.append(h("p", { class: "empty" }, "No data yet."));
    return figure;
  }
  const text = cssVar("--fg-muted");
  const grid = cssVar("--border");
  const axis = (label, side = 3) => ({
    label,
    side,
    stroke: text,
    grid: { stroke: grid, width: 1 },
    ticks: { stroke: grid, width: 1 },
  });
  const hasRight = series.some((s) => s.axis === "right");
  const options = {
    width: 600,
    height: 240,
    scales: { x: { time }, y: {}, ...(hasRight ? { y2: {} } : {}) },
    axes: [
      // Versions and other counts on x get whole-number ticks only.
      time ? { ...axis(xLabel, 2) } : { ...axis(xLabel, 2), incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000], values: (u, ticks) => ticks.map((t) => String(t)) },
      { ...axis(yLabel, 3), scale: "y" },
      ...(hasRight ? [{ ...axis(y2Label, 1), scale: "y2", grid: { show: false } }] : []),
    ],
    series: [
      { label: xLabel || (time ? "day" : "x") },
      ...series.map((s, i) => ({
        label: s.label,
        scale: s.axis === "right" ? "y2" : "y",
        stroke: cssVar(PALETTE[i % PALETTE.length]),
        width: 2,
        dash: s.dash,
        points: { show: true, size: 5 },
      })),
    ],
    legend: { live: false },
    cursor: { drag: { x: false, y: false } },
  };
  const plot = new uPlot(options, [x, ...series.map((s) => s.values)], holder);
  const resize = () => {
    const width = Math.max(260, Math.floor(holder.clientWidth));
    if (width !== plot.width) plot.setSize({ width, height: 240 });
  };
  new ResizeObserver(resize).observe(holder);
  requestAnimationFrame(resize);
  return figure;
}

/** Unix seconds at UTC midnight of a "YYYY-MM-DD" (or ISO) day. */
export function daySeconds(day) {
  const t = Date.parse(String(day).length === 10 ? `${day}T00:00:00Z` : day);
  return Number.isFinite(t) ? Math.floor(t / 1000) : 0;
}
