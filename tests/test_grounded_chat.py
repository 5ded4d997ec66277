"""Grounded chat through the HTTP chain: cited sources only, checked citations, the
customer's own document over a tenant policy, "nothing found", and an index that
follows writes made by another replica. (Answer quality is measured by `eval.chat`.)"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from sqlalchemy import event

from app.store.database import create_engine, database_url, migrate
from app.store.knowledge import KnowledgeBase
from chains.local.composer import NOT_FOUND
from chains.retrieval import tokenize
from tests.support.fake_openai import FakeOpenAI
from tests.support.stores import keyring_for
from tests.test_memory_and_knowledge import ask, auth, start

DOCUMENTS = [
    ("c-bakery", "Renewal call notes, Oct. 3", "Call with Maria Lopez of Bright Bakery Co. on Oct. 3. "
     "Before they renew on Jan. 15, 2025 they need SSO with Okta and an onboarding session for the "
     "two new store managers. Maria is the decision maker; her CFO signs anything above $5,000."),
    ("c-bakery", "Duplicate email incident", "Ticket NL-1187: the spring promo went out twice on Apr. 9. "
     "We apologised and offered a 15% credit on the May invoice. Maria accepted the credit on Apr. 11."),
    ("c-bakery", "Service agreement No. 42", "Either party may terminate for convenience with sixty (60) "
     "days' written notice. No early termination fee applies after the sixth month."),
    (None, "Notice & Cancellation Policy", "Monthly retainers can be cancelled with 30 days' written "
     "notice before the next billing date. Annual contracts renew automatically."),
    ("c-gym", "Ironleaf call notes", "Ironleaf Fitness got a 10% credit after the DNS outage in March. "
     "Marcus Greene decides on the renewal."),
]


def add_documents(http: httpx.Client, headers: dict[str, str]) -> None:
    for customer, title, text in DOCUMENTS:
        body = {"title": title, "text": text} | ({"customer_id": customer} if customer else {})
        assert http.post("/api/v1/ai/insights/documents", headers=headers, json=body).status_code == 201


@contextmanager
def answered_by_a_model(
    tmp_path: Path, openai_url: str, provider: FakeOpenAI, reply: str
) -> Iterator[tuple[httpx.Client, dict[str, str]]]:
    """A served app whose chat answers come from the fake provider, with `DOCUMENTS` added."""
    provider.reply = reply
    settings, server = start(tmp_path, None, openai_url)
    rep = auth(settings, "northwind-co")
    with server as url, httpx.Client(base_url=url, timeout=30) as http:
        add_documents(http, rep)
        yield http, rep


def cited(answer: str) -> list[int]:
    return list(dict.fromkeys(int(n) for group in re.findall(r"\[([\d, ]+)\]", answer) for n in group.split(",")))


def titles(output: dict) -> list[str]:
    return [source["title"] for source in output["sources"]]


def test_local_answers_cite_only_what_they_use_and_prefer_the_customers_own_terms(tmp_path: Path) -> None:
    settings, server = start(tmp_path, None)
    rep = auth(settings, "northwind-co")
    with server as url, httpx.Client(base_url=url, timeout=30) as http:
        add_documents(http, rep)
        notice = ask(http, rep, "c-bakery", "how much notice to terminate their agreement?")
        offer = ask(http, rep, "c-bakery", "what credit did we offer for the duplicate promo email?")
        unknown = ask(http, rep, "c-bakery", "which payroll software do they use?", session="s2")
        other = ask(http, rep, "c-gym", "what credit did we offer for the duplicate promo email?", session="s3")
    # The general policy says 30 days; the customer's own agreement says sixty.
    assert "sixty (60)" in notice["answer"] and "30 days" not in notice["answer"]
    assert titles(notice) == ["Service agreement No. 42"]
    for output in (notice, offer, other):
        assert [s["citation"] for s in output["sources"]] == cited(output["answer"]), "sources = what it cites"
    assert set(titles(offer)) <= {"Duplicate email incident"}
    assert unknown["answer"] == NOT_FOUND and unknown["sources"] == []
    assert "15%" not in other["answer"], "another customer's incident never answers"


def test_when_the_customers_own_document_answers_first_a_differing_policy_is_not_shown_beside_it(
    tmp_path: Path,
) -> None:
    """The own document's sentence ranked first, and the tenant policy's, giving an answer
    of the same kind (another number of days, of sessions), came along as a second answer."""
    settings, server = start(tmp_path, None)
    rep = auth(settings, "northwind-co")
    with server as url, httpx.Client(base_url=url, timeout=30) as http:
        for customer, title, text in [
            (None, "Onboarding checklist", "Step 3 - Setup: we import the contact lists and build the templates. "
             "Step 4 - Training: 2 live MailCrest training sessions of 60 minutes each, recorded."),
            ("c-olsen", "Kickoff notes - Olsen Reyes", "Kickoff with Dana on May 2. Per the signed SOW the firm "
             "gets 5 MailCrest training sessions instead of the usual 2, because four paralegals will run the "
             "newsletter."),
            (None, "Notice & Cancellation Policy", "Clients may end a retainer with 30 days' written notice before "
             "the renewal date. Pausing: services may be paused once per term, for up to 60 days."),
            ("c-olsen", "Olsen Reyes amendment", "Notwithstanding the standard policies, Olsen Reyes may prevent "
             "renewal by written notice no less than ninety (90) days before the end of the term. Olsen Reyes may "
             "pause the newsletter for up to 120 days each summer."),
        ]:
            body = {"title": title, "text": text} | ({"customer_id": customer} if customer else {})
            assert http.post("/api/v1/ai/insights/documents", headers=rep, json=body).status_code == 201
        asked = {question: ask(http, rep, "c-olsen", question, session=f"s{n}") for n, question in enumerate([
            "how many mailcrest trainings do they get", "how many days notice to stop the renewal?",
            "how long can they pause for?"])}
    for question, expected in zip(asked, ["5 MailCrest training sessions", "ninety (90) days", "120 days"], strict=True):
        output = asked[question]
        assert expected in output["answer"], (question, output["answer"])
        assert set(titles(output)) <= {"Kickoff notes - Olsen Reyes", "Olsen Reyes amendment"}, (question, output["answer"])
        assert [s["citation"] for s in output["sources"]] == cited(output["answer"])


def test_the_customers_name_in_a_question_does_not_outweigh_the_policy_that_answers(tmp_path: Path) -> None:
    """The customer's documents say nothing of keeping files or of P1 response times; the
    name in the question drew the search and the answer to their sentences that name the
    customer ("Client: Juniper Florist LLC"), and the tenant's policy that answers was
    refused (the contract: a tenant-wide document answers where the customer's own say
    nothing)."""
    settings, server = start(tmp_path, None)
    rep = auth(settings, "northwind-co")
    with server as url, httpx.Client(base_url=url, timeout=30) as http:
        for customer, title, text in [
            ("c-juniper", "Order form - Juniper Florist", "Client: Juniper Florist LLC, 14 Elm Row, Salem, MA 01970.\n"
             "Project Fee: $8,400 (fixed), for a new storefront and a spring catalogue.\n"
             "Signed for Client: Ada Moreno, Owner, May 2."),
            ("c-juniper", "Juniper Florist kickoff notes", "Kickoff with Juniper Florist on May 2. Ada wants the "
             "spring catalogue live before Mother's Day. Weekly check-ins on Tuesdays."),
            ("c-juniper", "Addendum No. 1 (Juniper Florist LLC)", "Two extra landing pages for Juniper Florist at "
             "$600 each, billed with the storefront."),
            ("c-harbor", "Harbor Dental call notes", "Call with Harbor Dental on May 2 about monthly reporting. "
             "They want the storefront promo moved to Tuesdays."),
            (None, "Data retention policy", "When a client leaves, we keep their files and ad accounts for 90 days, "
             "then delete them."),
            (None, "Support hours", "P1 incidents get a first response within 4 business hours."),
        ]:
            body = {"title": title, "text": text} | ({"customer_id": customer} if customer else {})
            assert http.post("/api/v1/ai/insights/documents", headers=rep, json=body).status_code == 201
        kept = ask(http, rep, "c-juniper", "how long do we keep juniper florist's files after they leave?",
                   session="s1")
        p1 = ask(http, rep, "c-juniper", "P1 response time for juniper florist", session="s2")
        signed = ask(http, rep, "c-juniper", "who signed for juniper florist?", session="s3")
    assert "90 days" in kept["answer"] and titles(kept) == ["Data retention policy"], kept
    assert "4 business hours" in p1["answer"] and titles(p1) == ["Support hours"], p1
    # Where the customer's own document answers, the name is no loss.
    assert "Ada Moreno" in signed["answer"] and titles(signed) == ["Order form - Juniper Florist"], signed


async def test_a_long_documents_title_does_not_make_its_words_the_customers_name(tmp_path: Path) -> None:
    """The index joins a document's title to each of its chunks: counted once per chunk,
    the capitals of a 7-chunk "Hourly Rate Schedule" outweighed "rate" written in lower
    case across the customer's notes, and "what is the hourly rate" was searched as
    "what is the hourly" (a review)."""
    engine = create_engine(database_url(None, tmp_path / "kb.sqlite3"))
    await migrate(engine)
    knowledge = KnowledgeBase(engine, keyring_for(engine))
    schedule = " ".join(f"Line {i} of the schedule lists the standard hourly amount for task {i}." for i in range(60))
    try:
        for customer, title, text in [
            ("acme", "Hourly Rate Schedule", schedule + " The rate applies to all Acme work."),
            ("acme", "Kickoff notes", "Acme agreed the rate with us. The rate is fixed for a year."),
            ("acme", "Call notes", "Acme asked about the rate again, and the rate went up."),
            (None, "Rush policy", "Rush jobs carry a 25% surcharge."),
            ("other", "Other notes", "Nothing here."),
        ]:
            await knowledge.add_document(tenant_id="t", user_id="u", customer_id=customer, title=title, text=text)
        found = await knowledge.find(tenant_id="t", customer_id="acme", query="what is the hourly rate for acme")
    finally:
        await engine.dispose()
    assert found.subject == frozenset(tokenize(["Acme"])[0]), found.subject


def test_a_document_uploaded_twice_is_one_passage(tmp_path: Path) -> None:
    """Both copies were retrieved, took two of the places other documents could have
    had, and the answer said the same sentence twice, cited [1] and [2]."""
    settings, server = start(tmp_path, None)
    rep = auth(settings, "northwind-co")
    with server as url, httpx.Client(base_url=url, timeout=30) as http:
        add_documents(http, rep)
        agreement = next(text for customer, title, text in DOCUMENTS if title == "Service agreement No. 42")
        assert http.post("/api/v1/ai/insights/documents", headers=rep, json={
            "customer_id": "c-bakery", "title": "Service agreement No. 42 (scan)", "text": agreement},
        ).status_code == 201
        output = ask(http, rep, "c-bakery", "how much notice to terminate their agreement?")
    assert output["answer"].count("sixty (60)") == 1, output["answer"]
    assert len(titles(output)) == 1 and titles(output)[0].startswith("Service agreement No. 42")


def test_bracketed_numbers_inside_a_document_cite_nothing(tmp_path: Path) -> None:
    """A document's own "[2]" is not a citation: quoted in an answer it would name another
    passage as a source, or be removed as the model's invented one."""
    settings, server = start(tmp_path, None)
    rep = auth(settings, "northwind-co")
    with server as url, httpx.Client(base_url=url, timeout=30) as http:
        add_documents(http, rep)
        assert http.post("/api/v1/ai/insights/documents", headers=rep, json={
            "customer_id": "c-bakery", "title": "Renewal terms",
            "text": "The renewal fee for Bright Bakery is $500 per year [2]. Discounts are in clause [3]."},
        ).status_code == 201
        output = ask(http, rep, "c-bakery", "What is the renewal fee?")
    assert "$500 per year (2)" in output["answer"], output["answer"]
    assert titles(output) == ["Renewal terms"] and output["removed_citations"] == []
    assert [s["citation"] for s in output["sources"]] == cited(output["answer"])


