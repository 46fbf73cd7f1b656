"""Benchmark: `labctl web`'s page with a long capture, in a real browser (issue 15: 10,000 exchanges).

The server is the real one (labctl/web/server.py, its guards and API) over a stand-in for the live
lab whose exchanges are those of a real lab capture (tests/unit/data/traffic: a send on 25, one on
587 with AUTH, a fetch, their DNS), made by the real api.exchange_json and repeated, a second
apart, to ``--exchanges``. Headless chromium (Selenium, as tests/lab/test_web.py) opens the page;
the time is from navigation start to the diagram saying it holds them all, with how many SVG
elements it drew for them (the rows in view only) and the time of one scroll to the middle and
its redraw. Median of ``--rounds`` loads.

    python bench/bench_web_page.py [--exchanges 10000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from labctl.web import api  # noqa: E402
from labctl.web.events import EventLog  # noqa: E402
from labctl.web.server import WebServer  # noqa: E402
from tests.unit.decoding import decode_captures  # noqa: E402
from tests.unit.packets import NAMES, NS  # noqa: E402
from tests.unit.test_web import HOSTS, lab_capture  # noqa: E402


class Capture:
    """The views the page loads, from a real capture's exchanges repeated to ``n``."""

    def __init__(self, n: int) -> None:
        from labctl.traffic import render

        convs, _ = decode_captures(lab_capture(), NAMES)
        base = [api.exchange_json(0, c, HOSTS) for c in render.select(convs, decoded_only=True, hide_clients={NS})]
        t0 = base[0]["start"]
        self.items = []
        for i in range(n):
            x = dict(base[i % len(base)])
            shift = (i // len(base)) * 60.0
            x.update(id=i + 1, start=x["start"] + shift, end=x["end"] + shift)
            self.items.append(x)
        self.first = t0
        self.log = EventLog()

    def topology(self) -> dict[str, Any]:
        return api.topology_json("bench", HOSTS)

    def exchange_list(self) -> dict[str, Any]:
        return {"last_event": 0, "exchanges": self.items}

    def messages(self) -> list[Any]:
        return []

    def queue(self) -> dict[str, Any]:
        return {"now": self.first, "entries": []}

    def mailboxes(self) -> list[Any]:
        return []

    def run(self) -> None:
        pass

    def stop(self) -> None:
        pass


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--exchanges", type=int, default=10000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait

    server = WebServer(Capture(args.exchanges))  # type: ignore[arg-type]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--no-first-run", "--window-size=1600,1200",
                f"--user-data-dir={tempfile.mkdtemp()}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    want = f"{args.exchanges} of {args.exchanges} exchanges"
    loads, scrolls, drawn = [], [], 0
    try:
        for _ in range(args.rounds):
            driver.get(server.url)
            WebDriverWait(driver, 60, poll_frequency=0.02).until(
                lambda d: d.find_element("id", "count").text == want)
            loads.append(driver.execute_script("return performance.now()") / 1000)
            drawn = driver.execute_script("return document.querySelectorAll('svg.sequence *').length")
            scrolls.append(driver.execute_script("""
                const box = document.getElementById('diagram'); const t = performance.now();
                box.scrollTop = box.scrollHeight / 2; box.dispatchEvent(new Event('scroll'));
                return performance.now() - t;""") / 1000)
    finally:
        driver.quit()
        server.shutdown()
    print(f"page with {args.exchanges} exchanges: loaded and drawn in median {statistics.median(loads):.2f} s "
          f"(worst {max(loads):.2f} s, {args.rounds} loads); {drawn} SVG elements drawn; "
          f"a scroll to the middle redrawn in {statistics.median(scrolls) * 1000:.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
