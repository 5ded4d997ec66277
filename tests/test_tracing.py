"""OpenTelemetry tracing through the production path: the real app and its middleware on a
real server, spans caught by the SDK's in-memory exporter (README, "Tracing")."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from app.api.chains import INSIGHTS_CHAT_PATH, INTERACTIONS_PATH
from app.core.auth import TokenVerifier
from app.server import create_app
from chains.spans import NO_TRACER
from tests.conftest import make_settings
from tests.support.fake_openai import FakeOpenAI
from tests.support.feeds import RESUME_FROM, break_the_replay, close_of
from tests.support.live_server import live_server
from tests.support.payloads import INTERACTION, QUESTION

CHAIN_SPANS = {"run", "queue_wait", "provider_call", "publish"}
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


@dataclass
class Service:
    url: str
    app: FastAPI
    exporter: InMemorySpanExporter
    verifier: TokenVerifier

    def token(self, roles: tuple[str, ...] = ("rep",)) -> str:
        return self.verifier.mint(tenant_id="acme", user_id="alice", roles=roles, ttl_s=600)

    def request_spans(self, path: str, timeout_s: float = 10.0) -> list[ReadableSpan]:
        """Every span of the one traced request to `path` (its server span ends after the
        client has the response, so wait for it)."""
        deadline = time.monotonic() + timeout_s
        while True:
            self.app.state.tracing.force_flush()
            spans = list(self.exporter.get_finished_spans())
            servers = [s for s in spans if s.kind == SpanKind.SERVER and s.attributes.get("http.route") == path]
            if servers or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        assert len(servers) == 1, [s.name for s in spans]
        trace_id = servers[0].context.trace_id
        return [s for s in spans if s.context.trace_id == trace_id]


def one(spans: list[ReadableSpan], name: str, **attributes: object) -> ReadableSpan:
    found = [s for s in spans if s.name == name and all(s.attributes.get(k) == v for k, v in attributes.items())]
    assert len(found) == 1, (name, attributes, [(s.name, dict(s.attributes or {})) for s in spans])
    return found[0]


def parent_of(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory, fake_openai: tuple[FakeOpenAI, str]) -> Iterator[Service]:
    _, openai_url = fake_openai
    settings = make_settings(
        tmp_path_factory.mktemp("traced"), tracing_enabled=True,
        llm_providers="openai,local", openai_base_url=openai_url, openai_api_key="sk-test",
        openai_model="fake-gpt", llm_max_retries=0, llm_first_token_timeout_s=2.0, llm_idle_timeout_s=2.0,
    )
    exporter = InMemorySpanExporter()
    app = create_app(settings, span_exporter=exporter)
    with live_server(app) as url:
        yield Service(url, app, exporter, TokenVerifier(settings))


@pytest.fixture
def service(traced: Service, openai_provider: FakeOpenAI) -> Service:
    traced.exporter.clear()
    return traced


def assert_chain_trace(spans: list[ReadableSpan], path: str, token: str) -> None:
    server = one(spans, f"POST {path}")
    assert server.kind == SpanKind.SERVER and (server.parent is None or server.parent.is_remote)
    auth = one(spans, "auth")
    assert parent_of(auth) == server.context.span_id
    assert auth.attributes["ai.tenant_id"] == "acme" and auth.status.status_code == StatusCode.UNSET

    run = one(spans, "run", **{"ai.chain": "interactions", "ai.tenant_id": "acme", "ai.outcome": "ok"})
    assert parent_of(run) == server.context.span_id  # through LangServe's endpoint and generators
    queue = one(spans, "queue_wait", **{"ai.queue.priority": "high", "ai.queue.outcome": "granted"})
    call = one(spans, "provider_call", **{"ai.provider": "openai", "ai.model": "fake-gpt", "ai.failover_attempt": 1})
    publish = one(spans, "publish", **{"ai.chain": "interactions", "ai.tenant_id": "acme"})
    for child in (queue, call, publish):
        assert parent_of(child) == run.context.span_id
    assert call.status.status_code == StatusCode.UNSET and call.attributes["ai.tokens_out"] > 0
    [first_token] = [event for event in call.events if event.name == "first_model_token"]
    # Where the time went, in order: auth, queue, the provider (first token inside it), publish.
    assert auth.end_time <= run.start_time <= queue.start_time <= queue.end_time <= call.start_time
    assert call.start_time <= first_token.timestamp <= call.end_time <= publish.start_time <= run.end_time
    assert run.end_time <= server.end_time
    # Attributes name the run, never its content or credentials.
    for span in spans:
        for value in (span.attributes or {}).values():
            assert token not in str(value) and "outage" not in str(value) and "Bearer" not in str(value)


def test_invoke_spans_nest_under_the_request_span(service: Service) -> None:
    token = service.token()
    path = f"{INTERACTIONS_PATH}/invoke"
    response = httpx.post(
        service.url + path, json={"input": INTERACTION}, timeout=30,
        headers={"Authorization": f"Bearer {token}", "traceparent": f"00-{TRACE_ID}-00f067aa0ba902b7-01"},
    )
    assert response.status_code == 200, response.text
    assert response.json()["output"]["degraded"] is False
    spans = service.request_spans(path)
    assert_chain_trace(spans, path, token)
    # The caller's W3C trace context is continued.
    assert {format(span.context.trace_id, "032x") for span in spans} == {TRACE_ID}
    # No per-message ASGI send/receive spans: a stream would make one per chunk.
    assert not [s for s in spans if s.name.endswith((" http send", " http receive"))]


def test_stream_spans_nest_under_the_request_span(service: Service) -> None:
    token = service.token()
    path = f"{INTERACTIONS_PATH}/stream"
    with httpx.stream("POST", service.url + path, json={"input": INTERACTION}, timeout=30,
                      headers={"Authorization": f"Bearer {token}"}) as response:
        body = response.read().decode()
    assert response.status_code == 200 and "event: end" in body and "event: error" not in body
    assert_chain_trace(service.request_spans(path), path, token)


def test_failover_is_one_provider_call_per_provider(service: Service, openai_provider: FakeOpenAI) -> None:
    openai_provider.mode = "error_401"  # not transient: the router moves on to `local` at once
    path = f"{INSIGHTS_CHAT_PATH}/invoke"
    response = httpx.post(service.url + path, json={"input": QUESTION}, timeout=30,
                          headers={"Authorization": f"Bearer {service.token()}"})
    assert response.status_code == 200, response.text
    spans = service.request_spans(path)
    run = one(spans, "run", **{"ai.chain": "insights"})
    failed = one(spans, "provider_call", **{"ai.provider": "openai", "ai.failover_attempt": 1})
    served = one(spans, "provider_call", **{"ai.provider": "local", "ai.failover_attempt": 2})
    assert failed.status.status_code == StatusCode.ERROR and str(failed.attributes["error.type"]).endswith("AuthenticationError")
    assert not [e for e in failed.events if e.name == "first_model_token"]
    assert served.status.status_code == StatusCode.UNSET
    assert [e.name for e in served.events] == ["first_model_token"]
    assert parent_of(failed) == parent_of(served) == run.context.span_id
    assert failed.end_time <= served.start_time


def test_a_refused_token_is_a_failed_auth_span_and_no_chain_spans(service: Service) -> None:
    other = TokenVerifier(make_settings(Path("/nonexistent"), auth_jwt_secret="another-secret-long-enough-0123456789abcdef"))
    token = other.mint(tenant_id="acme", user_id="alice", roles=("rep",), ttl_s=600)
    path = f"{INTERACTIONS_PATH}/invoke"
    response = httpx.post(service.url + path, json={"input": INTERACTION}, timeout=30,
                          headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401
    spans = service.request_spans(path)
    auth = one(spans, "auth")
    assert auth.status.status_code == StatusCode.ERROR
    assert auth.attributes["error.type"] == "Unauthenticated" and "ai.tenant_id" not in auth.attributes
    assert not {s.name for s in spans} & CHAIN_SPANS
    assert one(spans, f"POST {path}").attributes["http.status_code"] == 401


def test_a_sign_in_token_in_the_query_never_reaches_a_trace(service: Service) -> None:
    token = service.token()
    path = f"{INTERACTIONS_PATH}/playground/{{file_path:path}}"
    response = httpx.get(f"{service.url}{INTERACTIONS_PATH}/playground/?token={token}", timeout=30)
    assert response.status_code == 303
    deadline = time.monotonic() + 10
    while not (spans := list(service.exporter.get_finished_spans())) and time.monotonic() < deadline:
        service.app.state.tracing.force_flush()
        time.sleep(0.02)
    assert spans, path
    values = [str(value) for span in spans for value in (span.attributes or {}).values()]
    assert not [value for value in values if token in value]
    assert any("token=REDACTED" in value for value in values)


def test_an_unhandled_error_reaches_the_trace_by_its_type_only(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug whose message quotes the customer's text: the FastAPI instrumentation records
    the exception (message, stack trace) on the request span; what is exported names its
    type only."""
    secret = "my card number is 4111-1111-1111-1111"

    async def broken(messages: object, **kwargs: object) -> AsyncIterator[str]:
        raise RuntimeError(f"could not handle: {secret}")
        yield ""  # an async generator, as the router's method is

    monkeypatch.setattr(service.app.state.services.router, "astream_text", broken)
    path = f"{INSIGHTS_CHAT_PATH}/invoke"
    response = httpx.post(service.url + path, json={"input": QUESTION}, timeout=30,
                          headers={"Authorization": f"Bearer {service.token()}"})
    assert response.status_code == 500 and secret not in response.text
    spans = service.request_spans(path)
    exceptions = [event for span in spans for event in span.events if event.name == "exception"]
    assert exceptions, "the instrumentation did record the exception"
    assert all(dict(event.attributes or {}) == {"exception.type": "RuntimeError"} for event in exceptions)
    exported = repr([(dict(s.attributes or {}), s.status.description, [dict(e.attributes or {}) for e in s.events])
                     for s in spans])
    assert secret not in exported and "Traceback" not in exported


