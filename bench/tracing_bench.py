"""What tracing costs per request, off (the default) and on (README, "Tracing").

    PYTHONPATH=. .venv/bin/python bench/tracing_bench.py [--requests 40] [--rounds 3]

1. The span calls of one chain request on the hot path (`auth`, `run`, `queue_wait`,
   `provider_call` with its `first_model_token` event, `publish`, attributes included),
   in-process: the API's no-op tracer (off) against the SDK's (on, batch processor,
   an exporter that drops what it gets).
2. `/invoke` of the interactions chain through the whole app (httpx ASGITransport,
   lifespan run, `local` provider, 8 requests in flight), one app built with tracing off
   and one with it on (an exporter that drops spans: the cost of making spans, not of
   shipping them). Rounds alternate off/on (the machine is shared and noisy).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from pathlib import Path

import httpx
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import Tracer

from chains import spans as attrs
from chains.spans import NO_TRACER

SECRET = "bench-secret-that-is-long-enough-for-hs256-0123456789"
INTERACTION = {
    "customer_id": "cust-1", "channel": "email", "customer_tier": "high_value",
    "text": "Third outage this week. If this is not fixed today we will cancel our contract.",
}


class DiscardingExporter(SpanExporter):
    def __init__(self) -> None:
        self.exported = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.exported += len(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None


def hot_path(tracer: Tracer) -> None:
    """The span calls one interactions request makes, as the service makes them."""
    with tracer.start_span("auth", record_exception=False, set_status_on_exception=False) as auth:
        auth.set_attribute(attrs.TENANT, "acme")
    run = tracer.start_span("run", record_exception=False, set_status_on_exception=False,
                            attributes={attrs.CHAIN: "interactions", attrs.TENANT: "acme"})
    parent = trace.set_span_in_context(run) if run.is_recording() else None
    named = {attrs.CHAIN: "interactions", attrs.TENANT: "acme"}
    with tracer.start_span("queue_wait", context=parent, record_exception=False, set_status_on_exception=False,
                           attributes={**named, attrs.QUEUE_PRIORITY: "high"}) as queue:
        queue.set_attribute(attrs.QUEUE_OUTCOME, "granted")
    call = tracer.start_span("provider_call", context=parent, record_exception=False, set_status_on_exception=False,
                             attributes={attrs.PROVIDER: "openai", attrs.MODEL: "gpt", attrs.FAILOVER_ATTEMPT: 1})
    call.add_event(attrs.FIRST_MODEL_TOKEN)
    call.set_attributes({"ai.tokens_in": 120, "ai.tokens_out": 80})
    call.end()
    with tracer.start_span("publish", context=parent, record_exception=False, set_status_on_exception=False,
                           attributes=named):
        pass
    run.set_attribute(attrs.OUTCOME, "ok")
    run.end()


def no_spans(tracer: Tracer) -> None:
    """The baseline: what the same request does without any span call."""


def micro(path: Callable[[Tracer], None], tracer: Tracer, n: int) -> float:
    """µs per request of `path`, best of 5."""
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(n):
            path(tracer)
        best = min(best, (time.perf_counter() - started) / n * 1e6)
    return best


async def measure(client: httpx.AsyncClient, requests: int) -> tuple[float, float]:
    """(requests/s, p50 ms) of `requests` `/invoke`s, 8 in flight."""
    from app.api.chains import INTERACTIONS_PATH

    latencies: list[float] = []

    async def one() -> None:
        started = time.perf_counter()
        response = await client.post(f"{INTERACTIONS_PATH}/invoke", json={"input": INTERACTION})
        response.raise_for_status()
        latencies.append((time.perf_counter() - started) * 1000)

    queue = iter(range(requests))

    async def worker() -> None:
        for _ in queue:
            await one()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(8)))
    return requests / (time.perf_counter() - started), statistics.median(latencies)


async def serve(data_dir: Path, requests: int, rounds: int) -> tuple[dict[bool, list[tuple[float, float]]], int]:
    """Both apps up at once, rounds alternating off/on; and the spans the traced one exported."""
    import logging

    from app.core.auth import TokenVerifier
    from app.core.config import Settings
    from app.server import create_app

    exporter = DiscardingExporter()
    results: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
    async with AsyncExitStack() as stack:
        clients = {}
        for enabled in (False, True):
            settings = Settings(
                _env_file=None, app_env="test", data_dir=data_dir / str(enabled), auth_jwt_secret=SECRET,
                llm_providers="local", rate_limit_tenant="1000000/minute", rate_limit_user="1000000/minute",
                tracing_enabled=enabled,
            )
            app = create_app(settings, span_exporter=exporter)
            await stack.enter_async_context(app.router.lifespan_context(app))
            token = TokenVerifier(settings).mint(tenant_id="acme", user_id="bench", roles=("rep",), ttl_s=3600)
            clients[enabled] = await stack.enter_async_context(httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://bench",
                headers={"Authorization": f"Bearer {token}"}, timeout=60,
            ))
        for name in ("httpx", "alembic"):
            logging.getLogger(name).setLevel(logging.WARNING)
        for enabled in (False, True):
            await measure(clients[enabled], 16)  # warm-up: first-use caches, lazy imports
        for _ in range(rounds):
            for enabled in (False, True):
                results[enabled].append(await measure(clients[enabled], requests))
    return results, exporter.exported


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--micro", type=int, default=2_000)
    args = parser.parse_args()

    provider = TracerProvider()
    # A queue that holds every span of the run: the cost measured is the service's, not the drops'.
    provider.add_span_processor(BatchSpanProcessor(DiscardingExporter(), max_queue_size=1 << 17))
    none_us = micro(no_spans, NO_TRACER, args.micro)
    off_us = micro(hot_path, NO_TRACER, args.micro)
    on_us = micro(hot_path, provider.get_tracer("bench"), args.micro)
    provider.shutdown()
    print("Span calls of one request (auth, run, queue_wait, provider_call + event, publish), in-process:\n")
    print("| tracing | µs per request |")
    print("|---|---|")
    print(f"| no span calls at all | {none_us:.2f} |")
    print(f"| off (API no-op tracer, the default) | {off_us:.2f} |")
    print(f"| on (SDK, batch processor) | {on_us:.2f} |")

    os.environ.setdefault("MODEL_CACHE_DIR", str(Path(tempfile.gettempdir()) / "crm-test-model-cache"))
    with tempfile.TemporaryDirectory() as tmp:
        results, exported = asyncio.run(serve(Path(tmp), args.requests, args.rounds))
    print(f"\n`/invoke` (interactions, local), {args.requests} requests per round, 8 in flight, "
          f"{args.rounds} rounds alternating off/on:\n")
    print("| tracing | requests/s (best round) | requests/s (each round) | p50 ms (best round) |")
    print("|---|---|---|---|")
    for enabled in (False, True):
        best = max(results[enabled])
        every = ", ".join(f"{rate:.1f}" for rate, _ in results[enabled])
        print(f"| {'on' if enabled else 'off (default)'} | {best[0]:.1f} | {every} | {best[1]:.1f} |")
    off, on = max(results[False])[0], max(results[True])[0]
    traced = args.requests * args.rounds + 16
    print(f"\non/off throughput (best rounds): {on / off:.3f}x; spans exported per traced request: {exported / traced:.1f}")

if __name__ == "__main__":
    main()
