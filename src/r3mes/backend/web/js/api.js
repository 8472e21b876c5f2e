// Talking to the backend: same origin only, cookies for a wallet session, an API key kept in
// sessionStorage when the user chose one. Session tokens never touch JavaScript: they are
// HttpOnly cookies set by /api/auth/login; the readable `r3mes_csrf` cookie is echoed in
// X-CSRF-Token on unsafe methods (the backend compares them).

const KEY_STORAGE = "r3mes.apiKey";
const UNSAFE = new Set(["POST", "PUT", "PATCH", "DELETE"]);

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export function apiKey() {
  try {
    return sessionStorage.getItem(KEY_STORAGE) || "";
  } catch {
    return "";
  }
}

export function setApiKey(key) {
  if (key) sessionStorage.setItem(KEY_STORAGE, key);
  else sessionStorage.removeItem(KEY_STORAGE);
}

export function cookie(name) {
  for (const part of document.cookie.split(";")) {
    const [k, ...rest] = part.trim().split("=");
    if (k === name) return decodeURIComponent(rest.join("="));
  }
  return "";
}

/** Headers for a request: the API key (if the user gave one) or the CSRF token for cookies. */
export function authHeaders(method = "GET") {
  const headers = {};
  const key = apiKey();
  if (key) headers.authorization = `Bearer ${key}`;
  else if (UNSAFE.has(method.toUpperCase())) {
    const csrf = cookie("r3mes_csrf");
    if (csrf) headers["x-csrf-token"] = csrf;
  }
  return headers;
}

async function errorOf(response) {
  let code = `http_${response.status}`;
  let message = response.statusText || `HTTP ${response.status}`;
  try {
    const body = await response.json();
    if (body && body.error) {
      code = body.error.code || body.error.type || code;
      message = body.error.message || message;
    } else if (body && body.detail) {
      message = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
    }
  } catch {
    // not JSON: keep the status text
  }
  return new ApiError(response.status, code, message);
}

let refreshing = null;

/** Rotate the cookie session once (concurrent callers share one refresh). */
export function refreshSession() {
  if (!refreshing) {
    refreshing = fetch("/api/auth/refresh", {
      method: "POST",
      credentials: "same-origin",
      headers: authHeaders("POST"),
    })
      .then((r) => r.ok)
      .catch(() => false)
      .finally(() => {
        setTimeout(() => {
          refreshing = null;
        }, 0);
      });
  }
  return refreshing;
}

function expired() {
  window.dispatchEvent(new CustomEvent("r3mes:auth-expired"));
}

/**
 * fetch() for the backend: JSON in and out, one silent refresh on 401 for cookie sessions,
 * `r3mes:auth-expired` when the session cannot be renewed. Returns the raw Response when
 * `raw` is set (streams), else the parsed JSON body.
 */
export async function request(path, { method = "GET", body, signal, raw = false, headers = {}, retry = true } = {}) {
  const init = {
    method,
    credentials: "same-origin",
    signal,
    headers: { accept: "application/json", ...authHeaders(method), ...headers },
  };
  if (body !== undefined) {
    init.headers["content-type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  // Only a browser that had a session (its readable CSRF cookie is still there) can refresh.
  if (response.status === 401 && retry && !apiKey() && cookie("r3mes_csrf") && !path.startsWith("/api/auth/")) {
    if (await refreshSession()) {
      return request(path, { method, body, signal, raw, headers, retry: false });
    }
  }
  if (!response.ok) {
    const error = await errorOf(response);
    if (response.status === 401 && !path.startsWith("/api/auth/")) expired();
    throw error;
  }
  if (raw) return response;
  if (response.status === 204) return null;
  const text = await response.text();
  return text ? JSON.parse(text) : null;
}

export const get = (path, opts = {}) => request(path, { ...opts, method: "GET" });
export const post = (path, body, opts = {}) => request(path, { ...opts, method: "POST", body });
export const del = (path, opts = {}) => request(path, { ...opts, method: "DELETE" });

/** Items of a list answer whatever its envelope ({items}, {data}, {<name>}, or a bare list). */
export function itemsOf(body, ...names) {
  if (Array.isArray(body)) return body;
  if (!body || typeof body !== "object") return [];
  for (const name of [...names, "items", "data", "results"]) {
    if (Array.isArray(body[name])) return body[name];
  }
  return [];
}
