// Who is logged in: loaded from GET /api/me (cookie session or API key), shared by pages.

import { ApiError, apiKey, get, post, setApiKey } from "./api.js";

const listeners = new Set();
let current = { state: "unknown", me: null, via: null };

export function session() {
  return current;
}

export function onSessionChange(fn) {
  listeners.add(fn);
  return () => listeners.delete(fn);
}

function set(next) {
  current = next;
  for (const fn of listeners) fn(current);
}

/** Ask the backend who we are; a 401 means logged out (nothing else is assumed). */
export async function loadMe() {
  const via = apiKey() ? "api-key" : "wallet";
  try {
    const me = await get("/api/me", { retry: true });
    set({ state: "in", me, via });
  } catch (error) {
    if (error instanceof ApiError && error.status === 403 && via === "api-key") {
      // A chat-only key cannot read the account, but it can chat.
      set({ state: "in", me: null, via });
    } else if (error instanceof ApiError && error.status === 401) {
      set({ state: "out", me: null, via: null });
    } else {
      set({ state: "error", me: null, via: null, error });
    }
  }
  return current;
}

export async function logout() {
  if (apiKey()) {
    setApiKey("");
  } else {
    try {
      await post("/api/auth/logout", {});
    } catch {
      // The cookies are cleared by the server when it answers; nothing else to undo here.
    }
  }
  set({ state: "out", me: null, via: null });
}

/** Called when a request came back 401 and could not be renewed. */
export function markExpired() {
  if (current.state === "in") set({ state: "expired", me: current.me, via: current.via });
}
