// repoll's browser client: fetch() that follows a deferred request to its answer.
// Served by any repoll server at {operations path}/client.js. No dependencies.
//
//   import { request, watch } from "/operations/client.js";
//   const response = await request("/start_work", {
//     method: "POST",
//     headers: { "Content-Type": "application/json", Authorization: `Bearer ${token}` },
//     body: JSON.stringify({ seconds: 3 }),
//   }, { deadline: 60, onProgress: (hop) => console.log(hop.status, hop.progress) });
//
// Polls carry the caller's headers by the rule every repoll client follows
// (docs/client.md): all of them but those of the original request alone (its
// body's, its conditions, Idempotency-Key, Prefer), and, to another origin
// (only with allowCrossOrigin), none of the credentials.

const TERMINAL = new Set(["succeeded", "failed", "canceled"]);
// The original request's own fields (the body's, the conditions, the protocol's),
// and those the browser writes itself.
const NOT_CARRIED = new Set([
  "content-type", "content-length", "content-encoding", "content-language", "content-location",
  "content-md5", "content-range", "transfer-encoding", "expect", "if-match", "if-none-match",
  "if-modified-since", "if-unmodified-since", "if-range", "range", "idempotency-key", "prefer",
  "host", "connection", "keep-alive", "proxy-connection", "te", "trailer", "upgrade",
]);
// Never sent to another origin.
const CREDENTIALS = new Set([
  "authorization", "proxy-authorization", "cookie", "x-api-key", "api-key",
  "ocp-apim-subscription-key", "x-auth-token",
]);

export class PollingTimeout extends Error {
  constructor(message, operationUrl) {
    super(message);
    this.name = "PollingTimeout";
    this.operationUrl = operationUrl;
  }
}

export class CrossOriginError extends Error {
  constructor(message) {
    super(message);
    this.name = "CrossOriginError";
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

// The header fields of a poll of pollUrl, from the original request's (see the top).
export function pollHeaders(original, originalUrl, pollUrl, prefer) {
  const sameOrigin = new URL(pollUrl).origin === new URL(originalUrl).origin;
  const headers = new Headers({ Accept: "*/*" });
  for (const [name, value] of new Headers(original || {})) {
    if (NOT_CARRIED.has(name) || (!sameOrigin && CREDENTIALS.has(name))) continue;
    headers.set(name, value);
  }
  headers.set("Prefer", prefer);
  return headers;
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
// allowCrossOrigin (follow a Location on another origin, without credentials),
// onProgress(hop), signal (an AbortSignal; init.signal works too).
export async function request(input, init = {}, options = {}) {
  const signal = options.signal || init.signal;
  const minMs = (options.minInterval ?? 0.1) * 1000;
  const maxMs = (options.maxInterval ?? 60) * 1000;
  const longPoll = options.longPoll ?? 30;
  const started = Date.now();
  const headers = new Headers(init.headers || {});
  if (!headers.has("Prefer")) headers.set("Prefer", "respond-async");
  const originalUrl = new URL(typeof input === "string" ? input : input.url, location.href).href;
  let response = await fetch(input, { ...init, headers, signal });
  let backoff = 500;
  let held = response.headers.has("Operation-Status");
  while (isPending(response)) {
    const operationUrl = new URL(response.headers.get("Location"), response.url || originalUrl).href;
    if (new URL(operationUrl).origin !== new URL(originalUrl).origin && !options.allowCrossOrigin) {
      throw new CrossOriginError(`the server sent the operation to another origin (${operationUrl}); pass allowCrossOrigin: true to follow it (credentials are never sent there)`);
    }
    if (options.onProgress) options.onProgress(await hopOf(response));
    let wait = serverInterval(response);
    if (wait === null || wait <= 0 || wait < minMs) { wait = Math.random() * backoff; backoff = Math.min(backoff * 1.5, 10000); }
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
    const sameOrigin = new URL(operationUrl).origin === new URL(originalUrl).origin;
    response = await fetch(operationUrl, {
      headers: pollHeaders(headers, originalUrl, operationUrl, prefer),
      credentials: sameOrigin ? init.credentials : "omit",
      signal,
    });
    held = hold >= 1 && Date.now() - sent >= Math.min(500 * hold, 1000);
  }
  if (options.onProgress) options.onProgress(await hopOf(response));
  return response;
}

// Listen to an operation's events (Accept: text/event-stream) until its outcome; resolves with it.
// A fetch-based stream, not EventSource, so that it carries headers (Authorization, an API key):
// options.headers, options.credentials, options.signal. A stream the server ends early (at its
// limit of held requests, with a retry hint) is opened again after that hint.
export async function watch(operationUrl, onEvent, options = {}) {
  const url = new URL(operationUrl, location.href).href;
  const headers = new Headers(options.headers || {});
  headers.set("Accept", "text/event-stream");
  for (;;) {
    const response = await fetch(url, { headers, credentials: options.credentials, signal: options.signal });
    if (!response.ok || !response.body) throw new Error(`the event stream of ${url} answered ${response.status}`);
    let retry = 1000;
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value.replace(/\r\n?/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) !== -1) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        let event = "message";
        const data = [];
        for (const line of block.split("\n")) {
          const colon = line.indexOf(":");
          const field = colon === -1 ? line : line.slice(0, colon);
          const text = colon === -1 ? "" : line.slice(colon + 1).replace(/^ /, "");
          if (field === "event") event = text;
          else if (field === "data") data.push(text);
          else if (field === "retry" && /^\d+$/.test(text)) retry = Number(text);
        }
        if (!data.length) continue;
        const parsed = JSON.parse(data.join("\n"));
        onEvent(parsed);
        if (event === "outcome") { reader.cancel().catch(() => {}); return parsed; }
      }
    }
    await sleep(retry, options.signal);
  }
}
