// Network: live height and round (websockets), leaderboards, serving nodes, adapter versions
// with held-out loss against the base model, and network activity per day.
// Everything here comes from the chain and is untrusted: it only ever becomes text.

import { get, itemsOf } from "../api.js";
import { daySeconds, lineChart } from "../chart.js";
import { fmtInt, fmtNum, fmtPct, fmtTime, h, replace, shortAddr, table } from "../dom.js";
import { subscribe } from "../ws.js";

const MAX_BLOCKS = 12;

export async function networkPage(main) {
  const live = h("span", { class: "live-dot", role: "status", "aria-live": "polite" }, "connecting…");
  main.append(h("div", { class: "page-head" }, h("h1", { tabindex: "-1" }, "Network"), live));
  const stats = h("section", { class: "card wide", "aria-labelledby": "stats-h" });
  const round = h("section", { class: "card", "aria-labelledby": "round-h" });
  const blocks = h("section", { class: "card", "aria-labelledby": "blocks-h" });
  const miners = h("section", { class: "card wide", "aria-labelledby": "miners-h" });
  const validators = h("section", { class: "card wide", "aria-labelledby": "vals-h" });
  const serving = h("section", { class: "card wide", "aria-labelledby": "serving-h" });
  const adapters = h("section", { class: "card wide", "aria-labelledby": "adapters-h" });
  const activity = h("section", { class: "card wide", "aria-labelledby": "activity-h" });
  main.append(h("div", { class: "grid" }, stats, round, blocks, miners, validators, serving, adapters, activity));

  const state = { stats: {}, blocks: [], round: {} };

  const drawStats = () => renderStats(stats, state.stats);
  const drawBlocks = () => renderBlocks(blocks, state.blocks);
  const drawRound = () => renderRound(round, state.round, state.stats);

  async function loadStats() {
    try {
      state.stats = await get("/api/network/stats");
      drawStats();
      drawRound();
    } catch (error) {
      replace(stats, h("h2", { id: "stats-h" }, "Network"), h("p", { class: "error" }, error.message));
    }
  }

  async function loadBlocks() {
    try {
      state.blocks = itemsOf(await get(`/api/blocks?limit=${MAX_BLOCKS}`), "blocks").slice(0, MAX_BLOCKS);
    } catch {
      state.blocks = [];
    }
    drawBlocks();
  }

  const loads = [
    loadStats(),
    loadBlocks(),
    section(miners, "miners-h", "Miners", "/api/leaderboard/miners?limit=50", ["miners"], minerColumns),
    section(validators, "vals-h", "Validators", "/api/leaderboard/validators?limit=50", ["validators"], validatorColumns),
    section(serving, "serving-h", "Serving nodes", "/api/serving", ["nodes", "serving"], servingColumns),
    renderAdapters(adapters),
    renderActivity(activity),
  ];
  drawRound();

  let reloadTimer = null;
  const reloadTables = () => {
    // After each round closes, leaderboards and adapters change: refresh them (at most every 5 s).
    if (reloadTimer) return;
    reloadTimer = setTimeout(() => {
      reloadTimer = null;
      section(miners, "miners-h", "Miners", "/api/leaderboard/miners?limit=50", ["miners"], minerColumns);
      section(validators, "vals-h", "Validators", "/api/leaderboard/validators?limit=50", ["validators"], validatorColumns);
      section(serving, "serving-h", "Serving nodes", "/api/serving", ["nodes", "serving"], servingColumns);
      renderAdapters(adapters);
    }, 5000);
  };

  const states = new Map();
  const onState = (name) => (value) => {
    states.set(name, value);
    const all = [...states.values()];
    live.textContent = all.every((v) => v === "open") ? "live" : all.some((v) => v === "open") ? "partly live" : "reconnecting…";
    live.className = `live-dot ${all.every((v) => v === "open") ? "on" : "off"}`;
  };
  const sockets = [
    subscribe(
      "/ws/blocks",
      (message) => {
        const block = message.block || message.data || message;
        if (block.height === undefined) return;
        state.blocks = [block, ...state.blocks.filter((b) => b.height !== block.height)].slice(0, MAX_BLOCKS);
        state.stats = { ...state.stats, height: Math.max(Number(state.stats.height || 0), Number(block.height)) };
        if (block.round !== undefined) state.stats.round = block.round;
        drawBlocks();
        drawStats();
        drawRound();
      },
      { onState: onState("blocks") },
    ),
    subscribe(
      "/ws/network_status",
      (message) => {
        const data = message.stats || message.data || message;
        if (data.type && data.height === undefined) return;
        const before = state.stats.round;
        state.stats = { ...state.stats, ...withoutType(data) };
        drawStats();
        drawRound();
        if (before !== undefined && state.stats.round !== before) reloadTables();
      },
      { onState: onState("network_status") },
    ),
    subscribe(
      "/ws/training_metrics",
      (message) => {
        const data = message.data || message;
        if (message.type === "adapter" || data.adapter_version !== undefined || data.version !== undefined) reloadTables();
        state.round = { ...state.round, ...withoutType(data) };
        drawRound();
      },
      { onState: onState("training_metrics") },
    ),
  ];
  await Promise.allSettled(loads);
  return () => {
    clearTimeout(reloadTimer);
    for (const socket of sockets) socket.close();
  };
}

