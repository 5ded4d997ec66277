"""The servers the streaming benchmark compares, each in its own process.

    python -m bench.servers KIND --port PORT [--data-dir DIR] [--workers N]

- raw: an sse-starlette endpoint sending 400 plain-text chunks made before the first
  request (the transport's floor).
- raw-model: the same endpoint streaming the fake model's answer, as #15 measured its
  raw baseline ("the same answer from the same async fake model in every server"): the
  same JSON analysis in the same pieces as the full server's provider, read as this
  service's router reads a model no callback listens to (`model_stream`: the model's own
  `_astream`, LangChain's per-token callback machinery skipped), in the groups the
  router hands on (`Arrivals`: what was read since the last event, one event each;
  the reader gives the loop a turn every `TOKENS_PER_TURN` pieces). The fake model never
  waits, so that is at most about 50 events for the 400 pieces, fewer under load; the
  full server sends about as many for the same answer.
- raw-coalesced, raw-model-coalesced: the same two behind this service's
  `CoalescedStreamWrites` (events queued within its window, 5 ms by default or
  `STREAM_WRITE_WINDOW_MS` as for the full server, go out in one write).

  Every raw server also gets the service's collector tuning (`tune_gc_once`), and runs
  its stream in the request's own task as the service's chain routes do
  (`app.api.stream_response`). The GIL's switch interval is left alone: these servers have
  no helper threads for it to serve. So each raw baseline has every generic tuning the
  service has; `raw-model-coalesced` is #15's baseline.
- langserve: plain LangServe `add_routes` of `prompt | model | StrOutputParser`, no auth,
  none of our tuning (what #15 compares against).
- full: this service (auth, tenant injection, scheduler, audit, event publish,
  metrics) with the interaction chain's provider replaced by the same fixed model,
  answering in the chain's format: the JSON analysis cut into as many pieces.

`BENCH_CHUNKS` (pieces, default 400) and `BENCH_TOKEN_DELAY_S` (a pause before each)
shape the model's answer in the full and raw-model servers alike.
`BENCH_GC_LOG=1` prints every garbage-collector pause over 20 ms to stderr, and the
collector's running totals (the fan-out bench client logs its own too).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing, asynccontextmanager
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI
from langchain_core.messages import AIMessageChunk, HumanMessage
from sse_starlette.sse import EventSourceResponse

from app.api.stream_response import StreamInRequestTask
from bench.fake_model import ANSWER_CHUNKS, CHUNKS, FixedAnswerChatModel, analysis_chunks

BENCH_SECRET = "bench-secret-bench-secret-bench-secret-0123456789"


def tuned_app() -> FastAPI:
    """A FastAPI app with the service's process-wide collector tuning at start-up."""
    from app.core.runtime import tune_gc_once

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        tune_gc_once()
        yield

    return FastAPI(lifespan=lifespan)


def raw_app() -> FastAPI:
    app = tuned_app()

    @app.post("/stream")
    async def stream() -> EventSourceResponse:
        async def events():  # type: ignore[no-untyped-def]
            for text in ANSWER_CHUNKS:
                yield {"event": "data", "data": json.dumps(text)}
            yield {"event": "end"}

        return StreamInRequestTask(events())

    return app


def raw_model_app() -> FastAPI:
    from chains.providers.arrivals import Arrivals
    from chains.providers.router import READ_AHEAD, TOKENS_PER_TURN, model_stream

    app, model, prompt = tuned_app(), fixed_model(), [HumanMessage("hello")]

    def text_of(chunk: AIMessageChunk) -> str:
        return str(chunk.content)

    @app.post("/stream")
    async def stream() -> EventSourceResponse:
        async def events():  # type: ignore[no-untyped-def]
            async with aclosing(Arrivals(model_stream(model, prompt, {"callbacks": []}), keep=text_of,
                                         per_turn=TOKENS_PER_TURN, ahead=READ_AHEAD)) as groups:
                async for group in groups:
                    yield {"event": "data", "data": json.dumps("".join(group))}
            yield {"event": "end"}

        return StreamInRequestTask(events())

    return app


def coalesced(app: FastAPI) -> FastAPI:
    """Behind the service's write coalescing, with the window the full server reads (its
    default, or STREAM_WRITE_WINDOW_MS when set)."""
    from app.api.stream_writes import CoalescedStreamWrites
    from app.core.config import Settings

    settings = Settings(_env_file=None, auth_jwt_secret=BENCH_SECRET, app_env="test")
    app.add_middleware(CoalescedStreamWrites, window_s=settings.stream_write_window_ms / 1000)
    return app


def model_pieces(kind: str) -> int:
    """How many pieces a server of `kind` answers in: `BENCH_CHUNKS` for those the fixed
    model answers (full, raw-model*), `CHUNKS` for the others."""
    if kind == "full" or kind.startswith("raw-model"):
        return int(os.environ.get("BENCH_CHUNKS", CHUNKS))
    return CHUNKS