TICKET = {"customer_id": "c-bakery", "title": "Ticket NL-2040",
          "text": "Ticket #NL-2040 - [P2] Landing page down - Bright Bakery Co\n"
                  "Opened: May 2, 2024, 8:05 a.m. by Maria Lopez\n"
                  "Logged by: Sam Kowalski (support)\n"
                  "Status: Closed on May 3, 2024"}


def test_a_bare_follow_up_reaches_the_model_with_its_passages_line_by_line(
    tmp_path: Path, fake_openai: tuple[FakeOpenAI, str], openai_provider: FakeOpenAI,
) -> None:
    with answered_by_a_model(tmp_path, fake_openai[1], openai_provider, "Sam Kowalski logged it [1].") as (http, rep):
        assert http.post("/api/v1/ai/insights/documents", headers=rep, json=TICKET).status_code == 201
        ask(http, rep, "c-bakery", "when was the landing page ticket opened?", session="s7")
        logged = ask(http, rep, "c-bakery", "and who logged it", session="s7")
    sources = str(openai_provider.requests[-1]["messages"][-1]["content"])  # type: ignore[index]
    # "and who logged it" resembles no passage by itself; the question it follows does.
    assert "Logged by: Sam Kowalski (support)" in sources and titles(logged) == ["Ticket NL-2040"]
    # The header has no period: were lines joined, it would run into the "Opened:" line
    # and the local answer would quote both as one sentence.
    assert "Bright Bakery Co\nOpened: May 2, 2024" in sources