function withoutType(data) {
  const { type: _type, ...rest } = data;
  return rest;
}

function renderStats(section, s) {
  const item = (label, value, testid) => h("div", {}, h("dt", {}, label), h("dd", { "data-testid": testid }, value));
  replace(
    section,
    h("h2", { id: "stats-h" }, "Network now"),
    h(
      "dl",
      { class: "stats" },
      item("Block height", fmtInt(s.height), "height"),
      item("Round", fmtInt(s.round), "round"),
      item("Active miners", fmtInt(s.active_miners ?? s.miners), "miners"),
      item("Validators", fmtInt(s.active_validators ?? s.validators), "validators"),
      item("Serving nodes", fmtInt(s.serving_nodes ?? s.active_serving ?? s.serving), "serving"),
      item("Submissions", fmtInt(s.submissions), "submissions"),
      item("Verified rate", fmtPct(s.verified_rate), "verified-rate"),
      item("Credits in circulation", fmtInt(s.credits_in_circulation ?? s.supply), "supply"),
      item("Chat users", fmtInt(s.chat_users), "chat-users"),
    ),
  );
}

function renderRound(section, r, s) {
  const number = r.round ?? r.number ?? s.round;
  const open = Number(r.open_height ?? s.round_open_height ?? NaN);
  const close = Number(r.close_height ?? s.round_close_height ?? NaN);
  const height = Number(s.height ?? r.height ?? NaN);
  let progress = null;
  if (Number.isFinite(open) && Number.isFinite(close) && close > open && Number.isFinite(height)) {
    progress = Math.min(1, Math.max(0, (height - open) / (close - open)));
  } else if (r.progress !== undefined) {
    progress = Number(r.progress);
  }
  replace(
    section,
    h("h2", { id: "round-h" }, "Training round"),
    h("p", { class: "big", "data-testid": "round-number" }, number === undefined ? "-" : `Round ${fmtInt(number)}`),
    progress === null
      ? h("p", { class: "hint" }, "Waiting for the round's blocks…")
      : h(
          "div",
          {},
          h("progress", { max: "100", value: String(Math.round(progress * 100)), "aria-label": "Round progress", "data-testid": "round-progress" }),
          h("p", { class: "hint" }, `blocks ${fmtInt(open)} to ${fmtInt(close)}, now ${fmtInt(height)}`),
        ),
    h(
      "dl",
      { class: "stats small" },
      r.submissions !== undefined ? h("div", {}, h("dt", {}, "Submissions"), h("dd", {}, fmtInt(r.submissions))) : null,
      r.verified !== undefined ? h("div", {}, h("dt", {}, "Verified"), h("dd", {}, fmtInt(r.verified))) : null,
      r.rejected !== undefined ? h("div", {}, h("dt", {}, "Rejected"), h("dd", {}, fmtInt(r.rejected))) : null,
      r.adapter_version !== undefined ? h("div", {}, h("dt", {}, "Adapter"), h("dd", {}, `v${fmtInt(r.adapter_version)}`)) : null,
    ),
  );
}

function renderBlocks(section, blocks) {
  replace(
    section,
    h("h2", { id: "blocks-h" }, "Latest blocks"),
    table(
      "Latest blocks",
      [
        { label: "Height", value: (b) => fmtInt(b.height), class: "num" },
        { label: "Time", value: (b) => fmtTime(b.time || b.time_ms) },
        { label: "Txs", value: (b) => fmtInt(b.num_txs ?? b.txs), class: "num" },
      ],
      blocks,
      "Waiting for blocks…",
    ),
  );
}

export function addressLink(address) {
  return h("a", { href: `#/address/${encodeURIComponent(address)}`, title: address }, shortAddr(address));
}

function trend(values) {
  if (!Array.isArray(values) || !values.length) return "-";
  const bars = "▁▂▃▄▅▆▇█";
  const nums = values.map(Number);
  const lo = Math.min(...nums);
  const hi = Math.max(...nums);
  const line = nums.map((v) => bars[hi === lo ? 3 : Math.round(((v - lo) / (hi - lo)) * 7)]).join("");
  return h("span", { class: "trend", "aria-label": `trend: ${nums.join(", ")}` }, line);
}

const minerColumns = [
  { label: "#", value: (m) => fmtInt(m.rank), class: "num" },
  { label: "Miner", value: (m) => addressLink(m.address) },
  { label: "Reputation", value: (m) => fmtInt(m.reputation), class: "num" },
  { label: "Tier", value: (m) => m.tier ?? "-" },
  { label: "Verified", value: (m) => fmtPct(m.verified_rate), class: "num" },
  { label: "Earnings", value: (m) => fmtInt(m.earnings ?? m.earned), class: "num" },
  { label: "Trend", value: (m) => trend(m.trend) },
];

