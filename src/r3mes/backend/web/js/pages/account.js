// Account: balance and holds, how to top up, usage per day (table and chart), API keys.

import { get, itemsOf, post } from "../api.js";
import { daySeconds, lineChart } from "../chart.js";
import { copyText, field, fmtInt, fmtTime, h, replace, shortAddr, table } from "../dom.js";
import { session } from "../session.js";
import { subscribe } from "../ws.js";
import { renderKeys } from "./keys.js";

export async function accountPage(main) {
  main.append(h("h1", { tabindex: "-1" }, "Account"));
  const s = session();
  if (s.state !== "in" || s.via === "api-key") {
    main.append(
      h(
        "section",
        { class: "card" },
        h("p", {}, s.via === "api-key" ? "The account page needs a wallet login (API keys cannot manage keys)." : "Log in to see your balance, usage and API keys."),
        h("a", { href: "#/login", class: "button" }, "Log in"),
      ),
    );
    return null;
  }
  const balance = h("section", { class: "card", "aria-labelledby": "bal-h" });
  const topUp = h("section", { class: "card", "aria-labelledby": "top-up-h" });
  const charges = h("section", { class: "card wide", "aria-labelledby": "charges-h" }, h("h2", { id: "charges-h" }, "Recent charges"), h("p", { class: "hint" }, "Connecting…"));
  const usage = h("section", { class: "card wide", "aria-labelledby": "use-h" });
  const keys = h("section", { class: "card wide", "aria-labelledby": "keys-h" });
  main.append(h("div", { class: "grid" }, balance, topUp, charges, usage, keys));

  async function refreshBalance() {
    try {
      const me = await get("/api/me");
      renderBalance(balance, me);
      renderTopUp(topUp, me);
    } catch (error) {
      replace(balance, h("h2", { id: "bal-h" }, "Balance"), h("p", { class: "error" }, error.message));
    }
  }
  await refreshBalance();
  renderUsage(usage);
  renderKeys(keys);
  const onBalance = () => refreshBalance();
  window.addEventListener("r3mes:balance-changed", onBalance);
  const recent = [];
  const live = subscribe("/ws/usage", (message) => {
    if (message.type !== "usage" || !message.data) return;
    const { balance: b, charges: newCharges = [] } = message.data;
    if (b) {
      const available = balance.querySelector("[data-testid=balance-available]");
      const held = balance.querySelector("[data-testid=balance-held]");
      if (available) available.textContent = `${fmtInt(b.available)} credits`;
      if (held) held.textContent = `${fmtInt(b.held)} credits`;
    }
    recent.unshift(...[...newCharges].reverse());
    recent.splice(50);
    renderCharges(charges, recent);
  });
  return () => {
    window.removeEventListener("r3mes:balance-changed", onBalance);
    live.close();
  };
}

function renderBalance(section, me) {
  const holds = me.holds || [];
  const ledger = me.ledger || {};
  replace(
    section,
    h("h2", { id: "bal-h" }, "Balance"),
    h(
      "dl",
      { class: "stats" },
      h("div", {}, h("dt", {}, "Available"), h("dd", { "data-testid": "balance-available" }, `${fmtInt(me.available)} credits`)),
      h("div", {}, h("dt", {}, "Held"), h("dd", { "data-testid": "balance-held" }, `${fmtInt(me.held)} credits`)),
      h("div", {}, h("dt", {}, "Rate-limit tier"), h("dd", {}, me.tier)),
      h("div", {}, h("dt", {}, "On the ledger"), h("dd", {}, ledger.balance === null || ledger.balance === undefined ? "-" : `${fmtInt(ledger.balance)} credits`)),
      h("div", {}, h("dt", {}, "Ledger tier"), h("dd", {}, ledger.tier ?? "-")),
      h("div", {}, h("dt", {}, "Reputation"), h("dd", {}, fmtInt(ledger.reputation))),
    ),
    h("p", { class: "address" }, "Wallet: ", h("code", {}, me.address || "")),
    ledger.error ? h("p", { class: "hint" }, ledger.error) : null,
    holds.length
      ? table(
          "Credit holds",
          [
            { label: "Held", value: (r) => fmtInt(r.amount), class: "num" },
            { label: "For", value: (r) => r.ref || "" },
            { label: "Expires", value: (r) => fmtTime(r.expires_at) },
          ],
          holds,
        )
      : h("p", { class: "hint" }, "No credits are held by a chat in progress."),
  );
}

function renderCharges(section, rows) {
  replace(
    section,
    h("h2", { id: "charges-h" }, "Recent charges"),
    table(
      "Recent chat charges",
      [
        { label: "Time", value: (c) => fmtTime(c.created_at) },
        { label: "Model", value: (c) => c.model },
        { label: "Status", value: (c) => c.status },
        { label: "Prompt tokens", value: (c) => fmtInt(c.prompt_tokens), class: "num" },
        { label: "Completion tokens", value: (c) => fmtInt(c.completion_tokens), class: "num" },
        { label: "Credits", value: (c) => fmtInt(c.credits), class: "num" },
        { label: "Node", value: (c) => (c.node ? h("code", { title: c.node }, shortAddr(c.node)) : "-") },
      ],
      rows,
      "No chat charges yet.",
    ),
  );
}

