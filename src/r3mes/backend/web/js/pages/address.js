// One miner or validator: reputation and tier, submissions with their verdicts, rewards,
// attestations. The address comes from the URL and the data from the chain: text only.

import { ApiError, get, itemsOf } from "../api.js";
import { fmtInt, fmtPct, h, table } from "../dom.js";

const ADDRESS = /^remes1[02-9ac-hj-np-z]{6,90}$/;

export async function addressPage(main, address = "") {
  const heading = h("h1", { tabindex: "-1" }, "Address");
  main.append(heading, h("p", { class: "address" }, h("code", {}, address)));
  if (!ADDRESS.test(address)) {
    main.append(h("p", { class: "error", role: "alert" }, "That is not a remes1… address."));
    return null;
  }
  const path = encodeURIComponent(address);
  const [miner, validator] = await Promise.all([fetchOrNull(`/api/miners/${path}`), fetchOrNull(`/api/validators/${path}`)]);
  if (!miner && !validator) {
    main.append(h("p", { class: "empty" }, "This address has not mined or validated yet."));
    return null;
  }
  heading.textContent = miner && validator ? "Miner and validator" : miner ? "Miner" : "Validator";
  document.title = `${heading.textContent} · R3MES`;
  const grid = h("div", { class: "grid" });
  main.append(grid);
  if (miner) grid.append(...minerSections(miner));
  if (validator) grid.append(...validatorSections(validator));
  return null;
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
  const slashes = itemsOf(m.slashes ?? [], "items");
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
    slashes.length
      ? h(
          "section",
          { class: "card wide", "aria-labelledby": "slashes-h" },
          h("h2", { id: "slashes-h" }, "Slashes"),
          table(
            "Slashes",
            [
              { label: "Height", value: (x) => fmtInt(x.height), class: "num" },
              { label: "Submission", value: (x) => fmtInt(x.submission_id), class: "num" },
              { label: "Burned", value: (x) => fmtInt(x.burned), class: "num" },
              { label: "Reputation lost", value: (x) => fmtInt(x.reputation_lost), class: "num" },
            ],
            slashes,
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
