// Network: live height and round (websockets), leaderboards, serving nodes, adapter versions
// with held-out loss against the base model, merge proposals and disputes, and network
// activity per day.
// Everything here comes from the chain and is untrusted: it only ever becomes text.

import { get, itemsOf } from "../api.js";
import { daySeconds, lineChart } from "../chart.js";
import { fmtInt, fmtNum, fmtPct, fmtTime, h, replace, shortAddr, table } from "../dom.js";
import { subscribe } from "../ws.js";

const MAX_BLOCKS = 12;

export async function networkPage(main) {
  const live = h("span", { class: "live-dot", role: "status", "aria-live": "polite" }, "connecting…");
  main.append(h("div", { class: "page-head" }, h("h1", { tabindex: "-1" }, "Network"), live));
  const card = (id, title, wide = true) =>
    h("section", { class: wide ? "card wide" : "card", "aria-labelledby": id }, h("h2", { id }, title), h("p", { class: "hint loading" }, "Loading…"));
  const stats = card("stats-h", "Network now");
  const round = card("round-h", "Training round", false);
  const blocks = card("blocks-h", "Latest blocks", false);
  const miners = card("miners-h", "Miners");
  const validators = card("vals-h", "Validators");
  const serving = card("serving-h", "Serving nodes");
  const adapters = card("adapters-h", "Adapters");
  const checks = card("checks-h", "Merges and disputes");
  const activity = card("activity-h", "Activity");
  main.append(h("div", { class: "grid" }, stats, round, blocks, miners, validators, serving, adapters, checks, activity));

  const state = { stats: {}, blocks: [], round: {} };

  const drawStats = () => renderStats(stats, state.stats);
  const drawBlocks = () => renderBlocks(blocks, state.blocks);
  const drawRound = () => renderRound(round, state.round, state.stats);

  async function loadStats() {
    try {
      state.stats = await get("/api/network/stats");
      if (state.round.open_height === undefined && state.stats.round) {
        const r = await get(`/api/rounds/${encodeURIComponent(state.stats.round)}`).catch(() => null);
        if (r && state.round.open_height === undefined) state.round = { ...r, round: r.number };
      }
      drawStats();
      drawRound();
    } catch (error) {
      replace(stats, h("h2", { id: "stats-h" }, "Network"), h("p", { class: "error" }, error.message));
    }
  }

  async function loadBlocks() {
    let fetched = [];
    try {
      fetched = itemsOf(await get(`/api/blocks?limit=${MAX_BLOCKS}`), "blocks");
    } catch {
      // keep what the websocket delivered
    }
    const byHeight = new Map([...fetched, ...state.blocks].map((b) => [Number(b.height), b]));
    state.blocks = [...byHeight.values()].sort((a, b) => Number(b.height) - Number(a.height)).slice(0, MAX_BLOCKS);
    drawBlocks();
  }

  const loads = [
    loadStats(),
    loadBlocks(),
    section(miners, "miners-h", "Miners", "/api/leaderboard/miners?limit=50", ["miners"], minerColumns),
    section(validators, "vals-h", "Validators", "/api/leaderboard/validators?limit=50", ["validators"], validatorColumns),
    section(serving, "serving-h", "Serving nodes", "/api/serving", ["nodes", "serving"], servingColumns),
    renderAdapters(adapters),
    renderChecks(checks),
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
      renderChecks(checks);
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
        if (message.type !== "block") return;
        const block = message.data || {};
        if (block.height === undefined) return;
        const top = Number(state.blocks[0]?.height ?? block.height - 1);
        if (Number(block.height) > top + 1) loadBlocks(); // a gap (page loaded between blocks): refill
        state.blocks = [block, ...state.blocks.filter((b) => b.height !== block.height)]
          .sort((a, b) => Number(b.height) - Number(a.height))
          .slice(0, MAX_BLOCKS);
        state.stats = { ...state.stats, height: Math.max(Number(state.stats.height || 0), Number(block.height)) };
        if (block.round) state.stats.round = block.round;
        drawBlocks();
        drawStats();
        drawRound();
      },
      { onState: onState("blocks") },
    ),
    subscribe(
      "/ws/network_status",
      (message) => {
        if (message.type !== "network_status") return;
        const data = message.data || {};
        // A channel's first message may be older than what the page already shows.
        if (Number(data.height) < Number(state.stats.height || 0)) return;
        const before = state.stats.round;
        state.stats = { ...state.stats, ...data };
        drawStats();
        drawRound();
        if (before !== undefined && state.stats.round !== before) reloadTables();
      },
      { onState: onState("network_status") },
    ),
    subscribe(
      "/ws/training_metrics",
      (message) => {
        if (message.type === "adapter_version") {
          reloadTables();
          return;
        }
        if (message.type === "round_progress") {
          const data = message.data || {};
          if (Number(data.height) < Number(state.round.height || 0)) return;
          if (Number(data.round) < Number(state.stats.round || 0)) return;
          state.round = data;
          drawRound();
        }
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
      item("Active miners", fmtInt(s.active_miners), "miners"),
      item("Validators", fmtInt(s.active_validators), "validators"),
      item("Serving nodes", fmtInt(s.active_serving_nodes), "serving"),
      item("Submissions", fmtInt(s.submissions), "submissions"),
      item("Verified rate", fmtPct(s.verified_rate), "verified-rate"),
      item("Credits in circulation", fmtInt(s.credits_in_circulation), "supply"),
      item("Chat users (30 days)", fmtInt(s.chat_users_30d), "chat-users"),
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

/** Verified submissions per recent round as a small bar line (text, with a spoken form). */
function trend(rounds) {
  if (!Array.isArray(rounds) || !rounds.length) return "-";
  const bars = "▁▂▃▄▅▆▇█";
  const nums = rounds.map((r) => Number(typeof r === "object" ? r.verified : r) || 0);
  const hi = Math.max(...nums, 1);
  const line = nums.map((v) => bars[Math.round((v / hi) * 7)]).join("");
  const spoken = rounds.map((r, i) => (typeof r === "object" ? `round ${r.round}: ${r.verified} verified, ${r.rejected} rejected` : String(nums[i]))).join("; ");
  return h("span", { class: "trend", role: "img", "aria-label": `trend: ${spoken}`, title: spoken }, line);
}

const minerColumns = [
  { label: "#", value: (m) => fmtInt(m.rank), class: "num" },
  { label: "Miner", value: (m) => addressLink(m.address) },
  { label: "Reputation", value: (m) => fmtInt(m.reputation), class: "num" },
  { label: "Tier", value: (m) => m.tier ?? "-" },
  { label: "Verified", value: (m) => fmtPct(m.verified_rate), class: "num" },
  { label: "Earned", value: (m) => fmtInt(m.earned), class: "num" },
  { label: "Slashed", value: (m) => fmtInt(m.slashed), class: "num" },
  { label: "Trend", value: (m) => trend(m.trend) },
];

const validatorColumns = [
  { label: "#", value: (v) => fmtInt(v.rank), class: "num" },
  { label: "Validator", value: (v) => addressLink(v.address) },
  { label: "Trust", value: (v) => fmtPct(v.trust_score), class: "num" },
  { label: "Attestations", value: (v) => fmtInt(v.attestations), class: "num" },
  { label: "Uptime", value: (v) => fmtPct(v.uptime), class: "num" },
  { label: "Stake", value: (v) => fmtInt(v.stake), class: "num" },
];

const servingColumns = [
  { label: "Node", value: (n) => addressLink(n.address) },
  { label: "Endpoint", value: (n) => h("code", {}, n.endpoint || "-") },
  { label: "Live", value: (n) => h("span", { class: n.live ? "ok" : "bad" }, n.live ? "live" : "stale") },
  { label: "Heartbeat age", value: (n) => (n.heartbeat_age_ms === undefined ? "-" : `${fmtNum(Number(n.heartbeat_age_ms) / 1000, 1)} s`), class: "num" },
  { label: "Load (last hour)", value: (n) => (n.load === null || n.load === undefined ? "-" : fmtPct(n.load)), class: "num" },
  { label: "Capacity", value: (n) => fmtInt(n.capacity), class: "num" },
  { label: "Adapter", value: (n) => (n.adapter_version ? `v${fmtInt(n.adapter_version)}` : "-") },
  { label: "Requests", value: (n) => fmtInt(n.served_requests), class: "num" },
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
  let artifacts = [];
  try {
    const body = await get("/api/adapters?limit=100");
    versions = itemsOf(body, "items");
    artifacts = itemsOf(body.artifacts ?? [], "artifacts");
  } catch (error) {
    replace(el, h("h2", { id: "adapters-h" }, "Adapters"), h("p", { class: "error" }, error.message));
    return;
  }
  versions.sort((a, b) => Number(a.version) - Number(b.version));
  const measured = versions.filter((v) => v.heldout_loss !== null && v.heldout_loss !== undefined);
  replace(
    el,
    h("h2", { id: "adapters-h" }, "Adapters"),
    lineChart({
      caption: "Held-out loss per adapter version, against the base model (lower is better)",
      x: measured.map((v) => Number(v.version)),
      series: [
        { label: "adapter", values: measured.map((v) => Number(v.heldout_loss)) },
        { label: "base model", values: measured.map((v) => (v.base_loss === null || v.base_loss === undefined ? null : Number(v.base_loss))), dash: [6, 4] },
      ],
      time: false,
      xLabel: "version",
      yLabel: "held-out loss",
    }),
    h("h3", {}, "Versions"),
    table(
      "Adapter versions",
      [
        { label: "Version", value: (v) => `v${fmtInt(v.version)}`, class: "num" },
        { label: "Round", value: (v) => fmtInt(v.round), class: "num" },
        { label: "Held-out loss", value: (v) => fmtNum(v.heldout_loss, 4), class: "num" },
        { label: "Base loss", value: (v) => fmtNum(v.base_loss, 4), class: "num" },
        { label: "vs base", value: (v) => (v.loss_vs_base === null || v.loss_vs_base === undefined ? "-" : fmtNum(v.loss_vs_base, 4)), class: "num" },
        { label: "Merged submissions", value: (v) => fmtInt(v.lineage?.submissions?.length ?? 0), class: "num" },
        { label: "Proposer", value: (v) => (v.proposer ? addressLink(v.proposer) : "-") },
      ],
      [...versions].reverse(),
      "No adapter version yet.",
    ),
    h("h3", {}, "Registered adapters"),
    table(
      "Registered adapters",
      [
        { label: "Name", value: (a) => h("span", { class: "adapter-name" }, a.id) },
        { label: "Version", value: (a) => `v${fmtInt(a.version)}`, class: "num" },
        { label: "Status", value: (a) => a.status ?? "-" },
        { label: "Base model", value: (a) => `${a.base_model_id || "-"}${a.base_model_version ? ` v${a.base_model_version}` : ""}` },
        { label: "Rank", value: (a) => fmtInt(a.rank), class: "num" },
        { label: "Source", value: (a) => (a.hf_repo ? `${a.hf_repo}${a.hf_revision ? `@${a.hf_revision}` : ""}` : "-") },
        { label: "Registered by", value: (a) => (a.registered_by ? addressLink(a.registered_by) : "-") },
      ],
      artifacts,
      "No adapter registered.",
    ),
  );
}

const CHECKS_LIMIT = 10;

/** Who won a dispute: the claimant's or respondent's address, else the ledger's word. */
function winnerOf(d) {
  const address = d.winner === "claimant" ? d.claimant : d.winner === "respondent" ? d.respondent : "";
  return address ? addressLink(address) : d.winner || "-";
}

export const disputeColumns = [
  { label: "Submission", value: (d) => fmtInt(d.submission_id), class: "num" },
  { label: "Round", value: (d) => fmtInt(d.round), class: "num" },
  { label: "Miner", value: (d) => addressLink(d.miner) },
  { label: "Claimant", value: (d) => addressLink(d.claimant) },
  { label: "Respondent", value: (d) => addressLink(d.respondent) },
  { label: "Steps in question", value: (d) => `${fmtInt(d.lo)}-${fmtInt(d.hi)} of ${fmtInt(d.steps)}` },
  { label: "Status", value: (d) => statusBadge(d.status) },
  { label: "Won by", value: winnerOf },
  { label: "Burned", value: (d) => fmtInt(d.burned), class: "num" },
];

export const proposalColumns = [
  { label: "Round", value: (p) => fmtInt(p.round), class: "num" },
  { label: "Version", value: (p) => `v${fmtInt(p.version)}`, class: "num" },
  { label: "Proposer", value: (p) => addressLink(p.proposer) },
  { label: "Updates", value: (p) => fmtInt(Array.isArray(p.submission_ids) ? p.submission_ids.length : 0), class: "num" },
  { label: "Verdicts", value: (p) => verdictsOf(p) },
  { label: "Status", value: (p) => statusBadge(p.status) },
  { label: "Burned", value: (p) => fmtInt(p.burned), class: "num" },
];

/** "2 accept, 1 reject of 3": the verdicts a proposal has from the validators assigned. */
function verdictsOf(p) {
  const atts = Array.isArray(p.attestations) ? p.attestations : [];
  const accept = atts.filter((a) => a.verdict === "accept").length;
  const reject = atts.length - accept;
  const assigned = Array.isArray(p.assigned) ? p.assigned.length : 0;
  return `${fmtInt(accept)} accept, ${fmtInt(reject)} reject of ${fmtInt(assigned)}`;
}

function statusBadge(status) {
  const s = String(status ?? "-");
  const cls = s === "approved" || s === "resolved" ? "ok" : s === "rejected" ? "bad" : "";
  return h("span", { class: cls }, s);
}

/** The checks around the work: merge proposals (checked by a quorum of validators) and
 * disputes over verdicts (settled by bisection), the newest of each. */
async function renderChecks(el) {
  let proposals = [];
  let disputes = [];
  try {
    const [p, d] = await Promise.all([get(`/api/proposals?limit=${CHECKS_LIMIT}`), get(`/api/disputes?limit=${CHECKS_LIMIT}`)]);
    proposals = itemsOf(p, "items");
    disputes = itemsOf(d, "items");
  } catch (error) {
    replace(el, h("h2", { id: "checks-h" }, "Merges and disputes"), h("p", { class: "error" }, error.message));
    return;
  }
  replace(
    el,
    h("h2", { id: "checks-h" }, "Merges and disputes"),
    h("h3", {}, "Merge proposals"),
    table(
      "Merge proposals",
      proposalColumns,
      proposals,
      "No merge proposed yet.",
    ),
    h("h3", {}, "Disputes"),
    table(
      "Disputes",
      disputeColumns,
      disputes,
      "No dispute yet.",
    ),
  );
}

async function renderActivity(el) {
  let days = [];
  try {
    days = itemsOf(await get("/api/analytics?days=30"), "days");
  } catch (error) {
    replace(el, h("h2", { id: "activity-h" }, "Activity"), h("p", { class: "error" }, error.message));
    return;
  }
  days.sort((a, b) => String(a.day).localeCompare(String(b.day)));
  const chatTotal = (d, field) => (Array.isArray(d.chat) ? d.chat : []).reduce((sum, m) => sum + Number(m[field] || 0), 0);
  const tokens = (d) => chatTotal(d, "prompt_tokens") + chatTotal(d, "completion_tokens");
  replace(
    el,
    h("h2", { id: "activity-h" }, "Activity, last 30 days"),
    lineChart({
      caption: "Submissions verified and rejected, and chat tokens, per day",
      x: days.map((d) => daySeconds(d.day)),
      series: [
        { label: "verified", values: days.map((d) => Number(d.network?.verified || 0)) },
        { label: "rejected", values: days.map((d) => Number(d.network?.rejected || 0)) },
        { label: "chat tokens", values: days.map(tokens), axis: "right" },
      ],
      yLabel: "submissions",
      y2Label: "tokens",
    }),
    table(
      "Activity per day",
      [
        { label: "Day", value: (d) => String(d.day) },
        { label: "Blocks", value: (d) => fmtInt(d.network?.blocks), class: "num" },
        { label: "Submissions", value: (d) => fmtInt(d.network?.submissions), class: "num" },
        { label: "Verified", value: (d) => fmtInt(d.network?.verified), class: "num" },
        { label: "Rejected", value: (d) => fmtInt(d.network?.rejected), class: "num" },
        { label: "Rewards", value: (d) => fmtInt(d.network?.rewards), class: "num" },
        { label: "Slashes", value: (d) => fmtInt(d.network?.slashes), class: "num" },
        { label: "Chat requests", value: (d) => fmtInt(chatTotal(d, "requests")), class: "num" },
        { label: "Chat tokens", value: (d) => fmtInt(tokens(d)), class: "num" },
        { label: "Credits spent", value: (d) => fmtInt(chatTotal(d, "credits")), class: "num" },
      ],
      [...days].reverse().filter((d) => d.network?.blocks || chatTotal(d, "requests")),
      "No activity yet.",
    ),
  );
}
