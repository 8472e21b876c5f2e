// Prices and what a chat answer cost. The figure shown is the one the backend captured
// (found in the account's journal by the completion id); the price list gives an estimate
// only while the journal entry is not there yet.

import { get, itemsOf } from "./api.js";

/** {prompt, completion} credits per 1K tokens for `model` from GET /v1/pricing, or null.
 * A pinned `name@version` costs what `name` costs; unlisted models cost `default`. */
export function priceOf(pricing, model) {
  if (!pricing || !model) return null;
  const name = String(model).split("@")[0];
  const row = (pricing.models && pricing.models[name]) || pricing.default;
  return row ? { prompt: Number(row.prompt_per_1k || 0), completion: Number(row.completion_per_1k || 0) } : null;
}

/** The credits `usage` costs at `price` (rounded up, as the gateway charges whole credits). */
export function costOf(usage, price) {
  if (!usage || !price) return null;
  const milli = Number(usage.prompt_tokens || 0) * price.prompt + Number(usage.completion_tokens || 0) * price.completion;
  return Math.ceil(milli / 1000);
}

/** Label for a model entry of GET /v1/models: adapters by name and version. */
export function modelLabel(model) {
  const id = String(model.id);
  if (id === "auto") return "auto (the router picks an adapter)";
  if (model.kind === "base") return `${id} (base model)`;
  if (model.kind === "adapter") {
    const name = id.split("@")[0];
    if (id.includes("@")) return `${name} v${model.version} (pinned)`;
    return model.version ? `${name} (newest, v${model.version})` : name;
  }
  return id;
}

function journalEntries(body) {
  return itemsOf(body, "transactions", "entries", "movements");
}

/**
 * The credits captured for the gateway's request `requestId` (its x-request-id header): looked up in GET /api/me/transactions (a few
 * tries: the capture lands just after the stream ends), else estimated from `usage`.
 */
export async function billedFor(requestId, usage, pricing, model) {
  const ref = `chat:${requestId}`;
  for (let attempt = 0; attempt < 6; attempt += 1) {
    try {
      const body = await get("/api/me/transactions?limit=20");
      const hit = journalEntries(body).find((t) => String(t.ref || "") === ref && /capture|charge/.test(String(t.kind || t.type || "")));
      if (hit) return Math.abs(Number(hit.amount));
    } catch {
      break;
    }
    await new Promise((resolve) => setTimeout(resolve, 250 * (attempt + 1)));
  }
  return costOf(usage, priceOf(pricing, model));
}
