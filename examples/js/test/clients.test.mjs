// Runs against a live service: CRM_URL and CRM_TOKEN come from tests/test_js_clients.py.
import { test } from "node:test";
import assert from "node:assert/strict";
import { RemoteRunnable } from "@langchain/core/runnables/remote";
import { mergeChunks, streamChain, StreamError } from "../stream-client.mjs";

const base = process.env.CRM_URL;
const token = process.env.CRM_TOKEN;
const headers = { Authorization: `Bearer ${token}` };

const CHAINS = {
  "/api/v1/ai/realtime/interactions": {
    input: { customer_id: "js-1", channel: "chat", text: "Third outage this week, we will cancel today." },
    check: (out) => {
      assert.equal(out.sentiment.label, "negative");
      assert.equal(out.intent, "cancellation_risk", "the final label replaces the provisional one");
      assert.equal(out.provisional, false);
      assert.ok(out.summary.length > 0 && out.recommendations.length > 0);
    },
  },
  "/api/v1/ai/scoring/leads": {
    input: { lead_id: "js-lead", job_title: "CMO", demo_requested: true },
    check: (out) => {
      assert.ok(Number.isInteger(out.score) && out.score >= 0 && out.score <= 100);
      assert.ok(out.reasoning.length > 0 && out.model_version);
    },
  },
  "/api/v1/ai/insights/chat": {
    input: { customer_id: "js-1", question: "What happened with this customer?" },
    check: (out) => assert.ok(typeof out.answer === "string" && Array.isArray(out.sources)),
  },
};

for (const [path, { input, check }] of Object.entries(CHAINS)) {
  test(`RemoteRunnable invokes ${path}`, async () => {
    const chain = new RemoteRunnable({ url: `${base}${path}`, options: { headers } });
    check(await chain.invoke(input));
  });

  test(`RemoteRunnable streams ${path}`, async () => {
    const chain = new RemoteRunnable({ url: `${base}${path}`, options: { headers } });
    const chunks = [];
    for await (const chunk of await chain.stream(input)) chunks.push(chunk);
    assert.ok(chunks.length >= 1);
    check(mergeChunks(chunks));
  });

  test(`RemoteRunnable streamEvents ${path}`, async () => {
    const chain = new RemoteRunnable({ url: `${base}${path}`, options: { headers } });
    const kinds = [];
    for await (const event of chain.streamEvents(input, { version: "v2" })) kinds.push(event.event);
    assert.equal(kinds[0], "on_chain_start");
    assert.equal(kinds.at(-1), "on_chain_end");
  });

  test(`fetch + eventsource-parser streams ${path}`, async () => {
    const chunks = [];
    for await (const chunk of streamChain(base, path, input, { token })) chunks.push(chunk);
    check(mergeChunks(chunks));
  });
}

test("interaction stream sends provisional labels first, the summary before the actions", async () => {
  const chunks = [];
  for await (const chunk of streamChain(base, "/api/v1/ai/realtime/interactions", CHAINS["/api/v1/ai/realtime/interactions"].input, { token })) {
    chunks.push(chunk);
  }
  assert.equal(chunks[0].provisional, true);
  assert.ok("sentiment" in chunks[0] && "intent" in chunks[0]);
  const order = chunks.flatMap((chunk) => Object.keys(chunk));
  assert.ok(order.indexOf("recommendations") > order.indexOf("summary"));
});

test("RemoteRunnable without a token is refused", async () => {
  const chain = new RemoteRunnable({ url: `${base}/api/v1/ai/scoring/leads` });
  await assert.rejects(chain.invoke({ lead_id: "x" }), /401/);
});

test("the fetch client reports refusals as StreamError", async () => {
  await assert.rejects(
    async () => { for await (const _ of streamChain(base, "/api/v1/ai/scoring/leads", { lead_id: "x" })) { /* none */ } },
    (error) => error instanceof StreamError && error.status === 401,
  );
});
