"""Security checks on a real lab: no open relay, slowed password guessing, a sealed lab, no open ports.

* No open relay: from hosts that are not the MTA's clients (the MX, and a stranger on the lab
  network that is no lab host at all), every way of asking the MTA or the MX to relay to a foreign
  domain is refused, on port 25 and, without AUTH, on 587; then Debian's nmap runs its
  ``smtp-open-relay`` script (16 relay tricks) against both, from a throwaway container built FROM
  the lab image (nmap and its 26 MB of scripts are not worth a place in every lab host).
* POP3 guessing is slowed: a wrong password is answered no sooner than the configured delay, which
  doubles with each failure. Asserted as a lower bound only (a sleep is never shorter), so it
  cannot flake on a slow machine.
* The lab is sealed: the network is internal, no host has a default route, and a connection to an
  outside address fails inside the host with "Network is unreachable" before any packet leaves.
  (That no packet to a non-lab address appears in a capture is checked with the capture tooling.)
* No container of the lab publishes a port; if one ever did, only on 127.0.0.1.
"""

from __future__ import annotations

import io
import ipaddress
import json
import uuid
from collections.abc import Iterator

import docker
import docker.errors
import pytest

from labctl.backend.docker_engine import DockerEngine
from labctl.lab import LABEL_LAB, Lab
from services.logins import AUTH_DELAY_FIRST
from tests.lab.conftest import RunningLab, raw_api

HOSTS = ("ns", "smtp", "mail", "andy", "betty")
OUTSIDE = "198.51.100.7"  # TEST-NET-2 (RFC 5737): no one's address, and never this machine's

# Every form of "please relay to elsewhere.example" a spammer tries (nmap's smtp-open-relay has most).
RELAY_TRICKS = [
    "<victim@elsewhere.example>",
    "<VICTIM@ELSEWHERE.EXAMPLE>",
    "<victim%elsewhere.example@{domain}>",
    "<\"victim@elsewhere.example\"@{domain}>",
    "<victim@elsewhere.example@{domain}>",
    "<@{domain}:victim@elsewhere.example>",
    "<elsewhere.example!victim>",
    "<elsewhere.example!victim@{domain}>",
    "<victim@elsewhere.example.>",
    "<victim@[198.51.100.7]>",
    "<victim@{domain}.elsewhere.example>",
]

# Each RCPT trick in a session of its own (a server rightly hangs up on a run of refused commands);
# the replies to MAIL and to RCPT, as JSON.
PROBE = r"""
import json, smtplib, sys
server, port, rcpts = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
out = []
for r in rcpts:
    s = smtplib.SMTP(server, port, local_hostname="stranger.example", timeout=10)
    s.ehlo()
    out.append([list(s.mail("spammer@elsewhere.example")), list(s.rcpt(r))])
    s.quit()
print(json.dumps([[[m, mt.decode()], [c, ct.decode()]] for (m, mt), (c, ct) in out]))
"""

Reply = tuple[int, str]


def parse(output: str) -> list[tuple[Reply, Reply]]:
    return [((int(m), str(mt)), (int(c), str(ct))) for (m, mt), (c, ct) in json.loads(output)]


def probe(lab: Lab, host: str, server: str, port: int, rcpts: list[str]) -> list[tuple[Reply, Reply]]:
    ran = lab.exec(host, ["python3", "-c", PROBE, server, str(port), json.dumps(rcpts)])
    assert ran.exit_code == 0, ran.stderr.decode(errors="replace")
    return parse(ran.output)


def tricks(domain: str) -> list[str]:
    return [t.replace("{domain}", domain) for t in RELAY_TRICKS]


def assert_refused(replies: list[tuple[Reply, Reply]], rcpts: list[str]) -> None:
    for rcpt, (mail, (code, text)) in zip(rcpts, replies, strict=True):
        # Refused at MAIL already (submission without AUTH), or at RCPT: either way, no relay.
        assert mail[0] != 250 or 500 <= code < 600, f"RCPT TO:{rcpt} was answered {code} {text}: an open relay"


