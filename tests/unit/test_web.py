"""labctl web without a lab: each view's JSON from real lab captures, the event log and its SSE
stream (resume, heartbeat), the live follower fed a capture piece by piece, and the server's guards.

The lab is a stand-in with the two things the follower asks of it (its hosts, its capture's new
records); the real one is driven in tests/lab/test_web.py.
"""

from __future__ import annotations

import http.client
import json
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from labctl.lab import HostStatus
from labctl.traffic import journey, render
from labctl.traffic.follow import key
from labctl.traffic.pcap import CaptureReader
from labctl.web import api, events, runs
from labctl.web.events import EventLog
from labctl.web.live import LiveLab
from labctl.web.server import CSP, TOKEN_HEADER, WebServer
from tests.unit.decoding import decode_captures
from tests.unit.packets import ANDY, BETTY, MAIL, NAMES, NS, SMTP, Packet, pcap

DATA = Path(__file__).parent / "data" / "traffic"


def host(name: str, fqdn: str, role: str, address: str, user: str = "") -> HostStatus:
    return HostStatus(role=role, lab="t", name=name, fqdn=fqdn, address=address, state="running",
                      container=f"t-{name}", user=user)


HOSTS = [host("mail", "mail.stevenchoy.example", "mx", MAIL), host("ns", "ns.lab.example", "dns", NS),
         host("betty", "betty.stevenchoy.example", "mua", BETTY, "betty@stevenchoy.example"),
         host("smtp", "smtp.ouhk.example", "mta", SMTP),
         host("andy", "andy.ouhk.example", "mua", ANDY, "andy@ouhk.example")]
LAB_CAPTURE = ("andy", "smtp", "mail", "betty", "ns")


def lab_capture() -> dict[str, bytes]:
    return {h: (DATA / f"{h}.pcap").read_bytes() for h in LAB_CAPTURE}


# -- api ---------------------------------------------------------------------------------------------


def test_lanes_in_the_articles_order() -> None:
    assert api.lanes(HOSTS) == ["andy", "smtp", "ns", "mail", "betty"]
    topo = api.topology_json("t", HOSTS)
    assert topo["lanes"] == ["andy", "smtp", "ns", "mail", "betty"]
    assert {h["name"]: h["state"] for h in topo["hosts"]}["mail"] == "running"
    assert next(h for h in topo["hosts"] if h["name"] == "smtp")["ports"].startswith("smtp 25")


def test_an_exchange_is_what_labctl_traffic_prints() -> None:
    convs, _ = decode_captures(lab_capture(), NAMES)
    xs = [api.exchange_json(i, c, HOSTS) for i, c in enumerate(convs, start=1)]
    for x, conv in zip(xs, convs, strict=True):
        assert x["text"] == (render.dns_lines(conv) if conv.protocol == "dns" else render.text([conv]))
    submission = next(x for x in xs if (x["from"], x["to"]) == ("andy", "smtp"))
    assert submission["protocol"] == "smtp" and submission["failure"] is None and submission["message_ids"]
    assert "250" in submission["label"]
    auth = [x for x in xs if x["clear_text_secret"]]  # the 587 submission with AUTH, the POP3 login
    assert {(x["from"], x["to"], x["protocol"]) for x in auth} >= {("betty", "mail", "pop3")}
    mx = next(x for x in xs if x["protocol"] == "dns" and "MX? stevenchoy.example" in x["label"])
    assert (mx["from"], mx["to"]) == ("smtp", "ns") and "\u2192 MX 10 mail.stevenchoy.example" in mx["label"]


def test_passwords_masked_on_request() -> None:
    convs, _ = decode_captures(lab_capture(), NAMES)
    pop = next(c for c in convs if c.protocol == "pop3" and any(e.secrets for e in c.events))
    secret = next(s for e in pop.events for s in e.secrets)
    assert secret in api.exchange_json(1, pop, HOSTS)["text"]
    masked = api.exchange_json(1, pop, HOSTS, hide_secrets=True)
    assert secret not in masked["text"] and masked["text"] == render.text([pop], hide_secrets=True)
    assert masked["clear_text_secret"]  # still drawn as sent in clear


