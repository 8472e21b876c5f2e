// One address: as a miner (reputation and tier, submissions with their verdicts, rewards), as a
// validator (attestations, penalties), and for every role its stake (bonded, unbonding and
// still slashable, withdrawn), slashes with their reasons and the disputes it is party to.
// The address comes from the URL and the data from the chain: text only.

import { ApiError, get, itemsOf } from "../api.js";
import { fmtInt, fmtPct, h, table } from "../dom.js";
import { disputeColumns, proposalColumns } from "./network.js";

const ADDRESS = /^remes1[02-9ac-hj-np-z]{6,90}$/;

export async function addressPage(main, address = "") {
  const heading = h("h1", { tabindex: "-1" }, "Address");
  main.append(heading, h("p", { class: "address" }, h("code", {}, address)));
  if (!ADDRESS.test(address)) {
    main.append(h("p", { class: "error", role: "alert" }, "That is not a remes1… address."));
    return null;
  }
  const path = encodeURIComponent(address);
  const [miner, validator, stake, proposed] = await Promise.all([
    fetchOrNull(`/api/miners/${path}`),
    fetchOrNull(`/api/validators/${path}`),
    fetchOrNull(`/api/stake/${path}`),
    fetchOrNull(`/api/proposals?proposer=${path}&limit=20`),
  ]);
  const proposals = itemsOf(proposed ?? [], "items");
  const bonded = itemsOf(stake?.bonded ?? [], "items");
  const history = itemsOf(stake?.history ?? [], "items");
  if (!miner && !validator && !bonded.length && !history.length && !proposals.length) {
    main.append(h("p", { class: "empty" }, "This address has no role on the network yet."));
    return null;
  }
  heading.textContent =
    miner && validator ? "Miner and validator" : miner ? "Miner" : validator ? "Validator" : bonded.map((b) => capital(b.role)).join(" and ") || "Address";
  document.title = `${heading.textContent} · R3MES`;
  const grid = h("div", { class: "grid" });
  main.append(grid);
  if (miner) grid.append(...minerSections(miner));
  if (validator) grid.append(...validatorSections(validator));
  if (proposals.length) {
    grid.append(
      h(
        "section",
        { class: "card wide", "aria-labelledby": "proposals-h" },
        h("h2", { id: "proposals-h" }, "Merge proposals"),
        table("Merge proposals", proposalColumns, proposals),
      ),
    );
  }
  // Slashes and disputes are per address (the miner and validator documents carry the same).
  const doc = miner ?? validator;
  const slashes = itemsOf(doc?.slashes ?? [], "items");
  const disputes = doc ? itemsOf(doc.disputes ?? [], "items") : await partyDisputes(path);
  grid.append(...accountabilitySections(stake, slashes, disputes));
  return null;
}

function capital(text) {
  const s = String(text ?? "");
  return s ? s[0].toUpperCase() + s.slice(1) : s;
}

async function partyDisputes(path) {
  const body = await fetchOrNull(`/api/disputes?party=${path}&limit=20`);
  return itemsOf(body ?? [], "items");
}

async function fetchOrNull(path) {
  try {
    return await get(path);
  } catch (error) {
    if (error instanceof ApiError && error.status === 404) return null;
    throw error;
  }
}

function stat(label, value) {
  return h("div", {}, h("dt", {}, label), h("dd", {}, value));
}

