"""The review console in headless Chromium (Debian's `chromium`, driven by Playwright): sign in
with a token, submit a small copy of the example manifest, watch it finish, play a take,
re-render one script with another voice, compare the two takes, publish it by keyboard alone,
and check the job page at phone width. A screenshot of the job page is kept in
`test-artifacts/` at the repository's root (ignored by git)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from rime_local.server import RunningEngine
from tests.fixtures.service import Service
from tests.fixtures.services import in_ci

ServiceFactory = Callable[..., Service]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
CHROMIUM = os.environ.get("RIME_BATCH_TEST_CHROMIUM", "/usr/bin/chromium")
PHONE_WIDTH = 375
SLOW_MS = 1500

# Two of jobs.example.yaml's prompts at its telephony settings, as 16-bit WAV so every browser
# plays them (the example's wav-mulaw as well, checked below).
MANIFEST = """\
job: clinic-demo
output: out/example
defaults:
  speaker: cove
  modelId: mistv2
  lang: eng
  samplingRate: 8000
  formats: [wav, wav-mulaw]
  pause_ms: 250
  loudness_lufs: -20
scripts:
  - id: ivr/welcome
    text: >-
      Thank you for calling Riverside Family Clinic. <400>
      If this is a medical emergency, please hang up and dial 911.
  - id: ivr/hold
    text: Please stay on the line.
    speed: 0.95
"""


def _missing(message: str) -> None:
    if in_ci():
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture
def browser() -> Iterator[Any]:
    """Headless Chromium; missing, the test skips (and fails under CI=true)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("playwright is not installed (pip install -e '.[test]')")
    if shutil.which(CHROMIUM) is None:
        _missing(f"{CHROMIUM} is not installed (apt-get install -y chromium)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=["--autoplay-policy=no-user-gesture-required", "--no-sandbox"],
        )
        try:
            yield launched
        finally:
            launched.close()


def _sign_in(page: Any, service: Service, token: str) -> None:
    page.goto(f"{service.base_url}/jobs")
    assert page.url.endswith("/login")  # no session: sent to sign in
    page.get_by_label("API token").fill(token)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{service.base_url}/")


def _wait_done(page: Any, timeout_ms: int = 90_000) -> None:
    # The page polls the job and reloads once when it has settled.
    page.wait_for_function(
        "() => { const s = document.querySelector('#job-status');"
        " return s && s.dataset.live === 'no' && s.dataset.state === 'done'; }",
        timeout=timeout_ms,
    )


def _play(page: Any, index: int) -> float:
    """Play the page's `index`th player; the duration it reports."""
    duration: float = page.evaluate(
        """async (i) => {
            const a = document.querySelectorAll('audio')[i];
            if (a.readyState < 1) {
                await new Promise((ok, bad) => {
                    a.addEventListener('loadedmetadata', ok, {once: true});
                    a.addEventListener('error', () => bad(new Error('audio error ' +
                        (a.error && a.error.code))), {once: true});
                    a.load();
                });
            }
            await a.play();
            await new Promise(ok => setTimeout(ok, 200));
            a.pause();
            return a.duration;
        }""",
        index,
    )
    return duration


def _tab_to(page: Any, element_id: str, limit: int = 60) -> int:
    """Press Tab until the element with `element_id` has the focus; how many presses."""
    page.evaluate("() => document.activeElement && document.activeElement.blur()")
    for presses in range(1, limit + 1):
        page.keyboard.press("Tab")
        if page.evaluate("() => document.activeElement && document.activeElement.id") == element_id:
            return presses
    raise AssertionError(f"#{element_id} was not reached with {limit} Tabs")