def fixed_model() -> FixedAnswerChatModel:
    """The model answering the full and raw-model servers: an LLM's JSON analysis of the
    interaction chain, in `BENCH_CHUNKS` pieces."""
    return FixedAnswerChatModel(answer=analysis_chunks(model_pieces("full")),
                                delay_s=float(os.environ.get("BENCH_TOKEN_DELAY_S", "0")))


RAW_APPS: dict[str, Callable[[], FastAPI]] = {
    "raw": raw_app, "raw-coalesced": lambda: coalesced(raw_app()), "raw-model": raw_model_app,
    "raw-model-coalesced": lambda: coalesced(raw_model_app()),
}
KINDS = (*RAW_APPS, "langserve", "full")


def langserve_app() -> FastAPI:
    from langchain_core.output_parsers import StrOutputParser
    from langchain_core.prompts import ChatPromptTemplate
    from langserve import add_routes

    app = FastAPI()
    chain = ChatPromptTemplate.from_messages([("human", "{text}")]) | FixedAnswerChatModel() | StrOutputParser()
    add_routes(app, chain, path="/chain")
    return app


def full_app(data_dir: Path) -> FastAPI:
    os.environ.update({
        "AUTH_JWT_SECRET": BENCH_SECRET, "APP_ENV": "test", "DATA_DIR": str(data_dir),
        "LLM_PROVIDERS": "local", "RATE_LIMIT_TENANT": "100000000/minute",
        "RATE_LIMIT_USER": "100000000/minute", "SCHEDULER_MAX_CONCURRENCY": os.environ.get(
            "SCHEDULER_MAX_CONCURRENCY", "2000"),
    })
    from app.server import create_app
    from chains.providers.models import Provider

    app = create_app()
    services = app.state.services
    # An LLM serving the interaction chain answers with its JSON analysis.
    services.router.providers[:] = [Provider("local", fixed_model(), "bench-fixed")]
    return app


def full_app_from_env() -> FastAPI:
    """The full server for `uvicorn --workers N` (a factory each worker imports)."""
    return full_app(Path(os.environ["BENCH_DATA_DIR"]))


def log_gc_pauses(who: str) -> None:
    """Prints every garbage-collector pause of this process over 20 ms to stderr, with the
    wall clock, so a late event can be matched to the pause that held it; and, at most
    every 2 s, the collector's running totals per generation (passes, ms), so what a
    threshold costs in CPU is read, not guessed."""
    import gc
    import time

    started: list[float] = []
    passes, spent_ms = [0, 0, 0], [0.0, 0.0, 0.0]
    last_total = [time.monotonic()]

    def pauses(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[:] = [time.perf_counter()]
            return
        if not started:
            return
        took, generation = time.perf_counter() - started[0], info["generation"]
        passes[generation] += 1
        spent_ms[generation] += took * 1e3
        if took > 0.02:
            print(f"{who} gc gen{generation} pause {took * 1e3:.0f} ms at {time.time():.2f}, "
                  f"collected {info['collected']}", file=sys.stderr, flush=True)
        if time.monotonic() - last_total[0] > 2:
            last_total[0] = time.monotonic()
            print(f"{who} gc totals at {time.time():.2f}, thresholds {gc.get_threshold()}: passes {passes}, "
                  f"ms {[round(ms) for ms in spent_ms]}", file=sys.stderr, flush=True)

    gc.callbacks.append(pauses)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--data-dir", type=Path, default=Path("var/bench"))
    parser.add_argument("--workers", type=int, default=1, help="full only: uvicorn worker processes")
    args = parser.parse_args()
    # As scripts/run.sh and the Dockerfile start the service: the lean WebSocket protocol
    # unless BENCH_WS names another (auto, wsproto, ...), compression off unless
    # BENCH_WS_DEFLATE=1 (its zlib state is most of an idle session's memory).
    options: dict[str, Any] = {"host": "127.0.0.1", "port": args.port, "log_level": "warning",
                               "access_log": False, "lifespan": "on",
                               "ws_per_message_deflate": os.environ.get("BENCH_WS_DEFLATE") == "1",
                               "ws": os.environ.get("BENCH_WS", "app.api.ws_protocol:LeanWebSocketsProtocol")}
    if args.kind == "full" and args.workers > 1:
        os.environ["BENCH_DATA_DIR"] = str(args.data_dir)
        uvicorn.run("bench.servers:full_app_from_env", factory=True, workers=args.workers, **options)
        return
    app = {**RAW_APPS, "langserve": langserve_app}.get(args.kind)
    if os.environ.get("BENCH_GC_LOG"):
        log_gc_pauses("server")
    uvicorn.run(app() if app else full_app(args.data_dir), **options)


if __name__ == "__main__":
    sys.exit(main())
