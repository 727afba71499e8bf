// repoll's browser client: fetch() that follows a deferred request to its answer.
// Served by any repoll server at {operations path}/client.js. No dependencies.
//
//   import { request } from "/operations/client.js";
//   const response = await request("/start_work", {
//     method: "POST", headers: { "Content-Type": "application/json" },
//     body: JSON.stringify({ seconds: 3 }),
//   }, { deadline: 60, onProgress: (hop) => console.log(hop.status, hop.progress) });

const TERMINAL = new Set(["succeeded", "failed", "canceled"]);

export class PollingTimeout extends Error {
  constructor(message, operationUrl) {
    super(message);
    this.name = "PollingTimeout";
    this.operationUrl = operationUrl;
  }
}

function sleep(ms, signal) {
  return new Promise((resolve, reject) => {
    if (signal && signal.aborted) return reject(signal.reason);
    const timer = setTimeout(resolve, ms);
    if (signal) {
      signal.addEventListener("abort", () => { clearTimeout(timer); reject(signal.reason); }, { once: true });
    }
  });
}

// Milliseconds the server asks to wait: Retry-After-Ms, else Retry-After (seconds or a date).
export function serverInterval(response) {
  const ms = response.headers.get("Retry-After-Ms");
  if (ms !== null && /^\d+$/.test(ms.trim())) return Number(ms);
  const value = response.headers.get("Retry-After");
  if (value === null) return null;
  if (/^\d+$/.test(value.trim())) return Number(value) * 1000;
  const date = Date.parse(value);
  return Number.isNaN(date) ? null : Math.max(date - Date.now(), 0);
}

function isPending(response) {
  if (response.status !== 202 && response.status !== 303) return false;
  if (!response.headers.get("Location")) return false;
  const status = response.headers.get("Operation-Status");
  if (status !== null) return !TERMINAL.has(status.trim().toLowerCase());
  return response.headers.get("Retry-After") !== null || response.headers.get("Retry-After-Ms") !== null;
}

async function hopOf(response) {
  let body = null;
  try { body = await response.clone().json(); } catch (_) { /* not a status document */ }
  return {
    status: response.status,
    operationStatus: response.headers.get("Operation-Status"),
    progress: body && typeof body.progress === "number" ? body.progress : null,
    message: body && typeof body.message === "string" ? body.message : null,
    url: response.url,
  };
}

// Send a request; if the server defers it, poll until the final response and return that.
// options: deadline (s, whole operation), minInterval/maxInterval (s), longPoll (s, held polls),
// onProgress(hop), signal (an AbortSignal; init.signal works too).
export async function request(input, init = {}, options = {}) {
  const signal = options.signal || init.signal;
  const minMs = (options.minInterval ?? 0.1) * 1000;
  const maxMs = (options.maxInterval ?? 60) * 1000;
  const longPoll = options.longPoll ?? 30;
  const started = Date.now();
  const headers = new Headers(init.headers || {});
  if (!headers.has("Prefer")) headers.set("Prefer", "respond-async");
  let response = await fetch(input, { ...init, headers, signal });
  let backoff = 500;
  let held = response.headers.has("Operation-Status");
  while (isPending(response)) {
    const operationUrl = new URL(response.headers.get("Location"), response.url || location.href).href;
    if (options.onProgress) options.onProgress(await hopOf(response));
    let wait = serverInterval(response);
    if (wait === null || wait < minMs) { wait = Math.random() * backoff; backoff = Math.min(backoff * 1.5, 10000); }
    wait = Math.min(Math.max(wait, minMs), maxMs);
    let hold = longPoll;
    if (options.deadline) {
      const left = options.deadline * 1000 - (Date.now() - started);
      if (left <= 0) throw new PollingTimeout(`not done within ${options.deadline} s; resume from ${operationUrl}`, operationUrl);
      wait = Math.min(wait, left);
      hold = Math.min(hold, Math.floor(left / 1000));
    }
    if (hold >= 1 && held) wait = 0;  // the server holds the poll: no need to wait first
    if (wait > 0) await sleep(wait, signal);
    const sent = Date.now();
    const prefer = hold >= 1 ? `respond-async, wait=${Math.floor(hold)}` : "respond-async, wait=0";
    response = await fetch(operationUrl, { headers: { Prefer: prefer, Accept: init.accept || "*/*" }, credentials: init.credentials, signal });
    held = hold >= 1 && Date.now() - sent >= Math.min(500 * hold, 1000);
  }
  if (options.onProgress) options.onProgress(await hopOf(response));
  return response;
}

// Listen to an operation's events (Accept: text/event-stream) until its outcome.
export function watch(operationUrl, onEvent) {
  const source = new EventSource(operationUrl);
  return new Promise((resolve) => {
    source.addEventListener("status", (e) => onEvent(JSON.parse(e.data)));
    source.addEventListener("outcome", (e) => { const data = JSON.parse(e.data); onEvent(data); source.close(); resolve(data); });
  });
}
