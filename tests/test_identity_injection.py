"""Tenant and user come from the token alone, whatever a client puts in config or input."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable

import httpx
import pytest
from langserve.lzstring import LZString

from app.api.access import MAX_CONFIG_HASH_CHARS
from app.api.chains import INSIGHTS_CHAT_PATH, LEAD_SCORING_PATH
from tests.support.fake_openai import FakeOpenAI
from tests.support.payloads import LEAD

SPOOFS = [
    {"configurable": {"tenant_id": "globex", "user_id": "root"}},
    {"configurable": {"crm_run_context": {"identity": {"tenant_id": "globex", "user_id": "root"}}}},
    {"metadata": {"tenant_id": "globex", "user_id": "root"}},
    {"configurable": {"tenant_id": "globex"}, "metadata": {"tenant_id": "globex"}},
]


def spoofed_input() -> dict:
    return {**LEAD, "tenant_id": "globex", "user_id": "root"}


@pytest.mark.parametrize("config", SPOOFS)
def test_spoofed_tenant_in_invoke_is_ignored(client: httpx.Client, config: dict) -> None:
    # SCORING_TENANT_MODELS routes acme to logreg-v1 and everyone else to logreg-v2, so the
    # model version shows which tenant the run really belonged to.
    response = client.post(f"{LEAD_SCORING_PATH}/invoke", json={"input": spoofed_input(), "config": config})
    assert response.status_code in (200, 422), response.text
    if response.status_code == 200:
        assert response.json()["output"]["model_version"] == "logreg-v1"


def test_spoofed_tenant_in_batch_stream_and_config_hash_is_ignored(client: httpx.Client) -> None:
    spoof = SPOOFS[0]
    batch = client.post(
        f"{LEAD_SCORING_PATH}/batch",
        json={"inputs": [spoofed_input(), spoofed_input()], "config": [spoof, spoof]},
    )
    assert [o["model_version"] for o in batch.json()["output"]] == ["logreg-v1", "logreg-v1"]
    with client.stream(
        "POST", f"{LEAD_SCORING_PATH}/stream", json={"input": spoofed_input(), "config": spoof}
    ) as response:
        body = "".join(response.iter_text())
    assert '"model_version":"logreg-v1"' in body.replace(" ", "")
    config_hash = LZString.compressToEncodedURIComponent(json.dumps(spoof))
    hashed = client.post(f"{LEAD_SCORING_PATH}/c/{config_hash}/invoke", json={"input": spoofed_input()})
    assert hashed.status_code in (200, 422)
    if hashed.status_code == 200:
        assert hashed.json()["output"]["model_version"] == "logreg-v1"


def test_a_config_hash_past_the_limit_is_refused_before_it_is_decompressed(client: httpx.Client) -> None:
    """LZString's output grows with the square of its input: a 60 KB path segment took
    1 GB and the loop for 3 s to decompress (a security review). Past the limit a hash is
    refused unread; the playground's own are a few hundred characters."""
    note = "".join(hashlib.sha256(str(i).encode()).hexdigest() for i in range(100))
    long_hash = LZString.compressToEncodedURIComponent(json.dumps({"configurable": {"note": note}}))
    assert len(long_hash) > MAX_CONFIG_HASH_CHARS
    for method, path in (("GET", "input_schema"), ("POST", "invoke")):
        refused = client.request(method, f"{LEAD_SCORING_PATH}/c/{long_hash}/{path}", json={"input": LEAD})
        assert refused.status_code == 422 and "config_hash is at most" in refused.text, refused.text
    short_hash = LZString.compressToEncodedURIComponent(json.dumps({"configurable": {}}))
    assert client.get(f"{LEAD_SCORING_PATH}/c/{short_hash}/input_schema").status_code == 200


def test_other_tenant_cannot_reach_documents_by_spoofing(
    service_url: str, mint: Callable[..., str], openai_provider: FakeOpenAI
) -> None:
    secret = "Acme's renewal hinges on the Orion discount of 37 percent, approved by Dana."
    with httpx.Client(base_url=service_url, timeout=30) as http:
        acme = {"Authorization": f"Bearer {mint('acme', 'alice')}"}
        globex = {"Authorization": f"Bearer {mint('globex', 'gary')}"}
        created = http.post("/api/v1/ai/insights/documents", headers=acme,
                            json={"customer_id": "shared-42", "title": "Orion discount", "text": secret})
        assert created.status_code == 201, created.text
        question = {"customer_id": "shared-42", "question": "What discount was approved?",
                    "tenant_id": "acme"}
        openai_provider.reply = "Dana approved it [1]."  # cites its one source: the final sources name it
        own = http.post(f"{INSIGHTS_CHAT_PATH}/invoke", headers=acme, json={"input": question}).json()
        assert [s["title"] for s in own["output"]["sources"]] == ["Orion discount"]
        assert "37 percent" in json.dumps(openai_provider.requests), "prompt must carry the source"
        openai_provider.requests.clear()
        for config in SPOOFS:
            other = http.post(f"{INSIGHTS_CHAT_PATH}/invoke", headers=globex,
                              json={"input": question, "config": config})
            assert other.status_code in (200, 422)
            if other.status_code == 200:
                output = other.json()["output"]
                assert output["sources"] == [] and "37 percent" not in output["answer"]
        assert openai_provider.requests, "globex's questions did reach the provider"
        assert "37 percent" not in json.dumps(openai_provider.requests)