def test_shorthand_and_its_spelled_out_words_are_one_search_term() -> None:
    assert tokenize(["appts in Sept. w/ the mgmt fee, $349/mo"]) == tokenize(
        ["Appointments in September with the management fee, $349/month"])
    assert "renew" in tokenize(["auto-renews on Mar. 1"])[0], "a renewal question still finds auto-renewal"
    assert tokenize(["HR in St. Louis, MO; info@acme.com"])[0] == ["hr", "st", "loui", "mo", "info", "acm", "com"]
    # Case-insensitive matching reaches beyond ASCII ("İ" matches "i"): such a word stays as written.
    assert tokenize(["Write to İNFO@x.com by FRİDAY"])[0][:1] == ["write"]


async def test_a_tie_in_fused_rank_goes_to_the_chunk_nearer_each_lists_best(tmp_path: Path) -> None:
    engine = create_engine(database_url(None, tmp_path / "kb.sqlite3"))
    await migrate(engine)
    knowledge = KnowledgeBase(engine, keyring_for(engine))
    try:
        for customer, title, text in DOCUMENTS:  # older than the ticket
            await knowledge.add_document(tenant_id="t", user_id="u", customer_id=customer, title=title, text=text)
        await knowledge.add_document(tenant_id="t", user_id="u", customer_id="c-bakery", title=TICKET["title"],
                                     text=TICKET["text"])
        found = await knowledge.search(tenant_id="t", customer_id="c-bakery",
                                       query="when was the landing page ticket opened?")
        # The incident is first by meaning by a hair, the ticket first by words by far:
        # their reciprocal ranks tie, and the ticket's scores are nearer each list's best.
        assert [p.title for p in found[:2]] == ["Ticket NL-2040", "Duplicate email incident"]
    finally:
        await engine.dispose()


