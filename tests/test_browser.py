"""The live insights console and the LangServe playground, in a real headless Chromium."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import Select, WebDriverWait

from app.api.chains import INSIGHTS_CHAT_PATH, INTERACTIONS_PATH, LEAD_SCORING_PATH
from tests.support.browser import chromium


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[webdriver.Chrome]:
    with chromium(tmp_path_factory.mktemp("chromium")) as driver:
        yield driver


def test_console_shows_insights_as_they_happen_and_streams_answers(
    browser: webdriver.Chrome, service_url: str, mint: Callable[..., str], tmp_path: Path
) -> None:
    wait = WebDriverWait(browser, 20)
    browser.get(f"{service_url}/console?token={mint('acme', 'rita', roles=('rep',))}")
    assert "token=" not in browser.current_url, "the token left the address bar"
    customer = browser.find_element(By.ID, "customer")
    customer.clear()
    customer.send_keys("browser-1")
    browser.find_element(By.ID, "watch").click()
    wait.until(EC.text_to_be_present_in_element((By.ID, "status"), "watching browser-1"))
    before = browser.get_screenshot_as_png()

    # Another screen (any client of the tenant) analyses an interaction of this customer.
    httpx.post(f"{service_url}{INTERACTIONS_PATH}/invoke", timeout=30,
               headers={"Authorization": f"Bearer {mint('acme', 'sam')}"},
               json={"input": {"customer_id": "browser-1", "channel": "email",
                               "text": "This is the third outage this week. Fix it today or we cancel."}})
    card = wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "#feed .insight")))
    assert "negative" in card.get_attribute("class")
    assert "high urgency" in card.text and "cancellation_risk" in card.text
    assert card.find_elements(By.CSS_SELECTOR, ".recs li"), "recommendations are shown"

    browser.find_element(By.ID, "question").send_keys("What is going on with this customer?")
    browser.find_element(By.ID, "ask").click()
    wait.until(lambda driver: driver.find_element(By.ID, "answer").get_attribute("data-done") == "true")
    answer = browser.find_element(By.ID, "answer").text
    assert len(answer) > 20

    after = browser.get_screenshot_as_png()
    (tmp_path / "console.png").write_bytes(after)
    card_png = card.screenshot_as_png
    assert after != before and len(card_png) > 2_000, "the streamed content is rendered on screen"

    # Another tenant's rep asks from the console too: each tab has a chat session of its
    # own, so nobody is reported as using another tenant's session.
    browser.get(f"{service_url}/console?token={mint('globex', 'gus', roles=('rep',))}")
    browser.find_element(By.ID, "question").send_keys("Any open issues?")
    browser.find_element(By.ID, "ask").click()
    wait.until(lambda driver: driver.find_element(By.ID, "answer").get_attribute("data-done") == "true")
    admin = {"Authorization": f"Bearer {mint('globex', 'gina', roles=('admin',))}"}
    deadline = time.monotonic() + 5  # the cross-tenant check runs after the answer
    while time.monotonic() < deadline:
        kinds = [e["kind"] for e in httpx.get(f"{service_url}/api/v1/ai/security/events", headers=admin,
                                               timeout=10).json()]
        assert "foreign_session" not in kinds, kinds
        time.sleep(0.5)


def test_console_refuses_a_browser_that_is_not_signed_in(browser: webdriver.Chrome, service_url: str) -> None:
    browser.delete_all_cookies()
    browser.get(f"{service_url}/console")
    assert "missing bearer token" in browser.page_source


# Per chain: fields to type into the playground's form, a select to set, and what the
# output panel must show once the run completes.
PLAYGROUND_RUNS = {
    INTERACTIONS_PATH: (
        {"customer_id": "playground-1", "text": "We are thinking about cancelling, the exports keep failing."},
        ("channel", "email"),
        ("cancellation_risk", "recommendations"),
    ),
    LEAD_SCORING_PATH: (
        {"lead_id": "playground-lead", "job_title": "VP Marketing", "pricing_page_views_30d": "6"},
        None,
        ("model_version", "reasoning"),
    ),
    INSIGHTS_CHAT_PATH: (
        {"customer_id": "playground-2", "question": "What do we know about this customer?"},
        None,
        ("sources", "answer"),
    ),
}


@pytest.mark.parametrize("path", list(PLAYGROUND_RUNS))
def test_every_playground_renders_and_runs_for_a_browser_signed_in_with_token(
    browser: webdriver.Chrome, service_url: str, mint: Callable[..., str], tmp_path: Path, path: str
) -> None:
    fields, select, expected = PLAYGROUND_RUNS[path]
    wait = WebDriverWait(browser, 30)
    browser.get(f"{service_url}{path}/playground/?token={mint('acme', 'pat', roles=('rep',))}")
    assert browser.current_url.endswith("/playground/")
    for name, value in fields.items():
        box = wait.until(EC.presence_of_element_located((By.ID, f"#/properties/{name}-input")))
        box.send_keys(value)
    if select is not None:
        name, wanted = select
        choice = Select(browser.find_element(By.ID, f"#/properties/{name}-input"))
        choice.select_by_index(next(i for i, o in enumerate(choice.options)
                                    if wanted in (o.text + (o.get_attribute("value") or ""))))
    start = next(b for b in browser.find_elements(By.TAG_NAME, "button") if b.text == "Start")
    wait.until(lambda _: start.is_enabled())
    start.click()
    # The playground streams through stream_log with the session cookie; the output
    # panel fills once the run completes.
    wait.until(lambda driver: all(word in driver.find_element(By.TAG_NAME, "body").text for word in expected))
    browser.save_screenshot(str(tmp_path / "playground.png"))
