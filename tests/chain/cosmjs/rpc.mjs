// Calls every Comet38Client method against a CometBFT RPC URL and prints, per method,
// "ok" or the error cosmjs raised while asking or decoding. Input (stdin, JSON):
// {"url": "http://...", "txs": [hex, hex, hex], "account_query": hex, "sender": "remes1..."}
// txs are three signed txs (for broadcastTxCommit, broadcastTxSync, broadcastTxAsync).
import { Comet38Client, WebsocketClient } from "@cosmjs/tendermint-rpc";
import { fromHex, toHex } from "@cosmjs/encoding";

const input = JSON.parse(await new Promise((resolve) => {
  let text = "";
  process.stdin.on("data", (chunk) => (text += chunk));
  process.stdin.on("end", () => resolve(text));
}));
const out = {};
async function call(name, fn) {
  try {
    out[name] = { ok: true, value: await fn() };
  } catch (error) {
    out[name] = { ok: false, error: String(error && error.stack ? error.stack : error) };
  }
}

const client = await Comet38Client.connect(input.url);
const [commitTx, syncTx, asyncTx] = input.txs.map(fromHex);
let height = 0;
let hash = null;
await call("broadcastTxCommit", async () => {
  const r = await client.broadcastTxCommit({ tx: commitTx });
  height = r.height;
  hash = r.hash;
  return { height: r.height, hash: toHex(r.hash).toUpperCase(), code: r.txResult.code };
});
await call("broadcastTxSync", async () => {
  const r = await client.broadcastTxSync({ tx: syncTx });
  return { code: r.code, hash: toHex(r.hash).toUpperCase() };
});
await call("broadcastTxAsync", async () => toHex((await client.broadcastTxAsync({ tx: asyncTx })).hash).toUpperCase());
await call("status", async () => (await client.status()).syncInfo.latestBlockHeight);
await call("abciInfo", async () => (await client.abciInfo()).lastBlockHeight);
await call("abciQuery", async () => {
  const r = await client.abciQuery({ path: "/remes.remes.v1.Query/Account", data: fromHex(input.account_query) });
  return { code: r.code, bytes: r.value.length };
});
await call("health", async () => (await client.health()) === null);
await call("numUnconfirmedTxs", async () => (await client.numUnconfirmedTxs()).total);
await call("genesis", async () => (await client.genesis()).chainId);
await call("block", async () => (await client.block(height)).block.txs.length);
await call("blockResults", async () => (await client.blockResults(height)).results.length);
await call("blockchain", async () => (await client.blockchain(1, height)).blockMetas.length);
await call("commit", async () => (await client.commit(height)).canonical);
await call("validators", async () => (await client.validators({ height })).total);
await call("tx", async () => (await client.tx({ hash, prove: true })).height);
await call("txSearch", async () => {
  const r = await client.txSearch({ query: `message.sender='${input.sender}'`, per_page: 10, order_by: "desc" });
  return r.totalCount;
});
await call("blockSearch", async () => (await client.blockSearch({ query: `block.height<=${height}`, per_page: 5 })).totalCount);
await call("txNotFound", async () => client.tx({ hash: new Uint8Array(32) }));
client.disconnect();

await call("subscribeNewBlock", async () => {
  const ws = await Comet38Client.create(new WebsocketClient(input.url.replace(/^http/, "ws")));
  try {
    const block = await new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error("no NewBlock within 20 s")), 20000);
      const subscription = ws.subscribeNewBlock().subscribe({
        next: (event) => { clearTimeout(timer); subscription.unsubscribe(); resolve(event.header.height); },
        error: (e) => { clearTimeout(timer); reject(e); },
      });
    });
    return block;
  } finally {
    ws.disconnect();
  }
});
process.stdout.write(JSON.stringify(out) + "\n");
process.exit(0);