@pytest.mark.parametrize("transport", ["websocket", "sse"])
def test_a_failed_feed_marks_its_request_span_failed_by_the_errors_type(
    service: Service, monkeypatch: pytest.MonkeyPatch, transport: str
) -> None:
    """A feed answers its own failure (close 1011, an SSE `error` event) instead of letting
    it reach the instrumentation, so it marks the span itself, by type: the message stays out."""
    break_the_replay(monkeypatch, service.app, "replay broke on acme:c-1's events")
    if transport == "websocket":
        code, _ = asyncio.run(close_of(service.url, service.token(), f"/ws/ai/insights/c-1?last_event_id={RESUME_FROM}"))
        assert code == 1011
        route = "/ws/ai/insights/{customer_id}"
    else:
        response = httpx.get(f"{service.url}/api/v1/ai/stream/insights/c-1?last_event_id={RESUME_FROM}",
                             headers={"Authorization": f"Bearer {service.token()}"}, timeout=30)
        assert response.text.startswith("event: error"), response.text
        route = "/api/v1/ai/stream/insights/{customer_id}"
    [server] = [s for s in service.request_spans(route) if s.kind == SpanKind.SERVER]
    assert server.status.status_code == StatusCode.ERROR and server.attributes["error.type"] == "RuntimeError"
    assert "replay broke" not in repr((dict(server.attributes or {}), server.status.description))


def test_tracing_is_off_by_default(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    assert settings.tracing_enabled is False
    exporter = InMemorySpanExporter()
    app = create_app(settings, span_exporter=exporter)
    services = app.state.services
    assert not app.state.tracing.enabled and app.state.tracing.provider is None
    assert services.tracer is NO_TRACER and services.router.tracer is NO_TRACER
    assert not getattr(app, "_is_instrumented_by_opentelemetry", False)
    verifier = TokenVerifier(settings)
    token = verifier.mint(tenant_id="acme", user_id="alice", roles=("rep",), ttl_s=600)
    with live_server(app) as url:
        response = httpx.post(f"{url}{INTERACTIONS_PATH}/invoke", json={"input": INTERACTION}, timeout=30,
                              headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 200, response.text
        stack, layers = app.middleware_stack, []
        while stack is not None:
            layers.append(type(stack).__module__)
            stack = getattr(stack, "app", None)
    assert layers and not [module for module in layers if module.startswith("opentelemetry")]
    app.state.tracing.force_flush()
    assert exporter.get_finished_spans() == ()