def test_failures_are_marked() -> None:
    caps = {h: (DATA / f"{h}.pcap").read_bytes() for h in ("down-smtp", "up-smtp")}
    convs, _ = decode_captures(caps, NAMES)
    convs = render.select(convs, hide_clients={NS})  # not the readiness probe, as the page
    xs = [api.exchange_json(i, c, HOSTS) for i, c in enumerate(convs, start=1)]
    down = [x for x in xs if x["failure"] == "unanswered"]
    assert down and all((x["from"], x["to"]) == ("smtp", "mail") for x in down)
    assert all(x["label"] == "SMTP unanswered" for x in down)
    assert any(x["failure"] is None and x["to"] == "mail" for x in xs)  # the MX back: the relay worked


def test_messages_and_a_journey() -> None:
    convs, decoder = decode_captures(lab_capture(), NAMES)
    listed = api.messages_json(convs)
    assert [m["subject"] for m in listed] == ["hi", "second one"]
    assert listed[0]["sender"] == "andy@ouhk.example" and listed[0]["recipients"] == ["betty@stevenchoy.example"]
    j = api.journey_json(journey.trace(convs, message_id=listed[0]["message_id"],
                                       lookups=decoder.neighbour_lookups()))
    assert j["complete"] and j["found"] == 6 and [s["number"] for s in j["steps"]] == [1, 2, 3, 4, 5, 6]
    assert j["steps"][5]["name"] == "retrieval" and j["participants"][0] == {"host": "andy", "role": "MUA"}
    json.dumps(j)  # all of it is JSON


def test_a_mailbox_that_cannot_be_read_says_why() -> None:
    out = api.mailboxes_json({"andy": ("andy@ouhk.example", []), "betty": ("b@x", ValueError("mail is stopped"))})
    assert out == [{"user": "andy", "address": "andy@ouhk.example", "messages": []},
                   {"user": "betty", "address": "b@x", "messages": None, "error": "mail is stopped"}]


# -- the event log and its stream ----------------------------------------------------------------------


def test_event_ids_and_resume() -> None:
    log = EventLog()
    for n in range(3):
        log.append("exchange", {"n": n})
    assert [e.id for e in log.since(0)] == [1, 2, 3]
    assert [e.data["n"] for e in log.since(1)] == [1, 2]
    assert [e.id for e in log.since(99)] == [1, 2, 3]  # an id from before a restart: everything again
    stream = log.stream(2, heartbeat=0.01)
    assert next(stream) == events.preamble()
    assert next(stream) == b'id: 3\nevent: exchange\ndata: {"n":2}\n\n'
    assert next(stream) == events.HEARTBEAT_LINE  # nothing new: a comment keeps it open
    log.append("hosts", {"lab": "t"})
    assert next(stream).startswith(b"id: 4\nevent: hosts\n")
    log.close()
    assert list(stream) == []


def test_where_a_client_resumes() -> None:
    assert events.parse_last_id("7", "3") == 7  # the browser's own header wins
    assert events.parse_last_id(None, "3") == 3
    assert events.parse_last_id("junk", None) == 0


# -- the follower ---------------------------------------------------------------------------------------


class StandInLab:
    """The two things LiveLab asks of a lab: its name and hosts (and the capture, given as ``tail``)."""

    name = "t"

    def hosts(self) -> list[HostStatus]:
        return HOSTS

    def status(self) -> list[HostStatus]:
        return HOSTS


