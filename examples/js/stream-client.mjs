// A dependency-light client for the service's LangServe streams, the way a React
// frontend on @langchain/core 1.x (which dropped RemoteRunnable) would read them:
// fetch + eventsource-parser. Works in browsers and Node 18+.
//
//   for await (const chunk of streamChain(baseUrl, "/api/v1/ai/insights/chat", input, { token })) {
//     if (chunk.answer) render(chunk.answer);
//   }
import { EventSourceParserStream } from "eventsource-parser/stream";

export class StreamError extends Error {
  constructor(payload) {
    super(payload.message ?? "stream failed");
    this.code = payload.code ?? "internal_error";
    this.retryable = Boolean(payload.retryable);
    this.status = payload.status_code;
  }
}

/** Streams a chain's output chunks; throws StreamError on an `error` event. */
export async function* streamChain(baseUrl, path, input, { token, signal, config } = {}) {
  const response = await fetch(`${baseUrl}${path}/stream`, {
    method: "POST",
    headers: { "Content-Type": "application/json", ...(token ? { Authorization: `Bearer ${token}` } : {}) },
    body: JSON.stringify(config ? { input, config } : { input }),
    signal,
  });
  if (!response.ok) {
    const detail = await response.text();
    throw new StreamError({ status_code: response.status, message: detail, code: `http_${response.status}` });
  }
  const events = response.body.pipeThrough(new TextDecoderStream()).pipeThrough(new EventSourceParserStream());
  // LangServe's `event: end` carries no data, and spec-compliant SSE parsers never
  // dispatch a data-less event; a cut connection surfaces as a body read error
  // instead, and failures as an `error` event, so a clean end of body means done.
  for await (const event of events) {
    if (event.event === "data") yield JSON.parse(event.data);
    else if (event.event === "error") throw new StreamError(JSON.parse(event.data));
  }
}

// Fields that stream as text pieces to append; every other field's latest value wins
// (an analysis sends provisional labels first, then the final ones that replace them).
const APPENDED = new Set(["summary", "answer"]);

/** Merges streamed chunks the way `invoke` would return them. */
export function mergeChunks(chunks) {
  const merged = {};
  for (const chunk of chunks) {
    for (const [key, value] of Object.entries(chunk)) {
      merged[key] = APPENDED.has(key) && typeof merged[key] === "string" ? merged[key] + value : value;
    }
  }
  return merged;
}