def test_no_open_relay_from_the_mx_host(running_lab: RunningLab) -> None:
    """The MX is another mail server, not one of the MTA's clients: port 25 relays nothing for it."""
    lab = running_lab.lab
    rcpts = tricks("ouhk.example")
    replies = probe(lab, "mail", "smtp.ouhk.example", 25, rcpts)
    assert_refused(replies, rcpts)
    assert replies[0] == ((250, "2.1.0 <spammer@elsewhere.example>... Sender ok"),
                          (550, "5.7.1 <victim@elsewhere.example>... Relaying denied"))


# -- a stranger on the lab network ------------------------------------------------------------------

STRANGER_HOST_NUMBER = 200  # no lab host uses .200
NMAP_REPOSITORY = "maillab-nmap"


@pytest.fixture(scope="module")
def nmap_image(client: DockerEngine, image: str) -> str:
    """The lab image plus Debian's nmap, built once per lab image (the apt layer is then cached).

    Built FROM the lab image, it carries the lab image's labels: `labctl image prune` keeps it while
    that lab image is current and removes it with it.
    """
    tag = f"{NMAP_REPOSITORY}:{image.rpartition(':')[2]}"
    try:
        client.api.inspect_image(tag)
        return tag
    except docker.errors.ImageNotFound:
        pass
    dockerfile = (
        f"FROM {image}\n"
        "RUN apt-get update && apt-get install -y --no-install-recommends nmap "
        "&& rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb\n"
        'ENTRYPOINT ["nmap"]\n'
    )
    tail: list[str] = []
    for chunk in client.api.build(fileobj=io.BytesIO(dockerfile.encode()), tag=tag, rm=True, forcerm=True,
                                  decode=True):
        if "error" in chunk:
            pytest.fail(f"building {tag} failed: {chunk['error']}\n" + "\n".join(tail))
        tail = (tail + [str(chunk.get("stream", "")).rstrip()])[-15:]
    return tag


class Stranger:
    """A throwaway container on the lab network at a free address: no lab host, nobody's client."""

    def __init__(self, lab: Lab, image: str) -> None:
        self.lab = lab
        self.image = image
        net = raw_api().networks(filters={"label": [f"{LABEL_LAB}={lab.name}"]})[0]
        self.network = net["Name"]
        subnet = ipaddress.IPv4Network(raw_api().inspect_network(net["Id"])["IPAM"]["Config"][0]["Subnet"])
        self.address = str(subnet.network_address + STRANGER_HOST_NUMBER)
        self.subnet = subnet

    def address_of(self, host: str) -> str:
        return self.lab.find(host).address

    def run(self, entrypoint: list[str], args: list[str]) -> str:
        """Run to completion; its output. Labelled with the lab, so `labctl down` removes it if we crash."""
        api = raw_api()
        name = f"{self.lab.name}-stranger-{uuid.uuid4().hex[:6]}"
        networking = api.create_networking_config({
            self.network: api.create_endpoint_config(ipv4_address=self.address)
        })
        container = api.create_container(self.image, entrypoint=entrypoint, command=args, name=name,
                                         labels={LABEL_LAB: self.lab.name}, networking_config=networking,
                                         host_config=api.create_host_config(network_mode=self.network))
        try:
            api.start(container["Id"])
            status = api.wait(container["Id"], timeout=180)
            output = api.logs(container["Id"]).decode(errors="replace")
            assert status["StatusCode"] == 0, output
            return str(output)
        finally:
            api.remove_container(container["Id"], force=True)


@pytest.fixture(scope="module")
def stranger(running_lab: RunningLab, image: str) -> Iterator[Stranger]:
    yield Stranger(running_lab.lab, image)


def test_no_open_relay_for_a_stranger_on_25_and_587(stranger: Stranger) -> None:
    for server, domain in (("smtp", "ouhk.example"), ("mail", "stevenchoy.example")):
        rcpts = tricks(domain)
        for port in (25, 587) if server == "smtp" else (25,):
            out = stranger.run(["python3", "-c", PROBE],
                               [stranger.address_of(server), str(port), json.dumps(rcpts)])
            replies = parse(out)
            assert_refused(replies, rcpts)
            if port == 587:  # RFC 6409 §4.3: a stranger must authenticate before MAIL
                assert all(mail[0] == 530 for mail, _ in replies), replies
            else:
                assert all(mail[0] == 250 for mail, _ in replies), replies  # refused at RCPT, each one