function minerSections(m) {
  const summary = m;
  const submissions = itemsOf(m.recent_submissions ?? [], "items");
  const rewards = itemsOf(m.recent_rewards ?? [], "items");
  return [
    h(
      "section",
      { class: "card wide", "aria-labelledby": "miner-h" },
      h("h2", { id: "miner-h" }, "As a miner"),
      h(
        "dl",
        { class: "stats" },
        stat("Reputation", fmtInt(summary.reputation)),
        stat("Tier", summary.tier ?? "-"),
        stat("Submissions", fmtInt(summary.submissions)),
        stat("Verified", fmtInt(summary.verified)),
        stat("Rejected", fmtInt(summary.rejected)),
        stat("Verified rate", fmtPct(summary.verified_rate)),
        stat("Earned", fmtInt(summary.earned)),
        stat("Slashed", fmtInt(summary.slashed)),
        stat("Stake", fmtInt(summary.node?.stake)),
        stat("Status", summary.node?.active ? "active" : "inactive"),
      ),
      trendTable(summary.trend),
    ),
    h(
      "section",
      { class: "card wide", "aria-labelledby": "subs-h" },
      h("h2", { id: "subs-h" }, "Submissions and verdicts"),
      table(
        "Submissions",
        [
          { label: "Round", value: (s) => fmtInt(s.round), class: "num" },
          { label: "Shard", value: (s) => fmtInt(s.shard), class: "num" },
          { label: "Verdict", value: (s) => h("span", { class: verdictClass(s.status) }, s.status ?? "-") },
          { label: "Attestations", value: (s) => (s.attestations || []).map((a) => h("span", { class: verdictClass(a.verdict) }, `${a.verdict} `)) },
          { label: "Height", value: (s) => fmtInt(s.height), class: "num" },
          { label: "Merged into", value: (s) => (s.merged_version ? `v${fmtInt(s.merged_version)}` : "-") },
          { label: "Update", value: (s) => h("code", { title: s.cid || "" }, String(s.cid || "").slice(0, 16)) },
        ],
        submissions,
        "No submissions yet.",
      ),
    ),
    rewards.length
      ? h(
          "section",
          { class: "card wide", "aria-labelledby": "rewards-h" },
          h("h2", { id: "rewards-h" }, "Rewards"),
          table(
            "Rewards",
            [
              { label: "Round", value: (r) => fmtInt(r.round), class: "num" },
              { label: "Amount", value: (r) => fmtInt(r.amount), class: "num" },
              { label: "Kind", value: (r) => r.kind ?? "reward" },
              { label: "Submission", value: (r) => fmtInt(r.submission_id), class: "num" },
              { label: "Height", value: (r) => fmtInt(r.height), class: "num" },
            ],
            rewards,
          ),
        )
      : null,
  ].filter(Boolean);
}

function validatorSections(v) {
  const summary = v;
  const attestations = itemsOf(v.recent_attestations ?? [], "items");
  return [
    h(
      "section",
      { class: "card wide", "aria-labelledby": "val-h" },
      h("h2", { id: "val-h" }, "As a validator"),
      h(
        "dl",
        { class: "stats" },
        stat("Trust score", fmtPct(summary.trust_score)),
        stat("Attestations", fmtInt(summary.attestations)),
        stat("Uptime", fmtPct(summary.uptime)),
        stat("Stake", fmtInt(summary.node?.stake)),
        stat("Reputation", fmtInt(summary.reputation)),
        stat("Tier", summary.tier ?? "-"),
      ),
      table(
        "Attestations",
        [
          { label: "Submission", value: (a) => fmtInt(a.submission_id), class: "num" },
          { label: "Round", value: (a) => fmtInt(a.round), class: "num" },
          { label: "Verdict", value: (a) => h("span", { class: verdictClass(a.verdict) }, a.verdict ?? "-") },
          { label: "Distance (ppm)", value: (a) => fmtInt(a.distance_ppm), class: "num" },
          { label: "Agreed with final", value: (a) => (a.agreed === null || a.agreed === undefined ? "pending" : a.agreed ? "yes" : "no") },
          { label: "Height", value: (a) => fmtInt(a.height), class: "num" },
        ],
        attestations,
        "No attestations yet.",
      ),
      h("h3", {}, "Penalties"),
      table(
        "Penalties",
        [
          { label: "Submission", value: (p) => fmtInt(p.submission_id), class: "num" },
          { label: "Round", value: (p) => fmtInt(p.round), class: "num" },
          { label: "Reason", value: (p) => penaltyReason(p.reason) },
          { label: "Reputation lost", value: (p) => fmtInt(p.reputation_lost), class: "num" },
          { label: "Height", value: (p) => fmtInt(p.height), class: "num" },
        ],
        itemsOf(v.penalties ?? [], "items"),
        "No penalty: every verdict in time and with the final one.",
      ),
    ),
  ];
}