const validatorColumns = [
  { label: "#", value: (v) => fmtInt(v.rank), class: "num" },
  { label: "Validator", value: (v) => addressLink(v.address) },
  { label: "Trust", value: (v) => fmtPct(v.trust_score ?? v.trust), class: "num" },
  { label: "Attestations", value: (v) => fmtInt(v.attestations), class: "num" },
  { label: "Uptime", value: (v) => fmtPct(v.uptime), class: "num" },
  { label: "Stake", value: (v) => fmtInt(v.stake), class: "num" },
];

const servingColumns = [
  { label: "Node", value: (n) => addressLink(n.address) },
  { label: "Endpoint", value: (n) => h("code", {}, n.endpoint || "-") },
  {
    label: "Live",
    value: (n) => {
      const alive = n.live ?? n.alive ?? n.active;
      return h("span", { class: alive ? "ok" : "bad" }, alive ? "live" : "stale");
    },
  },
  { label: "Last heartbeat", value: (n) => fmtTime(n.last_heartbeat ?? n.last_heartbeat_ms) },
  { label: "Load", value: (n) => (n.load !== undefined ? fmtPct(n.load) : `${fmtInt(n.in_flight)} / ${fmtInt(n.capacity)}`), class: "num" },
  { label: "Adapter", value: (n) => (n.adapter_version !== undefined ? `v${fmtInt(n.adapter_version)}` : "-") },
  { label: "Served tokens", value: (n) => fmtInt(n.served_tokens), class: "num" },
];

async function section(el, id, title, path, names, columns) {
  try {
    const rows = itemsOf(await get(path), ...names);
    rows.forEach((row, i) => {
      if (row.rank === undefined) row.rank = i + 1;
    });
    replace(el, h("h2", { id }, title), table(title, columns, rows, `No ${title.toLowerCase()} yet.`));
  } catch (error) {
    replace(el, h("h2", { id }, title), h("p", { class: "error" }, error.message));
  }
}

async function renderAdapters(el) {
  let versions = [];
  let base = null;
  try {
    const body = await get("/api/adapters?limit=100");
    versions = itemsOf(body, "adapters", "versions");
    base = body.base_loss ?? body.base?.held_out_loss ?? null;
  } catch (error) {
    replace(el, h("h2", { id: "adapters-h" }, "Adapter versions"), h("p", { class: "error" }, error.message));
    return;
  }
  versions.sort((a, b) => Number(a.version) - Number(b.version));
  const loss = (v) => v.held_out_loss ?? v.loss ?? null;
  const baseOf = (v) => v.base_loss ?? base;
  const withLoss = versions.filter((v) => loss(v) !== null && loss(v) !== undefined);
  replace(
    el,
    h("h2", { id: "adapters-h" }, "Adapter versions"),
    lineChart({
      caption: "Held-out loss per adapter version, against the base model",
      x: withLoss.map((v) => Number(v.version)),
      series: [
        { label: "adapter", values: withLoss.map((v) => Number(loss(v))) },
        { label: "base model", values: withLoss.map((v) => (baseOf(v) === null ? null : Number(baseOf(v)))), dash: [6, 4] },
      ],
      time: false,
      xLabel: "version",
      yLabel: "held-out loss",
    }),
    table(
      "Adapter versions",
      [
        { label: "Version", value: (v) => `v${fmtInt(v.version)}`, class: "num" },
        { label: "Name", value: (v) => v.name ?? v.adapter ?? "-" },
        { label: "Round", value: (v) => fmtInt(v.round), class: "num" },
        { label: "Held-out loss", value: (v) => fmtNum(loss(v), 4), class: "num" },
        { label: "Base loss", value: (v) => fmtNum(baseOf(v), 4), class: "num" },
        { label: "Merged submissions", value: (v) => fmtInt(Array.isArray(v.lineage) ? v.lineage.length : v.merged ?? v.submissions), class: "num" },
        { label: "Proposer", value: (v) => (v.proposer ? addressLink(v.proposer) : "-") },
      ],
      [...versions].reverse(),
      "No adapter version yet.",
    ),
  );
}

async function renderActivity(el) {
  let days = [];
  try {
    days = itemsOf(await get("/api/analytics?days=30"), "days", "network");
  } catch (error) {
    replace(el, h("h2", { id: "activity-h" }, "Activity"), h("p", { class: "error" }, error.message));
    return;
  }
  days.sort((a, b) => String(a.day).localeCompare(String(b.day)));
  const net = (d) => d.network || d;
  const chat = (d) => d.chat || d;
  replace(
    el,
    h("h2", { id: "activity-h" }, "Activity, last 30 days"),
    lineChart({
      caption: "Submissions verified and rejected, chat tokens per day",
      x: days.map((d) => daySeconds(d.day)),
      series: [
        { label: "verified", values: days.map((d) => Number(net(d).verified || 0)) },
        { label: "rejected", values: days.map((d) => Number(net(d).rejected || 0)) },
        { label: "chat tokens", values: days.map((d) => Number(chat(d).tokens || 0)), axis: "right" },
      ],
      yLabel: "submissions",
      y2Label: "tokens",
    }),
  );
}