def test_nmap_smtp_open_relay_script_finds_no_open_relay(running_lab: RunningLab, nmap_image: str) -> None:
    stranger = Stranger(running_lab.lab, nmap_image)
    for server in ("smtp", "mail"):
        # domain: the foreign domain to relay to (nmap's default, nmap.scanme.org, is a real one).
        out = stranger.run(["nmap"], [
            "-n", "-Pn", "-sT", "-p", "25", "-d", "--script", "smtp-open-relay",
            "--script-args", "smtp-open-relay.domain=elsewhere.example,smtp-open-relay.to=victim,"
                             "smtp-open-relay.from=spammer",
            stranger.address_of(server),
        ])
        assert "25/tcp open" in out, out
        assert "Server doesn't seem to be an open relay, all tests failed" in out, out
        assert "is an open relay" not in out, out


# -- POP3 password guessing ---------------------------------------------------------------------------

GUESS = r"""
import json, socket, time
s = socket.create_connection(("mail.stevenchoy.example", 110), timeout=60)
f = s.makefile("rb")
f.readline()
def say(line):
    start = time.monotonic()
    s.sendall(line.encode() + b"\r\n")
    reply = f.readline().decode().strip()
    return [reply, time.monotonic() - start]
out = [say("USER betty"), say("PASS guess-1"), say("USER betty"), say("PASS guess-2"),
       say("USER betty"), say("PASS betty-secret"), say("QUIT")]
print(json.dumps(out))
"""


def test_wrong_pop3_passwords_are_answered_late(running_lab: RunningLab) -> None:
    ran = running_lab.lab.exec("betty", ["python3", "-c", GUESS])
    assert ran.exit_code == 0, ran.stderr
    (_, _), (first, t1), (_, _), (second, t2), (_, _), (right, _), (_, _) = json.loads(ran.output)
    assert first.startswith("-ERR [AUTH]") and second.startswith("-ERR [AUTH]"), (first, second)
    # Lower bounds only: the server holds each reply back at least this long (1 s, then 2 s).
    assert t1 >= AUTH_DELAY_FIRST * 0.95, t1
    assert t2 >= 2 * AUTH_DELAY_FIRST * 0.95, t2
    assert right.startswith("+OK"), right  # the right password still works in the same session


# -- the seal ------------------------------------------------------------------------------------------

LEAVE = r"""
import json, socket
out = {}
for kind, proto in (("tcp", socket.SOCK_STREAM), ("udp", socket.SOCK_DGRAM)):
    s = socket.socket(socket.AF_INET, proto)
    s.settimeout(5)
    try:
        if proto == socket.SOCK_STREAM:
            s.connect((__import__("sys").argv[1], 25))
        else:
            s.sendto(b"x", (__import__("sys").argv[1], 53))
        out[kind] = "sent"
    except OSError as exc:
        out[kind] = exc.strerror
    finally:
        s.close()
print(json.dumps(out))
"""


def test_the_lab_is_sealed(running_lab: RunningLab) -> None:
    lab = running_lab.lab
    net = raw_api().networks(filters={"label": [f"{LABEL_LAB}={lab.name}"]})
    assert len(net) == 1 and raw_api().inspect_network(net[0]["Id"])["Internal"] is True
    for host in HOSTS:
        routes = lab.exec(host, ["ip", "-4", "route", "show", "default"])
        assert routes.exit_code == 0 and routes.output.strip() == "", f"{host} has a default route: {routes.output}"
        ran = lab.exec(host, ["python3", "-c", LEAVE, OUTSIDE])
        assert ran.exit_code == 0, ran.stderr
        assert json.loads(ran.output) == {"tcp": "Network is unreachable", "udp": "Network is unreachable"}, host


def test_no_container_publishes_a_port_beyond_loopback(running_lab: RunningLab) -> None:
    lab = running_lab.lab
    containers = lab.containers()
    assert len(containers) >= len(HOSTS)  # the hosts, and any helper the lab runs (capture, say)
    for c in containers:
        info = raw_api().inspect_container(c.id)
        bindings = [b for bs in (info["HostConfig"].get("PortBindings") or {}).values() for b in bs or []]
        published = [b for bs in (info["NetworkSettings"].get("Ports") or {}).values() for b in bs or []]
        for binding in bindings + published:
            assert binding.get("HostIp") in ("127.0.0.1", "::1"), f"{c.name} publishes {binding}"
        assert info["HostConfig"]["NetworkMode"] != "host", c.name