def test_unknown_citations_of_a_model_are_removed_and_reported(
    tmp_path: Path, fake_openai: tuple[FakeOpenAI, str], openai_provider: FakeOpenAI,
) -> None:
    reply = "They were offered a 15% credit [1] and a free audit [7]. It renews in January [1, 9]."
    with answered_by_a_model(tmp_path, fake_openai[1], openai_provider, reply) as (http, rep):
        with http.stream("POST", "/api/v1/ai/insights/chat/stream", headers=rep, json={
            "input": {"customer_id": "c-bakery", "question": "what did we offer after the duplicate email?"}
        }) as response:
            chunks = [json.loads(line[5:]) for line in response.iter_lines() if line.startswith("data:")]
        output = ask(http, rep, "c-bakery", "what did we offer after the duplicate email?")
    streamed = "".join(chunk.get("answer", "") for chunk in chunks if isinstance(chunk, dict))
    assert streamed == output["answer"], "an unknown number never reaches the client, not even for a moment"
    assert output["answer"] == "They were offered a 15% credit [1] and a free audit. It renews in January [1]."
    assert output["removed_citations"] == [7, 9]
    assert [s["citation"] for s in output["sources"]] == [1]
    prompt = str(openai_provider.requests[-1]["messages"])
    assert "Duplicate email incident (this customer)" in prompt, "the model is told whose document it is"