function renderTopUp(section, me) {
  const deposit = me.deposit_address || "";
  const rpc = me.chain_rpc || "";
  const amount = h("input", { type: "number", name: "amount", min: "1", step: "1", value: "1000", inputmode: "numeric" });
  const command = h("code", { "data-testid": "deposit-command" });
  const update = () => {
    const n = Math.max(1, Math.floor(Number(amount.value) || 1));
    command.textContent = `r3mes tx transfer --from YOUR_KEY_NAME --to ${deposit} --amount ${n}${rpc ? ` --node ${rpc}` : ""}`;
  };
  amount.addEventListener("input", update);
  update();
  const faucetStatus = h("p", { class: "hint", role: "status" });
  const faucet = h("button", { type: "button" }, "Get test credits from the faucet");
  faucet.addEventListener("click", async () => {
    faucet.disabled = true;
    faucetStatus.textContent = "Asking the faucet…";
    try {
      const got = await post("/api/faucet", { address: me.address });
      faucetStatus.textContent = `${fmtInt(got.amount)} credits sent to your wallet on the ledger (block ${fmtInt(got.height)}). Deposit them as above.`;
    } catch (error) {
      faucetStatus.textContent = error.status === 403 ? "This network has no faucet (it is not a test network)." : `The faucet refused: ${error.message}`;
    } finally {
      faucet.disabled = false;
    }
  });
  replace(
    section,
    h("h2", { id: "top-up-h" }, "Top up"),
    deposit
      ? [
          h("p", {}, "Send credits on the ledger from your wallet address to the deposit address. They are credited here after the next block."),
          h("p", { class: "address" }, "Deposit address: ", h("code", { "data-testid": "deposit-address" }, deposit), " ", h("button", { type: "button", onclick: () => copyText(deposit) }, "Copy address")),
          field("Amount (credits)", amount),
          h("div", { class: "command" }, command, h("button", { type: "button", onclick: () => copyText(command.textContent) }, "Copy command")),
          h("p", { class: "hint" }, "Run it where your key lives; it asks for the keystore passphrase (or reads R3MES_PASSPHRASE)."),
        ]
      : h("p", {}, "This backend does not publish a deposit address; ask its operator how to top up."),
    h("p", {}, "On a test network, the faucet sends free credits to your wallet address on the ledger."),
    faucet,
    faucetStatus,
  );
}

const USAGE_DAYS = 30;

/** Usage per UTC day over the window: GET /api/me/usage (requests, tokens, credits). */
async function usageDays() {
  const body = await get(`/api/me/usage?days=${USAGE_DAYS}`);
  return { days: itemsOf(body, "usage"), tokens: true };
}

/** Every day of the window, oldest first, with zeros where nothing was used. */
function fillDays(days) {
  const byDay = new Map(days.map((d) => [String(d.day), d]));
  const out = [];
  const today = new Date();
  for (let i = USAGE_DAYS - 1; i >= 0; i -= 1) {
    const day = new Date(Date.UTC(today.getUTCFullYear(), today.getUTCMonth(), today.getUTCDate() - i)).toISOString().slice(0, 10);
    out.push(byDay.get(day) || { day, requests: 0, credits: 0, tokens: 0 });
  }
  return out;
}

async function renderUsage(section) {
  replace(section, h("h2", { id: "use-h" }, "Usage"), h("p", { class: "hint loading" }, "Loading…"));
  let usage;
  try {
    usage = await usageDays();
  } catch (error) {
    replace(section, h("h2", { id: "use-h" }, "Usage"), h("p", { class: "error" }, `Usage is not available: ${error.message}`));
    return;
  }
  const days = fillDays(usage.days);
  const tokens = (d) => Number(d.tokens ?? Number(d.prompt_tokens || 0) + Number(d.completion_tokens || 0));
  const series = [{ label: "credits", values: days.map((d) => Number(d.credits || 0)) }];
  if (usage.tokens) series.push({ label: "tokens", values: days.map(tokens), axis: "right" });
  else series.push({ label: "requests", values: days.map((d) => Number(d.requests || 0)), axis: "right" });
  replace(
    section,
    h("h2", { id: "use-h" }, `Usage, last ${USAGE_DAYS} days`),
    lineChart({
      caption: usage.tokens ? "Credits spent and tokens per day" : "Credits spent and chat requests per day",
      x: days.map((d) => daySeconds(d.day)),
      series,
      yLabel: "credits",
      y2Label: usage.tokens ? "tokens" : "requests",
    }),
    table(
      "Usage per day",
      [
        { label: "Day", value: (d) => String(d.day) },
        { label: "Requests", value: (d) => fmtInt(d.requests), class: "num" },
        usage.tokens ? { label: "Tokens", value: (d) => fmtInt(tokens(d)), class: "num" } : null,
        { label: "Credits", value: (d) => fmtInt(d.credits), class: "num" },
      ].filter(Boolean),
      [...days].reverse().filter((d) => Number(d.requests || 0) > 0),
      "No chat usage yet.",
    ),
  );
}
