"""`labctl web` in a real browser: Debian's chromium, driven by Selenium through chromium-driver.

A lab comes up; the page is opened with the URL `labctl web` printed; a message is sent from the
page's form and its arrows appear in the article's order (submission, MX query, relay); a fetch
from the page brings its journey to step 6; the MX is stopped from the page, its host and lane go
down, and the next message's relay attempt is drawn as a failure. A scenario run in the lab from
the command line shows on the page, a step passed and one failed with what was expected and seen.
The browser's console stays free of errors throughout. The screenshot is written to
$WEB_SCREENSHOT (README's picture) or the test's temporary folder.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.lab.conftest import IN_CI, RunningLab, labctl

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
WAIT = 60.0  # seconds: a relay, a fetch and the follower's look each take a few


@pytest.fixture(scope="module")
def web(running_lab: RunningLab) -> Iterator[str]:
    proc = subprocess.Popen([sys.executable, "-m", "labctl", "web", "--lab", running_lab.name],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/\?token=[\w-]{20,}", url), url
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    if not (Path(CHROMIUM).exists() and Path(DRIVER).exists()):
        message = "no chromium/chromedriver: apt-get install -y chromium chromium-driver (.ci/run does)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--no-first-run", "--window-size=1600,1400",
                f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def arrows(driver: Any) -> list[dict[str, str]]:
    """The diagram's arrows drawn now, top to bottom: from, to, words, class."""
    return list(driver.execute_script(
        "return [...document.querySelectorAll('g.arrow')].map(g => ({id: g.dataset.id, from: g.dataset.from,"
        " to: g.dataset.to, words: g.querySelector('.words').textContent, cls: g.getAttribute('class')}))"))


def until(driver: Any, what: str, check: Any, timeout: float = WAIT) -> Any:
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException, TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    # The page redraws its lists and diagram as the stream brings news: an element found a moment
    # ago may be gone by the time it is read, which is "not yet", not a failure.
    wait = WebDriverWait(driver, timeout, poll_frequency=0.5,
                         ignored_exceptions=(NoSuchElementException, StaleElementReferenceException))
    try:
        return wait.until(lambda d: check(d))
    except TimeoutException:
        shown = "\n".join(f"  {a['from']} -> {a['to']}: {a['words']} ({a['cls']})" for a in arrows(driver))
        text = driver.find_element("tag name", "body").text[:1500]
        raise AssertionError(f"waited {timeout:.0f} s for {what}; arrows:\n{shown}\npage:\n{text}") from None


def click(driver: Any, css: str, what: str) -> None:
    """Click what ``css`` finds; again if the page redrew it between finding and clicking (the
    diagram and the lists are redrawn as the stream brings news)."""
    from selenium.common.exceptions import StaleElementReferenceException

    def clicked(d: Any) -> bool:
        try:
            d.find_element("css selector", css).click()
            return True
        except StaleElementReferenceException:
            return False

    until(driver, what, clicked, timeout=10)


def send_from_page(driver: Any, subject: str) -> str:
    driver.find_element("id", "send-subject").clear()
    driver.find_element("id", "send-subject").send_keys(subject)
    driver.find_element("id", "send").click()
    out = until(driver, "the send's answer", lambda d: re.search(r"Message-ID: (<[^>]+>)",
                                                                  d.find_element("id", "form-out").text))
    return str(out.group(1))


