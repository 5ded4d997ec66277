// Background runs against a live service: CRM_URL and CRM_TOKEN (a `rep`), like clients.test.mjs.
import { test } from "node:test";
import assert from "node:assert/strict";
import { createServer } from "node:http";
import { mergeChunks } from "../stream-client.mjs";
import { cancelRun, chunksOf, followRun, getRun, joinRun, startRun, WorkflowError } from "../workflow-client.mjs";

const base = process.env.CRM_URL;
const token = process.env.CRM_TOKEN;
const INTERACTION = { customer_id: "js-wf-1", channel: "chat", text: "Third outage this week, we will cancel today." };
const unique = (label) => `js-${label}-${Date.now()}-${Math.random().toString(36).slice(2)}`;
const order = (id) => id.split("-").map(Number);
const increasing = (a, b) => order(a)[0] < order(b)[0] || (order(a)[0] === order(b)[0] && order(a)[1] < order(b)[1]);

test("a run followed, left after a few events, and rejoined from the last id gives every event once", async () => {
  const run = await startRun(base, "realtime/interactions", INTERACTION, { token });
  assert.equal(run.chain, "realtime/interactions");
  assert.ok(["queued", "running"].includes(run.status));

  const first = [];
  const leave = new AbortController();
  await assert.rejects(async () => {
    for await (const message of followRun(base, run.id, { token, signal: leave.signal })) {
      first.push(message);
      if (first.length === 3) leave.abort(); // the user closes the page
    }
  }, { name: "AbortError" });
  assert.equal(first.length, 3);
  assert.deepEqual(first.slice(0, 2).map((m) => [m.type, m.data.status]), [["status", "queued"], ["status", "running"]]);

  const rest = [];
  for await (const message of joinRun(base, run.id, { token, lastEventId: first.at(-1).id })) rest.push(message);
  const all = [...first, ...rest];
  const ids = all.map((m) => m.id);
  assert.equal(new Set(ids).size, ids.length, "no event id twice");
  for (let i = 1; i < ids.length; i++) assert.ok(increasing(ids[i - 1], ids[i]), `${ids[i - 1]} < ${ids[i]}`);
  assert.ok(rest.length > 0);
  const end = all.at(-1);
  assert.equal(end.type, "end");
  assert.equal(end.data.status, "succeeded");
  assert.equal(all.filter((m) => m.type === "end").length, 1);

  const analysis = mergeChunks(chunksOf(all));
  const stored = await getRun(base, run.id, { token });
  assert.equal(stored.status, "succeeded");
  for (const out of [analysis, end.data.output]) {
    assert.equal(out.sentiment.label, stored.output.sentiment.label);
    assert.equal(out.intent, stored.output.intent);
    assert.equal(out.urgency, stored.output.urgency);
    assert.equal(out.summary, stored.output.summary, "the summary's text pieces append");
  }
  assert.equal(analysis.intent, "cancellation_risk");
  assert.equal(analysis.provisional, false, "the final labels replace the provisional ones");

  const afterEnd = [];
  for await (const message of joinRun(base, run.id, { token, lastEventId: end.id })) afterEnd.push(message);
  assert.deepEqual(afterEnd, [], "rejoining after the end gets nothing more (204), not a second end");
});

test("the same Idempotency-Key and body give back the same run", async () => {
  const idempotencyKey = unique("key");
  const input = { lead_id: "js-wf-lead", job_title: "CMO", demo_requested: true };
  const first = await startRun(base, "scoring/leads", input, { token, idempotencyKey });
  const again = await startRun(base, "scoring/leads", input, { token, idempotencyKey });
  assert.equal(again.id, first.id);
  const other = await startRun(base, "scoring/leads", input, { token, idempotencyKey: unique("key") });
  assert.notEqual(other.id, first.id);
  await assert.rejects(startRun(base, "scoring/leads", { lead_id: "someone-else" }, { token, idempotencyKey }),
    (error) => error instanceof WorkflowError && error.status === 422 && /Idempotency-Key/.test(error.message));
});

test("an input the chain refuses is a 422 naming the field", async () => {
  await assert.rejects(
    startRun(base, "realtime/interactions", { customer_id: "js-wf-1", channel: "chat" }, { token }),
    (error) => error instanceof WorkflowError && error.status === 422 && !error.retryable && /input\.text/.test(error.message),
  );
});

test("refusals carry their HTTP status", async () => {
  await assert.rejects(startRun(base, "scoring/leads", { lead_id: "x" }), (error) => error.status === 401);
  await assert.rejects(getRun(base, "00000000-0000-0000-0000-000000000000", { token }), (error) => error.status === 404);
});

test("a cancelled run ends with the status the cancel returned", async () => {
  const run = await startRun(base, "insights/chat", { customer_id: "js-wf-1", question: "What happened with this customer?" }, { token });
  const cancelled = await cancelRun(base, run.id, { token });
  assert.ok(["cancelled", "succeeded"].includes(cancelled.status), cancelled.status); // it may have finished first
  const messages = [];
  for await (const message of joinRun(base, run.id, { token })) messages.push(message);
  assert.equal(messages.at(-1).type, "end");
  assert.equal(messages.at(-1).data.status, cancelled.status);
});

// The reconnect path, against a stand-in feed that drops the connection, then sends a
// retryable `error` event, then replays from Last-Event-ID (with one event already seen).
test("joinRun resumes from Last-Event-ID after a drop and a retryable error event", async () => {
  const sse = (id, type, data) => `id: ${id}\nevent: ${type}\ndata: ${JSON.stringify({ id, type, data })}\n\n`;
  const feed = [["1-0", "status", { status: "running", attempt: 1 }], ["1-1", "data", { chunk: { summary: "a " } }],
    ["2-0", "data", { chunk: { summary: "b" } }], ["3-0", "end", { status: "succeeded" }]];
  const asked = [];
  const server = createServer((request, response) => {
    const after = request.headers["last-event-id"];
    asked.push(after ?? null);
    response.writeHead(200, { "Content-Type": "text/event-stream" });
    if (asked.length === 1) return response.write(sse(...feed[0]) + sse(...feed[1]).slice(0, 20), () => request.socket.destroy());
    if (asked.length === 2) return response.end(sse(...feed[1]) + `event: error\ndata: {"code":"slow_consumer","message":"too slow","retryable":true}\n\n`);
    const from = asked.length === 3 ? feed.findIndex(([id]) => id === after) : 0; // the 3rd replays the last one seen
    response.end(feed.slice(from).map((event) => sse(...event)).join(""));
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  try {
    const messages = [];
    for await (const message of joinRun(`http://127.0.0.1:${server.address().port}`, "run", { backoffMs: 1 })) messages.push(message);
    assert.deepEqual(messages.map((m) => m.id), ["1-0", "1-1", "2-0", "3-0"]);
    assert.deepEqual(asked, [null, "1-0", "1-1"]);
    assert.deepEqual(mergeChunks(chunksOf(messages)), { summary: "a b" });
  } finally {
    server.close();
  }
});

test("a 429 carries its Retry-After seconds", async () => {
  const server = createServer((_, response) => {
    response.writeHead(429, { "Content-Type": "application/json", "Retry-After": "5" });
    response.end(JSON.stringify({ detail: "100 background runs are queued or running for your tenant (at most 100)" }));
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  try {
    await assert.rejects(startRun(`http://127.0.0.1:${server.address().port}`, "scoring/leads", { lead_id: "x" }, { token: "t" }),
      (error) => error instanceof WorkflowError && error.status === 429 && error.retryAfter === 5 && error.retryable);
  } finally {
    server.close();
  }
});
