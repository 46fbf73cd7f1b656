"""``python3 -m services ROLE [ARGS]``: the entry point of every lab host.

Long-running roles (dns, mta, mx, mua, client) read the lab configuration, point the host's resolver at
the lab DNS and serve until SIGTERM. Tool commands (probe, mail) run once and exit; they are what
`labctl exec` and a student's shell call.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from importlib import import_module

USAGE = """usage: python3 -m services ROLE

roles (long-running, one per lab host):
  dns     the lab's authoritative DNS server
  mta     the sender MTA: submission, durable queue, relay to the MX
  mx      the recipient MX: SMTP in, mailboxes, POP3
  mua     a mail user agent host (waits for a student or labctl)
  client  a host outside the MTA's clients, with the same tools (waits for a student)

reference peers (on the reference image, for comparisons):
  postfix-mta  Postfix + Dovecot in place of mta
  postfix-mx   Postfix + Dovecot in place of mx
  nsd-dns      NSD in place of dns

tools:
  probe   readiness probe of lab services (used by labctl up)
  mail    the mail client (send, fetch, list, read, save)
  queue   show the MTA queue, or --flush it
  store   a user's mailbox as the server keeps it (read-only)
  talk    a raw SMTP, POP3 or IMAP dialogue, lines as JSON on stdin (scenarios)
"""

# Imported lazily: a host only loads the code of its own role, and starts faster for it.
ENTRY_POINTS: dict[str, str] = {
    "dns": "services.dns.server:main",
    "mta": "services.smtp.mta:main",
    "mx": "services.smtp.mx:main",
    "mua": "services.mua.host:main",
    "client": "services.mua.host:main_client",
    "postfix-mta": "services.reference.mailhost:main_mta",
    "postfix-mx": "services.reference.mailhost:main_mx",
    "nsd-dns": "services.reference.nsd:main",
    "probe": "services.probe:main",
    "mail": "services.mua.cli:main",
    "queue": "services.smtp.queuecli:main",
    "store": "services.storecli:main",
    "talk": "services.talk:main",
}


def _resolve(spec: str) -> Callable[[list[str]], int]:
    module, _, func = spec.partition(":")
    entry: Callable[[list[str]], int] = getattr(import_module(module), func)
    return entry


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in ENTRY_POINTS:
        print(USAGE, file=sys.stderr if argv and argv[0] not in ("-h", "--help") else sys.stdout)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    return _resolve(ENTRY_POINTS[argv[0]])(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