def test_the_page_draws_the_lab_live(web: str, browser: Any, running_lab: RunningLab, tmp_path: Path) -> None:
    d = browser
    d.get(web)
    lanes = "return [...document.querySelectorAll('g.lane')].map(g => g.dataset.host).join(' ')"
    until(d, "the lanes", lambda d: d.execute_script(lanes) == "andy smtp ns mail betty")
    until(d, "the live stream", lambda d: d.find_element("id", "live").text == "live")

    # A message sent from the page: submission, MX query, relay, in that order.
    subject = f"web {uuid.uuid4().hex[:6]}"
    message_id = send_from_page(d, subject)

    def in_order(d: Any) -> list[dict[str, str]] | None:
        drawn = arrows(d)
        want = [("andy", "smtp", subject), ("smtp", "ns", "MX? stevenchoy.example"), ("smtp", "mail", subject)]
        found = [next((i for i, a in enumerate(drawn) if (a["from"], a["to"]) == w[:2] and w[2] in a["words"]), None)
                 for w in want]
        return drawn if None not in found and found == sorted(found) else None  # type: ignore[type-var]

    drawn = until(d, "submission, MX query and relay, in order", in_order)
    submission = next(a for a in drawn if a["from"] == "andy" and subject in a["words"])
    assert "fail" not in submission["cls"]

    # Its dialogue, the text `labctl traffic` prints, on a click.
    click(d, f"g.arrow[data-id='{submission['id']}']", "the submission's arrow")
    dialogue = until(d, "the dialogue", lambda d: d.find_element("id", "dialogue").text)
    assert re.search(r"^C: MAIL FROM:<andy@ouhk\.example>", dialogue, re.I | re.M), dialogue
    assert re.search(r"^S: 250 ", dialogue, re.M), dialogue

    # A fetch from the page: the retrieval, its password drawn as sent in clear, the journey whole.
    d.find_element("id", "fetch").click()
    until(d, "the fetch's answer", lambda d: "fetched" in d.find_element("id", "form-out").text)
    pop = until(d, "the POP3 retrieval", lambda d: next(
        (a for a in arrows(d) if (a["from"], a["to"]) == ("betty", "mail") and subject in a["words"]), None))
    assert "secret" in pop["cls"] and "password in clear" in pop["words"], pop
    listed = f"#messages li[data-id='{message_id}']"
    until(d, "the message in the list", lambda d: d.find_elements("css selector", listed))
    click(d, listed, "the message in the list")
    until(d, "step 6 of the journey", lambda d: "6 of 6 steps" in d.find_element("id", "journey").text)

    # A scenario run in this lab from the command line: its steps on the page, green then red.
    scenario = tmp_path / "web-run.yml"
    scenario.write_text("name: From the command line\ndescription: a run the page shows\ngoal: see it live\n"
                        "steps:\n  - send: {from: andy, to: betty@stevenchoy.example, subject: run, body: hi}\n"
                        "  - expect:\n      mailbox: {user: betty@stevenchoy.example, count: 999}\n")
    ran = labctl("run", "--lab", running_lab.name, str(scenario), check=False)
    assert ran.returncode == 1, ran.stderr
    # Read in one script: the list may be redrawn between finding its items and reading them.
    steps = until(d, "the run on the page, failed", lambda d: d.execute_script(
        "const li = [...document.querySelectorAll('#runs .run.failed li')];"
        "return li.length ? li.map(s => [s.getAttribute('class'), s.innerText]) : null"))
    assert [cls for cls, _ in steps] == ["passed", "failed"], steps
    assert "expected:" in steps[1][1] and "saw:" in steps[1][1], steps[1][1]

    # The MX stopped from the page: its host and its lane go down, the next relay fails on the page.
    click(d, ".host[data-host='mail'] button[data-action='stop']", "the MX's stop button")
    until(d, "the MX's host down", lambda d: "down" in d.find_element(
        "css selector", ".host[data-host='mail']").get_attribute("class"))
    until(d, "the MX's lane down", lambda d: "down" in d.find_element(
        "css selector", "g.lane[data-host='mail']").get_attribute("class"))
    assert running_lab.lab.find("mail").condition == "stopped"
    until(d, "the MX's state shown", lambda d: d.find_element(
        "css selector", ".host[data-host='mail'] .state").text == "stopped")
    before = {a["id"] for a in arrows(d)}
    send_from_page(d, f"web down {uuid.uuid4().hex[:6]}")
    failed = until(d, "a failed relay to the stopped MX", lambda d: next(
        (a for a in arrows(d) if a["id"] not in before and (a["from"], a["to"]) == ("smtp", "mail")
         and "fail" in a["cls"]), None))
    assert failed["words"].startswith("✗"), failed

    d.find_element("id", "dialogue-close").click()  # the picture: diagram, hosts, the journey under them
    d.execute_script("window.scrollTo(0, 0)")
    shot = Path(os.environ.get("WEB_SCREENSHOT", tmp_path / "labctl-web.png"))
    assert d.save_screenshot(str(shot)), shot
    errors = [e for e in d.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors
