// Log in: a browser wallet with Keplr's signArbitrary (ADR-036), a signature made by the CLI
// and pasted here, or an API key (kept in sessionStorage only, for this tab).

import { ApiError, get, post, setApiKey } from "../api.js";
import { copyText, field, h, replace, toast } from "../dom.js";
import { loadMe, logout, session } from "../session.js";

const ADDRESS = /^remes1[02-9ac-hj-np-z]{38,58}$/;

export async function loginPage(main) {
  const s = session();
  main.append(h("h1", { tabindex: "-1" }, s.state === "in" ? "You are logged in" : "Log in"));
  if (s.state === "in") {
    main.append(
      h(
        "section",
        { class: "card" },
        h("p", {}, s.via === "api-key" ? "Using an API key in this tab." : `Wallet ${s.me?.address || ""}`),
        h("p", {}, h("a", { href: "#/chat" }, "Go to chat"), " · ", h("a", { href: "#/account" }, "Account")),
        h("button", { type: "button", onclick: async () => { await logout(); location.hash = "#/login"; location.reload(); } }, "Log out"),
      ),
    );
    return null;
  }
  if (s.state === "expired") {
    main.append(h("p", { class: "banner warn" }, "Your session expired. Log in again: your chat is still here."));
  }
  const status = h("p", { class: "status", role: "status", "aria-live": "polite" });
  main.append(status, keplrCard(status), cliCard(status), apiKeyCard(status));
  return null;
}

async function finish(status) {
  await loadMe();
  if (session().state === "in") {
    toast("Logged in.");
    location.hash = "#/chat";
  } else {
    status.textContent = "The backend did not accept the login; try again.";
  }
}

async function challenge(address) {
  return post("/api/auth/challenge", { address });
}

async function login(body) {
  return post("/api/auth/login", body);
}

function keplrCard(status) {
  const button = h("button", { type: "button", class: "primary" }, "Sign in with a browser wallet");
  const note = h("p", { class: "hint" });
  const card = h("section", { class: "card", "aria-labelledby": "keplr-h" }, h("h2", { id: "keplr-h" }, "Browser wallet (Keplr)"), h("p", {}, "Signs a one-time login message (ADR-036). Nothing is sent to the chain and no fee is paid."), button, note);
  if (!window.keplr) {
    note.textContent = "No Keplr-compatible wallet was found in this browser. Use the command line or an API key below.";
  }
  button.addEventListener("click", async () => {
    if (!window.keplr) {
      status.textContent = "No browser wallet: install Keplr, or use the command line option.";
      return;
    }
    button.disabled = true;
    status.textContent = "Asking the wallet…";
    try {
      const stats = await get("/api/network/stats").catch(() => ({}));
      const chainId = stats.chain_id || "r3mes-devnet";
      await window.keplr.enable(chainId);
      const key = await window.keplr.getKey(chainId);
      const address = key.bech32Address;
      const ch = await challenge(address);
      status.textContent = "Sign the login message in your wallet…";
      const signed = await window.keplr.signArbitrary(chainId, address, ch.message);
      await login({ message: ch.message, signature: signed.signature, pub_key: signed.pub_key });
      await finish(status);
    } catch (error) {
      status.textContent = `Login failed: ${error.message || error}`;
    } finally {
      button.disabled = false;
    }
  });
  return card;
}

function cliCard(status) {
  const address = h("input", { type: "text", name: "address", autocomplete: "off", spellcheck: "false", placeholder: "remes1…" });
  const getButton = h("button", { type: "button" }, "Get a login message");
  const step2 = h("div", { class: "step", hidden: true });
  const card = h(
    "section",
    { class: "card", "aria-labelledby": "cli-h" },
    h("h2", { id: "cli-h" }, "Command line wallet"),
    h("p", {}, "Sign the login message with a key in your R3MES keystore, then paste the result."),
    field("Wallet address", address),
    getButton,
    step2,
  );
  getButton.addEventListener("click", async () => {
    const addr = address.value.trim();
    if (!ADDRESS.test(addr)) {
      status.textContent = "That is not a remes1… address.";
      address.focus();
      return;
    }
    try {
      const ch = await challenge(addr);
      renderStep2(step2, ch, addr, status);
    } catch (error) {
      status.textContent = `No login message: ${error.message}`;
    }
  });
  return card;
}

function renderStep2(step2, ch, address, status) {
  // A quoted heredoc passes the message byte for byte (no shell expansion); the passphrase
  // prompt reads the terminal, not stdin.
  const command = `r3mes wallet sign-login --key YOUR_KEY_NAME --challenge - <<'R3MES_CHALLENGE'\n${ch.message}\nR3MES_CHALLENGE`;
  const pasted = h("textarea", { name: "signature", rows: "5", spellcheck: "false", placeholder: '{"message": "...", "pub_key": {...}, "signature": "..."}' });
  const submit = h("button", { type: "button", class: "primary" }, "Log in");
  replace(
    step2,
    h("p", {}, `Run this where the key for ${address} lives (replace YOUR_KEY_NAME), then paste what it prints. The message expires at ${new Date(ch.expires_at).toLocaleTimeString()}.`),
    h("div", { class: "command" }, h("code", { "data-testid": "sign-command" }, command), h("button", { type: "button", onclick: () => copyText(command) }, "Copy command")),
    field("What the command printed (JSON)", pasted),
    submit,
  );
  step2.hidden = false;
  submit.addEventListener("click", async () => {
    let signed;
    try {
      signed = JSON.parse(pasted.value);
    } catch {
      status.textContent = "Paste the whole JSON the command printed.";
      pasted.focus();
      return;
    }
    try {
      await login({ message: signed.message || ch.message, signature: signed.signature, pub_key: signed.pub_key });
      await finish(status);
    } catch (error) {
      status.textContent = `Login failed: ${error.message}`;
    }
  });
}

function apiKeyCard(status) {
  const key = h("input", { type: "password", name: "api-key", autocomplete: "off", spellcheck: "false" });
  const use = h("button", { type: "button" }, "Use this key");
  const card = h(
    "section",
    { class: "card", "aria-labelledby": "key-h" },
    h("h2", { id: "key-h" }, "API key"),
    h("p", {}, "Kept only in this tab (sessionStorage) and sent as a Bearer token. Close the tab to forget it."),
    field("API key", key),
    use,
  );
  use.addEventListener("click", async () => {
    const value = key.value.trim();
    if (!value) {
      status.textContent = "Paste an API key first.";
      key.focus();
      return;
    }
    setApiKey(value);
    try {
      await get("/v1/models");
    } catch (error) {
      if (error instanceof ApiError && error.status === 401) {
        setApiKey("");
        status.textContent = "The backend does not accept that key (wrong, expired or revoked).";
        return;
      }
    }
    key.value = "";
    await finish(status);
  });
  return card;
}
