"""The lab behind ``labctl web``: one follower of its capture, its hosts, and the actions.

:class:`LiveLab` runs one loop (a thread of the server): each second it feeds the capture's new
records (:class:`~labctl.capture.CaptureTail`, as ``labctl traffic --follow`` does) to one
:class:`~labctl.traffic.decode.TrafficDecoder`, and appends to the :class:`EventLog` an
``exchange`` for every conversation that gained settled events (:class:`Follower`: the lines the
page shows are the lines a full decode prints) and ``hosts`` when a host's state changed. The views
read the same decoder under a lock; the actions go through :class:`~labctl.lab.Lab` and
:mod:`labctl.mail`, as the CLI's commands do.
"""

from __future__ import annotations

import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from labctl import mail
from labctl.errors import LabctlError
from labctl.lab import HostStatus, Lab
from labctl.traffic import cli as traffic_cli
from labctl.traffic import render
from labctl.traffic.follow import UNANSWERED_SETTLE, Follower, key
from labctl.traffic.model import Conversation
from labctl.web import api, runs
from labctl.web.events import EventLog

if TYPE_CHECKING:
    from labctl.traffic.decode import TrafficDecoder

# The decoders (dnspython under them) and the journey are imported by the follower's thread, once
# the server answers: `labctl web` is up before they are loaded (README: its start-up figure).

LOOK_INTERVAL = 1.0  # seconds between looks at the capture (as `labctl traffic --follow`)
HOST_ACTIONS = ("stop", "start", "kill")
# Linux gives up on a neighbour after this many requests (mcast_solicit, see labctl.traffic.arp):
# fewer unanswered is a lookup the capture saw only part of, not a host that is off.
ARP_GIVES_UP = 3


class _Numbered(Follower):
    """A follower that also gives each conversation a number for the page, kept when its start
    moves (the follower's own rule: :data:`~labctl.traffic.follow.SAME_CONNECTION_WINDOW`)."""

    def __init__(self) -> None:
        super().__init__()
        self.numbers: dict[tuple[Any, ...], int] = {}

    def _key(self, conv: Conversation) -> tuple[str, str, int, str, int, float]:
        k = key(conv)
        before, new = self._latest.get(k[:5]), k not in self.shown
        super()._key(conv)
        if new:
            if before is not None and before != k and before not in self.shown and before in self.numbers:
                self.numbers[k] = self.numbers.pop(before)  # the follower took it for the same connection
            else:
                self.numbers[k] = len(self.numbers) + 1
        return k


