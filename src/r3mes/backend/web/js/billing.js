// Prices and what a chat answer cost. The figure shown is the one the backend captured
// (found in the account's journal by the completion id); the price list gives an estimate
// only while the journal entry is not there yet.

import { get, itemsOf } from "./api.js";

/** {prompt, completion} credits per 1K tokens for `model` from GET /v1/pricing, or null. */
export function priceOf(pricing, model) {
  if (!pricing) return null;
  const rows = itemsOf(pricing, "data", "models", "prices");
  const row = rows.find((r) => r.model === model || r.id === model);
  const pick = (r) =>
    r && {
      prompt: Number(r.prompt_per_1k ?? r.prompt ?? r.input_per_1k ?? 0),
      completion: Number(r.completion_per_1k ?? r.completion ?? r.output_per_1k ?? 0),
    };
  if (row) return pick(row);
  if (pricing.default) return pick(pricing.default);
  return null;
}

/** The credits `usage` costs at `price` (rounded up, as the gateway charges whole credits). */
export function costOf(usage, price) {
  if (!usage || !price) return null;
  const milli = Number(usage.prompt_tokens || 0) * price.prompt + Number(usage.completion_tokens || 0) * price.completion;
  return Math.ceil(milli / 1000);
}

/** Label for a model entry of GET /v1/models: adapters by name and version. */
export function modelLabel(model) {
  const info = model.r3mes || model.metadata || {};
  const kind = info.kind || model.kind || "";
  const name = info.adapter || info.name || model.adapter || "";
  const version = info.version ?? model.version;
  if (model.id === "auto") return "auto (the router picks an adapter)";
  if (name && version !== undefined && version !== null) return `${name} v${version}${kind ? ` (${kind})` : ""}`;
  if (kind === "base") return `${model.id} (base model)`;
  return model.id;
}

function journalEntries(body) {
  return itemsOf(body, "transactions", "entries", "movements");
}

/**
 * The credits captured for completion `id`: looked up in GET /api/me/transactions (a few
 * tries: the capture lands just after the stream ends), else estimated from `usage`.
 */
export async function billedFor(id, usage, pricing, model) {
  for (let attempt = 0; attempt < 6; attempt += 1) {
    try {
      const body = await get("/api/me/transactions?limit=20");
      const hit = journalEntries(body).find((t) => String(t.ref || t.memo || "").includes(id) && /capture|charge/.test(String(t.kind || t.type || "")));
      if (hit) return Math.abs(Number(hit.amount));
    } catch {
      break;
    }
    await new Promise((resolve) => setTimeout(resolve, 250 * (attempt + 1)));
  }
  return costOf(usage, priceOf(pricing, model));
}
