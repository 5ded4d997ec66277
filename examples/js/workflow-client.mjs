// A dependency-light client for background runs ("workflows"): start a chain's run that
// outlives the page, leave it, and rejoin its Server-Sent Events later from the last
// event id seen, without missing or repeating an event. fetch + eventsource-parser,
// like stream-client.mjs; works in browsers and Node 18+.
//
//   const run = await startRun(baseUrl, "realtime/interactions", input, { token, idempotencyKey: crypto.randomUUID() });
//   let lastEventId;
//   for await (const message of joinRun(baseUrl, run.id, { token, signal })) {
//     lastEventId = message.id;  // persist it (e.g. sessionStorage) to rejoin after a reload
//     render(message);           // `status`, `data` ({chunk}), finally `end` ({status, output | error})
//   }
//   // ... the user left (signal aborted); later, from the same or another page:
//   for await (const message of joinRun(baseUrl, run.id, { token, lastEventId })) render(message);
//
// `token` may be a string or a function returning one (called on each connection, so a
// feed ended by `token_expired` resumes with a fresh token). The result is `end`'s
// `output` (or `getRun`); the `data` chunks are for showing it as it streams:
// `mergeChunks(chunksOf(messages))` (stream-client.mjs) rebuilds it from them.
import { EventSourceParserStream } from "eventsource-parser/stream";

export class WorkflowError extends Error {
  constructor(message, { status, code, retryable = false, retryAfter = null, detail } = {}) {
    super(message);
    this.status = status; // HTTP status, if the service answered with one
    this.code = code ?? (status ? `http_${status}` : "error");
    this.retryable = Boolean(retryable);
    this.retryAfter = retryAfter; // seconds, from a 429's Retry-After
    this.detail = detail;
  }
}

const RETRYABLE_STATUS = new Set([429, 502, 503, 504]);

/** The service's refusal as a WorkflowError: status, readable detail, Retry-After seconds. */
async function refusal(response) {
  const text = await response.text();
  let detail = text;
  try { detail = JSON.parse(text).detail ?? text; } catch { /* not JSON */ }
  const described = Array.isArray(detail) ? detail.map((d) => `${(d.loc ?? []).join(".")}: ${d.msg}`).join("; ") : String(detail);
  const retryAfter = Number.parseInt(response.headers.get("Retry-After") ?? "", 10);
  return new WorkflowError(`HTTP ${response.status}: ${described}`, {
    status: response.status, retryable: RETRYABLE_STATUS.has(response.status),
    retryAfter: Number.isNaN(retryAfter) ? null : retryAfter, detail,
  });
}

async function call(baseUrl, path, { token, method = "GET", body, headers = {}, signal } = {}) {
  const bearer = typeof token === "function" ? await token() : token;
  const response = await fetch(`${baseUrl}${path}`, {
    method, signal,
    headers: { ...(body ? { "Content-Type": "application/json" } : {}), ...(bearer ? { Authorization: `Bearer ${bearer}` } : {}), ...headers },
    body: body ? JSON.stringify(body) : undefined,
  });
  if (!response.ok) throw await refusal(response);
  return response;
}

const RUNS = "/api/v1/ai/workflows";

/** Starts a background run (202 with the run); the same idempotencyKey and body give back the same run. */
export async function startRun(baseUrl, chain, input, { token, idempotencyKey, retry, signal } = {}) {
  const headers = idempotencyKey ? { "Idempotency-Key": idempotencyKey } : {};
  const body = retry === undefined ? { chain, input } : { chain, input, retry };
  return (await call(baseUrl, RUNS, { token, method: "POST", body, headers, signal })).json();
}

/** The run: its status, and its output once it succeeded (or its error). */
export async function getRun(baseUrl, runId, { token, signal } = {}) {
  return (await call(baseUrl, `${RUNS}/${runId}`, { token, signal })).json();
}

/** Cancels the run and returns it (final, or still stopping after a second); a final run is left as it is. */
export async function cancelRun(baseUrl, runId, { token, signal } = {}) {
  return (await call(baseUrl, `${RUNS}/${runId}`, { token, method: "DELETE", signal })).json();
}

/** One page of the tenant's runs, newest first: {runs, next_cursor}. */
export async function listRuns(baseUrl, { token, status, limit, cursor, signal } = {}) {
  const query = new URLSearchParams(Object.entries({ status, limit, cursor }).filter(([, v]) => v != null));
  return (await call(baseUrl, `${RUNS}?${query}`, { token, signal })).json();
}

/** Yields the run's event messages in order (after lastEventId, if given) and returns after `end`;
 *  throws WorkflowError on an `error` event or if the feed stops before `end`. */
export async function* followRun(baseUrl, runId, { token, lastEventId, signal } = {}) {
  const headers = { Accept: "text/event-stream", ...(lastEventId ? { "Last-Event-ID": lastEventId } : {}) };
  const response = await call(baseUrl, `/api/v1/ai/stream/workflows/${runId}`, { token, headers, signal });
  if (response.status === 204) return; // lastEventId was the run's `end`: nothing follows it
  const events = response.body.pipeThrough(new TextDecoderStream()).pipeThrough(new EventSourceParserStream());
  for await (const event of events) {
    if (event.event === "error") {
      const payload = JSON.parse(event.data);
      throw new WorkflowError(payload.message ?? "the feed failed", payload);
    }
    signal?.throwIfAborted();
    const message = JSON.parse(event.data);
    yield message;
    if (message.type === "end") return;
  }
  throw new WorkflowError("the feed closed before the run's end", { code: "disconnected", retryable: true });
}

const order = (id) => id.split("-").map(Number); // "<ms>-<seq>"; ms stays well within 2**53
const isAfter = (id, previous) => {
  const [ms, seq] = order(id);
  const [pms, pseq] = order(previous);
  return ms > pms || (ms === pms && seq > pseq);
};

const sleep = (ms, signal) => new Promise((resolve, reject) => {
  const timer = setTimeout(resolve, ms);
  signal?.addEventListener("abort", () => { clearTimeout(timer); reject(signal.reason); }, { once: true });
});

/** Like followRun, but reconnects with Last-Event-ID after a dropped connection or a retryable
 *  error (at most `attempts` times in a row, with backoff): each event once, in order, up to `end`. */
export async function* joinRun(baseUrl, runId, { lastEventId, attempts = 5, backoffMs = 250, ...options } = {}) {
  for (let failures = 0; ;) {
    try {
      for await (const message of followRun(baseUrl, runId, { ...options, lastEventId })) {
        if (lastEventId && !isAfter(message.id, lastEventId)) continue; // already delivered
        lastEventId = message.id;
        failures = 0;
        yield message;
      }
      return;
    } catch (error) {
      const retryable = error instanceof WorkflowError ? error.retryable : error instanceof TypeError; // fetch's network errors
      if (options.signal?.aborted || !retryable || ++failures >= attempts) throw error;
      await sleep(Math.max(backoffMs * 2 ** (failures - 1), (error.retryAfter ?? 0) * 1000), options.signal);
    }
  }
}

/** The `data` chunks of the run's latest attempt: a run re-queued after its replica died restarts from scratch. */
export function chunksOf(messages) {
  let attempt = 1;
  let chunks = [];
  for (const message of messages) {
    if (message.type === "status" && message.data.attempt > attempt) [attempt, chunks] = [message.data.attempt, []];
    else if (message.type === "data") chunks.push(message.data.chunk);
  }
  return chunks;
}