class LiveLab:
    def __init__(self, lab: Lab, log: EventLog, *, tail: Callable[[], Any] | None = None,
                 hide_secrets: bool = False) -> None:
        self.lab = lab
        self.hide_secrets = hide_secrets  # a projected page masks the passwords it marks
        self.log = log
        self.lock = threading.Lock()
        self.hosts: list[HostStatus] = []
        self.decoder: TrafficDecoder | None = None
        self.follower = _Numbered()
        self.exchanges: dict[int, dict[str, Any]] = {}
        self.problem: str | None = None
        self._tail = tail
        self._probe: set[str] = set()
        self._newest, self._seen_at = 0.0, time.monotonic()
        self._stop = threading.Event()
        self._runs = runs.RunReader(lab.name)
        self._run_lines: list[dict[str, Any]] = []

    # -- the loop -------------------------------------------------------------------------------

    def run(self) -> None:
        """Look at the lab every :data:`LOOK_INTERVAL` seconds until :meth:`stop`."""
        while not self._stop.is_set():
            try:
                self.look()
            except Exception as exc:  # a bug: keep following, say so on the page and the terminal
                traceback.print_exc()
                self._problem(f"labctl web's follower failed ({type(exc).__name__}); the terminal shows why")
            self._stop.wait(LOOK_INTERVAL)

    def look(self) -> None:
        """One look: the hosts' states, the capture's new records, what they settled, and what
        the scenario runs in this lab wrote (:mod:`labctl.web.runs`)."""
        for line in self._runs.read():
            with self.lock:
                self._run_lines.append(line)
            self.log.append("run", line)
        from labctl.capture import CaptureTail
        from labctl.traffic.decode import TrafficDecoder

        try:
            hosts = self.lab.hosts()
            if self.decoder is None:
                infos = [(h.name, h.fqdn, h.kind, h.address) for h in hosts]
                self.decoder = TrafficDecoder(traffic_cli.names_from_hosts(infos))
                self._probe = traffic_cli.probe_addresses(infos)
                self._tail = self._tail or CaptureTail(self.lab).poll
            self._hosts_changed(hosts)
            assert self._tail is not None
            fresh = self._tail()
            with self.lock:
                self.decoder.feed_captures(fresh)
                # The capture clock, run on by the wall clock while the capture is silent (as
                # `labctl traffic --follow` does): an unanswered SYN settles with nothing captured.
                if self.decoder.latest != self._newest:
                    self._newest, self._seen_at = self.decoder.latest, time.monotonic()
                self._publish(self._newest + (time.monotonic() - self._seen_at))
            self._problem(None)
        except LabctlError as exc:
            self._problem(str(exc))

    def stop(self) -> None:
        self._stop.set()

    def _problem(self, text: str | None) -> None:
        if text != self.problem:
            self.problem = text
            self.log.append("problem", {"text": text})

    def _hosts_changed(self, hosts: list[HostStatus]) -> None:
        if [api.host_json(h) for h in hosts] != [api.host_json(h) for h in self.hosts]:
            self.hosts = hosts
            self.log.append("hosts", api.topology_json(self.lab.name, hosts))

    def conversations(self) -> list[Conversation]:
        """The decoded conversations the page shows (as `labctl traffic` without --all)."""
        if self.decoder is None:
            return []
        return render.select(self.decoder.conversations(), decoded_only=True, hide_clients=self._probe)

    def _publish(self, now: float) -> None:
        for conv, _ in self.follower.poll(self.conversations(), now=now):
            k = key(conv)
            settled = self.follower.shown[k]
            shown = replace(conv, events=conv.events[:settled])
            x = api.exchange_json(self.follower.numbers[k], shown, self.hosts, hide_secrets=self.hide_secrets)
            self._put(x)
        self._lookups(now)

    def _put(self, x: dict[str, Any]) -> None:
        self.exchanges[x["id"]] = x
        self.log.append("exchange", x)

    def _lookups(self, now: float) -> None:
        """Each ARP lookup nobody answered, once settled (no request for as long as a SYN waits)."""
        from labctl.traffic.journey import _unreachable  # the text `labctl trace` shows for it

        assert self.decoder is not None
        for lookup in self.decoder.neighbour_lookups():
            k = ("arp", lookup.asker, lookup.target, lookup.start)
            if (lookup.answered or lookup.requests < ARP_GIVES_UP or k in self.follower.numbers
                    or lookup.asker in self._probe or now - lookup.end < UNANSWERED_SETTLE):
                continue
            self.follower.numbers[k] = len(self.follower.numbers) + 1
            self._put(api.lookup_json(self.follower.numbers[k], lookup, self.hosts, _unreachable(lookup)))

    # -- the views ------------------------------------------------------------------------------

    def topology(self) -> dict[str, Any]:
        return api.topology_json(self.lab.name, self.lab.status())

    def exchange_list(self) -> dict[str, Any]:
        with self.lock:
            return {"last_event": self.log.last_id,
                    "exchanges": sorted(self.exchanges.values(), key=lambda x: (x["start"], x["id"]))}

    def runs(self) -> list[dict[str, Any]]:
        with self.lock:
            return runs.fold(self._run_lines)

    def messages(self) -> list[dict[str, Any]]:
        with self.lock:
            return api.messages_json(self.conversations())

    def journey(self, message_id: str) -> dict[str, Any]:
        from labctl.traffic import journey

        with self.lock:
            if self.decoder is None:
                raise LabctlError("the capture has not been read yet; try again in a second")
            j = journey.trace(self.conversations(), message_id=message_id,
                              lookups=self.decoder.neighbour_lookups())
        return api.journey_json(j)

    def queue(self) -> Any:
        return _answer(mail.queue(self.lab, as_json=True), "the MTA's queue")

    def mailboxes(self) -> list[dict[str, Any]]:
        """Each user's mailbox on the server; one whose host is down says so in its ``error``."""
        listings: dict[str, tuple[str, Any]] = {}
        for h in self.lab.hosts():
            if h.kind == "mua":
                try:
                    listings[h.name] = (h.user, _answer(mail.server_mailbox(self.lab, h.name, as_json=True),
                                                        f"{h.name}'s mailbox"))
                except LabctlError as exc:
                    listings[h.name] = (h.user, exc)
        return api.mailboxes_json(listings)

    # -- the actions ----------------------------------------------------------------------------

    def host_action(self, host: str, action: str) -> dict[str, Any]:
        if action not in HOST_ACTIONS:
            raise LabctlError(f"no host action {action!r}; the actions are {', '.join(HOST_ACTIONS)}")
        done = getattr(self.lab, action)(host)
        self.log.append("action", {"action": action, "host": done.name, "state": done.condition})
        return api.host_json(done)

    def flush(self) -> dict[str, Any]:
        return _outcome(mail.queue(self.lab, flush=True))

    def send(self, sender: str, to: Sequence[str], subject: str, body: str) -> dict[str, Any]:
        return _outcome(mail.send(self.lab, sender, list(to), subject, body))

    def fetch(self, user: str) -> dict[str, Any]:
        return _outcome(mail.fetch(self.lab, user))


def _outcome(result: mail.MailCommandResult) -> dict[str, Any]:
    return {"host": result.host, "ok": result.ok, "output": result.output, "errors": result.errors}


def _answer(result: mail.MailCommandResult, what: str) -> Any:
    if not result.ok:
        raise LabctlError(f"{what}: {result.errors.strip() or result.output.strip()}")
    try:
        return api.command_json(result.output, what)
    except ValueError as exc:
        raise LabctlError(str(exc)) from exc