function withdrawal(e) {
  if (Number(e.withdrawn_height) > 0) return `block ${fmtInt(e.withdrawn_height)}`;
  return Number(e.amount) > 0 ? "not yet" : "nothing left (slashed)";
}

function penaltyReason(reason) {
  if (reason === "missed") return "missed (no verdict in the window)";
  if (reason === "disagreed") return "disagreed with the settled verdict";
  return reason ?? "-";
}

/** Stake per role (bonded, unbonding and still slashable, withdrawn), slashes with their
 * reasons and the disputes the address is party to: the same for every role. */
function accountabilitySections(stake, slashes, disputes) {
  const bonded = itemsOf(stake?.bonded ?? [], "items");
  const unbonding = itemsOf(stake?.unbonding ?? [], "items");
  const history = itemsOf(stake?.history ?? [], "items");
  return [
    h(
      "section",
      { class: "card", "aria-labelledby": "stake-h" },
      h("h2", { id: "stake-h" }, "Stake"),
      h(
        "dl",
        { class: "stats small" },
        stat("Total (slashable)", fmtInt(stake?.total)),
        ...bonded.map((b) => stat(`Bonded as ${b.role}`, `${fmtInt(b.stake)}${b.active ? "" : " (inactive)"}`)),
        ...unbonding.map((u) => stat(`Unbonding (${u.role})`, `${fmtInt(u.amount)} until block ${fmtInt(u.release_height)}`)),
      ),
      history.length
        ? table(
            "Unbonding history",
            [
              { label: "Role", value: (e) => e.role ?? "-" },
              { label: "Unbonded", value: (e) => fmtInt(e.unbonded), class: "num" },
              { label: "Left", value: (e) => fmtInt(e.amount), class: "num" },
              { label: "At block", value: (e) => fmtInt(e.height), class: "num" },
              { label: "Released at", value: (e) => fmtInt(e.release_height), class: "num" },
              { label: "Withdrawn", value: withdrawal },
            ],
            history,
          )
        : null,
    ),
    h(
      "section",
      { class: "card", "aria-labelledby": "slashes-h" },
      h("h2", { id: "slashes-h" }, "Slashes"),
      table(
        "Slashes",
        [
          { label: "Round", value: (x) => fmtInt(x.round), class: "num" },
          { label: "Submission", value: (x) => fmtInt(x.submission_id), class: "num" },
          { label: "Reason", value: (x) => h("span", { class: "bad" }, x.reason ?? "-") },
          { label: "Burned", value: (x) => fmtInt(x.burned), class: "num" },
          { label: "Reputation lost", value: (x) => fmtInt(x.reputation_lost), class: "num" },
          { label: "Height", value: (x) => fmtInt(x.height), class: "num" },
        ],
        slashes,
        "Never slashed.",
      ),
    ),
    h(
      "section",
      { class: "card wide", "aria-labelledby": "disputes-h" },
      h("h2", { id: "disputes-h" }, "Disputes"),
      table(
        "Disputes",
        disputeColumns,
        disputes,
        "No dispute.",
      ),
    ),
  ];
}

function trendTable(trend) {
  if (!Array.isArray(trend) || !trend.length) return null;
  return [h("h3", {}, "Recent rounds"), table(
    "Recent rounds",
    [
      { label: "Round", value: (r) => fmtInt(r.round), class: "num" },
      { label: "Verified", value: (r) => fmtInt(r.verified), class: "num" },
      { label: "Rejected", value: (r) => fmtInt(r.rejected), class: "num" },
      { label: "Pending", value: (r) => fmtInt(r.pending), class: "num" },
    ],
    [...trend].reverse(),
  )];
}

function verdictClass(status) {
  const s = String(status || "").toLowerCase();
  if (s === "verified" || s === "accept" || s === "accepted") return "ok";
  if (s === "rejected" || s === "reject" || s === "slashed") return "bad";
  return "";
}