def pieces(n: int) -> Iterator[dict[str, list[bytes]]]:
    """The lab capture as n looks of a follow: each host's frames cut into n classic-pcap files."""
    frames = {h: list(CaptureReader(data, h)) for h, data in lab_capture().items()}
    for k in range(n):
        yield {h: [pcap([Packet(f.ts_ns / 1e9, bytes(f.data), h) for f in fs[k * len(fs) // n:(k + 1) * len(fs) // n]],
                        nanos=True, linktype=fs[0].linktype)] for h, fs in frames.items()}


def test_the_live_follower_shows_each_conversation_as_a_full_decode_does() -> None:
    looks = pieces(6)
    log = EventLog()
    live = LiveLab(StandInLab(), log, tail=lambda: next(looks, {}))  # type: ignore[arg-type]
    for _ in range(8):
        live.look()
    convs, _ = decode_captures(lab_capture(), NAMES)
    shown = render.select(convs, decoded_only=True, hide_clients={NS})
    final = {x["id"]: x for x in (e.data for e in log.since(0) if e.type == "exchange") if x["protocol"] != "arp"}
    assert sorted(x["text"] for x in final.values()) == sorted(api.exchange_json(0, c, HOSTS)["text"] for c in shown)
    assert [e.type for e in log.since(0)][0] == "hosts"
    assert live.exchange_list()["last_event"] == log.last_id
    assert [m["subject"] for m in live.messages()] == ["hi", "second one"]
    assert live.journey(live.messages()[0]["message_id"])["found"] == 6
    assert len({key(c) for c in shown}) == len(final)


# -- the server's guards -----------------------------------------------------------------------------


class StandInLive:
    """What the server asks of the lab (LiveLab's views and actions), answering from memory."""

    def __init__(self) -> None:
        self.log = EventLog()
        self.done: list[tuple[str, str]] = []

    def topology(self) -> dict[str, Any]:
        return api.topology_json("t", HOSTS)

    def host_action(self, host: str, action: str) -> dict[str, Any]:
        self.done.append((host, action))
        return {"name": host, "state": "exited"}

    def run(self) -> None:
        pass

    def stop(self) -> None:
        pass


@pytest.fixture
def server() -> Iterator[WebServer]:
    srv = WebServer(StandInLive(), token="tok-tok-tok-tok-tok-tok")  # type: ignore[arg-type]
    srv.heartbeat = 0.05
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def ask(srv: WebServer, method: str, path: str, headers: dict[str, str] | None = None,
        body: bytes | None = None) -> tuple[int, dict[str, str], Any]:
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5)
    conn.request(method, path, body=body, headers={"Host": f"127.0.0.1:{srv.port}", **(headers or {})})
    answer = conn.getresponse()
    data = answer.read()
    conn.close()
    is_json = answer.getheader("Content-Type", "").startswith("application/json")
    return answer.status, dict(answer.getheaders()), json.loads(data) if is_json else data


def test_the_token_opens_the_api(server: WebServer) -> None:
    status, headers, body = ask(server, "GET", f"/api/topology?token={server.token}")
    assert status == 200 and body["lanes"] == ["andy", "smtp", "ns", "mail", "betty"]
    assert headers["Content-Security-Policy"] == CSP and CSP.startswith("default-src 'self'")
    assert headers["Referrer-Policy"] == "no-referrer"
    assert ask(server, "GET", "/api/topology", {TOKEN_HEADER: server.token})[0] == 200
    assert server.url.startswith(f"http://127.0.0.1:{server.port}/?token=")


@pytest.mark.parametrize("path", ["/api/topology", "/api/topology?token=wrong", "/"])
def test_no_token_is_refused(server: WebServer, path: str) -> None:
    status, _, body = ask(server, "GET", path)
    assert status == 401 and "token" in body["error"]


def test_a_wrong_host_is_refused(server: WebServer) -> None:
    """A DNS-rebinding page reaches 127.0.0.1 under its own name: its Host header says so."""
    status, _, body = ask(server, "GET", f"/api/topology?token={server.token}", {"Host": f"evil.example:{server.port}"})
    assert status == 421 and "127.0.0.1" in body["error"]
    assert ask(server, "GET", "/static/app.js", {"Host": "evil.example"})[0] == 421


def test_a_wrong_origin_is_refused(server: WebServer) -> None:
    status, _, body = ask(server, "POST", "/api/hosts/mail/stop", {TOKEN_HEADER: server.token,
                                                                   "Origin": "http://evil.example"})
    assert status == 403 and "evil.example" in body["error"]
    assert server.live.done == []  # type: ignore[attr-defined]
    status, _, _ = ask(server, "POST", "/api/hosts/mail/stop",
                       {TOKEN_HEADER: server.token, "Origin": f"http://localhost:{server.port}"})
    assert status == 200 and server.live.done == [("mail", "stop")]  # type: ignore[attr-defined]


@pytest.mark.parametrize("path", ["/api/hosts/mail/stop", "/api/send", "/api/fetch", "/api/queue/flush"])
def test_an_action_by_get_is_refused(server: WebServer, path: str) -> None:
    status, headers, body = ask(server, "GET", f"{path}?token={server.token}", {TOKEN_HEADER: server.token})
    assert status == 405 and headers["Allow"] == "POST" and "POST" in body["error"]
    assert server.live.done == []  # type: ignore[attr-defined]


def test_an_action_needs_the_token_in_its_header(server: WebServer) -> None:
    """A form on another site could put it in the URL; only a script of this page sets the header."""
    status, _, body = ask(server, "POST", f"/api/hosts/mail/stop?token={server.token}")
    assert status == 401 and TOKEN_HEADER in body["error"]


def test_bad_requests_get_json_errors(server: WebServer) -> None:
    h = {TOKEN_HEADER: server.token}
    assert ask(server, "GET", "/api/nothing", h)[0] == 404
    status, _, body = ask(server, "POST", "/api/send", h, b"[1, 2]")
    assert status == 400 and "JSON object" in body["error"]
    status, _, body = ask(server, "POST", "/api/send", h, b'{"from": "andy"}')
    assert status == 400 and "'to'" in body["error"]
    assert ask(server, "GET", "/static/../server.py")[0] == 404


def test_the_page_and_its_modules(server: WebServer) -> None:
    status, headers, page = ask(server, "GET", f"/?token={server.token}")
    assert status == 200 and b'type="module" src="/static/app.js"' in page
    status, headers, _ = ask(server, "GET", "/static/app.js")
    assert status == 200 and headers["Content-Type"].startswith("text/javascript")


def test_the_event_stream_resumes_and_beats(server: WebServer) -> None:
    for n in range(3):
        server.log.append("exchange", {"n": n})
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    conn.request("GET", f"/api/events?token={server.token}", headers={"Host": f"127.0.0.1:{server.port}",
                                                                       "Last-Event-ID": "1"})
    answer = conn.getresponse()
    assert answer.status == 200 and answer.getheader("Content-Type").startswith("text/event-stream")
    got = b""
    while got.count(events.HEARTBEAT_LINE) < 1:
        got += answer.read1(4096)
    assert got.startswith(events.preamble())
    assert b"id: 1\n" not in got and b"id: 2\n" in got and b"id: 3\n" in got
    conn.close()




# -- scenario runs --------------------------------------------------------------------------------------


def test_a_run_published_and_read_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    from labctl.scenario.runner import ScenarioResult, Silent, StepResult

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    steps = [SimpleNamespace(number=1, title="send a message", kind="send", note=""),
             SimpleNamespace(number=2, title="the MTA queried MX", kind="expect", note="")]
    scenario = SimpleNamespace(name="mx down", source=Path("scenarios/mx-down.yml"), goal="see a retry", steps=steps)
    live = LiveLab(StandInLab(), EventLog(), tail=lambda: {})  # type: ignore[arg-type]
    progress = runs.Published(Silent())
    progress.scenario_started(scenario, "t")  # type: ignore[arg-type]
    progress.step_started(steps[0])  # type: ignore[arg-type]
    progress.step_finished(steps[0], StepResult(1, "send", "send a message", 3, "passed", 0.5))  # type: ignore[arg-type]
    progress.step_started(steps[1])  # type: ignore[arg-type]
    live.look()
    [run] = live.runs()
    assert run["status"] == "running" and run["scenario"] == "mx down"
    assert [s["status"] for s in run["steps"]] == ["passed", "running"]
    progress.step_finished(steps[1], StepResult(2, "expect", "the MTA queried MX", 4, "failed", 1.0,  # type: ignore[arg-type]
                                                expected="an MX query", seen="no DNS traffic"))
    progress.scenario_finished(ScenarioResult("mx down", "scenarios/mx-down.yml", "t", status="failed",
                                              message="step 2 failed"))
    with runs.path("t").open("a") as fh:
        fh.write('{"event": "step", "ru')  # a line still being written: read once it is whole
    live.look()
    [run] = live.runs()
    assert run["status"] == "failed" and run["message"] == "step 2 failed"
    assert run["steps"][1] | {"seconds": 1.0} == {"number": 2, "title": "the MTA queried MX", "kind": "expect",
                                                 "status": "failed", "seconds": 1.0, "detail": "",
                                                 "expected": "an MX query", "seen": "no DNS traffic"}
    assert sum(e.type == "run" for e in live.log.since(0)) == 6
    assert runs.RunReader("other").read() == []  # another lab's runs are not this page's