async def test_an_index_follows_writes_made_through_another_replica(tmp_path: Path) -> None:
    engine = create_engine(database_url(None, tmp_path / "kb.sqlite3"))
    await migrate(engine)
    reader, writer = KnowledgeBase(engine, keyring_for(engine)), KnowledgeBase(engine, keyring_for(engine))
    try:
        first = await writer.add_document(tenant_id="t", user_id="u", customer_id="c", title="Seats",
                                          text="They want 40 seats for Berlin.")
        assert [p.text for p in await reader.search(tenant_id="t", customer_id="c", query="berlin seats")] == [
            "They want 40 seats for Berlin."]
        await writer.replace_document(tenant_id="t", document_id=first.document_id, customer_id="c",
                                      title="Seats", text="They want 55 seats for Munich.")
        assert [p.text for p in await reader.search(tenant_id="t", customer_id="c", query="munich seats")] == [
            "They want 55 seats for Munich."]
        await writer.delete_document(tenant_id="t", document_id=first.document_id)
        assert await reader.search(tenant_id="t", customer_id="c", query="munich seats") == []
    finally:
        await engine.dispose()


async def test_a_burst_of_one_tenants_searches_costs_two_revision_reads(tmp_path: Path) -> None:
    """Every analysis asks whether its tenant's knowledge changed: 500 streams opened at
    once queued that many reads for the connection pool, and some failed waiting."""
    engine = create_engine(database_url(None, tmp_path / "kb.sqlite3"))
    await migrate(engine)
    revision_reads = [0]
    event.listen(engine.sync_engine, "before_cursor_execute",
                 lambda _c, _cur, statement, *_: revision_reads.__setitem__(0, revision_reads[0] + (
                     "FROM knowledge_revisions" in statement)))
    reader, writer = KnowledgeBase(engine, keyring_for(engine)), KnowledgeBase(engine, keyring_for(engine))
    try:
        await writer.add_document(tenant_id="t", user_id="u", customer_id="c", title="Seats",
                                  text="They want 40 seats for Berlin.")
        revision_reads[0] = 0
        found = await asyncio.gather(*(reader.search(tenant_id="t", customer_id="c", query="berlin seats")
                                       for _ in range(50)))
        assert revision_reads[0] <= 2, f"{revision_reads[0]} revision reads for 50 concurrent searches"
        assert all([p.text for p in passages] == ["They want 40 seats for Berlin."] for passages in found)
    finally:
        await engine.dispose()


async def test_documents_without_a_searchable_word_are_still_found_by_meaning(tmp_path: Path) -> None:
    engine = create_engine(database_url(None, tmp_path / "kb.sqlite3"))
    await migrate(engine)
    knowledge = KnowledgeBase(engine, keyring_for(engine))
    try:
        await knowledge.add_document(tenant_id="t", user_id="u", customer_id="c", title="A", text="It is. Is it?")
        found = await knowledge.search(tenant_id="t", customer_id="c", query="is it")
        assert [p.text for p in found] == ["It is. Is it?"]
    finally:
        await engine.dispose()