def test_review_a_job_in_the_browser(
    browser: Any,
    service_factory: ServiceFactory,
    sqlite_url: str,
    engine_factory: Callable[..., RunningEngine],
) -> None:
    # An engine slow to answer, so the pages are seen while the jobs run.
    slow = engine_factory(ttfb_ms=SLOW_MS)
    service = service_factory(sqlite_url, RIME_API_URL=slow.http_url)
    token = service.token()
    manifest = service.root / "clinic.yaml"
    manifest.write_text(MANIFEST, encoding="utf-8")
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    page = context.new_page()
    _sign_in(page, service, token)
    assert "Sign out" in page.content() and token not in page.content()

    # Submit the manifest by the form; the job page shows it running, then done.
    page.get_by_label("Manifest file (YAML, JSON or CSV)").set_input_files(str(manifest))
    page.get_by_label("File name", exact=False).fill("clinic.yaml")
    page.get_by_role("button", name="Submit job").click()
    page.wait_for_url("**/jobs/*")
    first_job = page.url.split("/jobs/")[1].split("?")[0]
    assert page.locator("#job-status").get_attribute("data-live") == "yes"

    # The jobs list follows it live, without reloading.
    page.get_by_role("link", name="Jobs").click()
    row = page.locator(f'tr[data-job="{first_job}"]')
    assert row.locator(".state").inner_text() in ("pending", "running")
    page.evaluate("() => { window.notReloaded = true; }")
    page.wait_for_function(
        "(id) => window.notReloaded && document.querySelector("
        "`tr[data-job='${id}'] .state`).textContent === 'done'",
        arg=first_job,
        timeout=90_000,
    )
    row.get_by_role("link", name=first_job).click()
    _wait_done(page)
    assert page.locator("#job-status").get_attribute("data-state") == "done"
    assert "published" in page.locator("#job-status").inner_text()  # auto-published
    assert page.locator("audio").count() == 4  # two scripts, two formats each
    assert _play(page, 0) > 0.5
    assert _play(page, 1) > 0.5  # the example's wav-mulaw plays too
    assert "LUFS" in page.locator("section.script").first.inner_text()

    # Re-render one script with another voice; the new release waits for approval.
    page.get_by_role("link", name="Edit and re-render ivr/hold").click()
    assert page.get_by_label("Voice (speaker)").input_value() == "cove"
    assert page.get_by_label("Text", exact=False).input_value() == "Please stay on the line."
    page.get_by_label("Voice (speaker)").fill("astra")
    page.get_by_role("button", name="Re-render this script").click()
    page.wait_for_url(f"**/jobs/*?against={first_job}")
    second_job = page.url.split("/jobs/")[1].split("?")[0]
    assert second_job != first_job
    _wait_done(page)
    hold = page.locator("section.script", has_text="ivr/hold")
    assert "astra (mistv2)" in hold.inner_text()
    # Old and new take side by side for the changed script; the other is the same audio.
    assert hold.locator("audio").count() == 4
    assert hold.get_by_text(f"Release {first_job}: wav", exact=True).count() == 1
    welcome = page.locator("section.script", has_text="ivr/welcome")
    assert welcome.locator("audio").count() == 2
    assert f"Same audio as release {first_job}" in welcome.inner_text()
    assert _play(page, 2) > 0.5
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "console-job-page.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000

    # Phone width: the job page fits without scrolling sideways.
    page.set_viewport_size({"width": PHONE_WIDTH, "height": 800})
    page.reload()
    overflow = page.evaluate("() => document.documentElement.scrollWidth")
    assert overflow <= PHONE_WIDTH, f"the job page is {overflow}px wide at {PHONE_WIDTH}px"
    page.screenshot(path=str(ARTIFACTS / "console-job-page-phone.png"), full_page=True)
    for path in ("/jobs", "/schedules", f"/jobs/{second_job}/edit/ivr/hold"):
        page.goto(service.base_url + path)
        width = page.evaluate("() => document.documentElement.scrollWidth")
        assert width <= PHONE_WIDTH, f"{path} is {width}px wide at {PHONE_WIDTH}px"
    page.goto(f"{service.base_url}/jobs/{second_job}")

    # Keyboard only: Tab to the publish button, Enter publishes the new release.
    page.set_viewport_size({"width": 1100, "height": 900})
    page.reload()
    assert _tab_to(page, "publish") > 1
    focus = page.evaluate("() => getComputedStyle(document.activeElement).outlineStyle")
    assert focus != "none"  # the focus is visible
    page.keyboard.press("Enter")
    page.wait_for_url(f"**/jobs/{second_job}?notice=published")
    assert "Release published." in page.content()
    assert "<strong>published</strong>" in page.content()
    with service.client(token) as client:
        releases = client.get("/v1/productions/clinic-demo/releases").json()["items"]
    assert [(r["job_id"], r["published"]) for r in releases] == [
        (second_job, True),
        (first_job, False),
    ]
    context.close()
