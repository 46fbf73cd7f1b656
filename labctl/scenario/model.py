"""What a scenario file says, checked and resolved: frozen dataclasses, no Docker, no I/O.

:mod:`labctl.scenario.parse` builds these from YAML (every value's line is kept for messages);
:mod:`labctl.scenario.runner` executes them. Host and user references are resolved against the
scenario's topology at parse time, so a typo is a ``file:line`` error before any lab starts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from labctl.topology import Topology
from services.smtp.replyfaults import ReplyRule

# -- actions ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Attachment:
    filename: str
    data: bytes


# A send step's `tls:` and the MUA flag it becomes (`mail send`; see services/mua/security.py).
SEND_TLS = {"starttls": "--starttls", "implicit": "--tls", "clear": "--no-tls"}


@dataclass(frozen=True)
class Send:
    """Compose and submit a message with the MUA on the sender's host (``mail send``)."""

    sender: str  # MUA host name
    to: tuple[str, ...]
    subject: str
    body: str
    attachments: tuple[Attachment, ...] = ()
    submission: bool = False  # port 587 with AUTH instead of 25
    tls: str = ""  # "starttls", "implicit" or "clear" (SEND_TLS); "": the MUA's default


@dataclass(frozen=True)
class Fetch:
    """Fetch a user's new mail by POP3 (or IMAP) into the MUA's local mailbox (``mail fetch``)."""

    user: str  # MUA host name
    delete: bool = False
    imap: bool = False  # ``mail fetch --imap``: only what is new, left on the server marked \Seen


@dataclass(frozen=True)
class Exchange:
    """One line (or block) sent, and what its reply must look like."""

    line: int | None
    send: str | None  # None: only read (the greeting)
    expect: str | None  # a prefix of the reply's first line: "250", "250 2.1.5", "+OK", "-ERR"
    match: re.Pattern[str] | None  # searched in the whole reply


@dataclass(frozen=True)
class Dialogue:
    """Raw protocol lines typed from a lab host, as in the article's activities."""

    proto: str  # "smtp", "pop3" or "imap"
    host: str  # where the client runs
    server: str  # FQDN or address it connects to
    port: int
    exchanges: tuple[Exchange, ...]


# -- conditions (wait) and expectations ------------------------------------------------------------


@dataclass(frozen=True)
class Count:
    """How many are wanted, written the same wherever a scenario counts: ``2`` (exactly),
    ``">= 2"``, ``"<= 3"``, ``"2..3"`` (both ends included). Also a span of seconds (``"1.5..4"``)."""

    low: float = 0
    high: float | None = None  # None: no upper bound

    def holds(self, n: float) -> bool:
        return self.low <= n and (self.high is None or n <= self.high)

    def __str__(self) -> str:
        def num(x: float) -> str:
            return f"{x:g}"
        if self.high is None:
            return f"at least {num(self.low)}"
        if self.low == self.high:
            return f"exactly {num(self.low)}"
        if self.low == 0:
            return f"at most {num(self.high)}"
        return f"{num(self.low)} to {num(self.high)}"


AT_LEAST_ONE = Count(1)


@dataclass(frozen=True)
class Delivered:
    """``count`` messages (with ``subject``) in the server-side mailbox of ``to``."""

    to: str
    subject: str | None = None
    count: Count = AT_LEAST_ONE


@dataclass(frozen=True)
class Read:
    """``count`` messages (with ``subject``) of ``to`` flagged \\Seen on the server: an IMAP client read them."""

    to: str
    subject: str | None = None
    count: Count = AT_LEAST_ONE


@dataclass(frozen=True)
class Queued:
    """``to`` is pending in ``host``'s queue after ``attempts`` tries."""

    host: str
    to: str
    attempts: Count = AT_LEAST_ONE


@dataclass(frozen=True)
class Bounced:
    """A delivery-status report in the server-side mailbox of ``to``, about ``about``."""

    to: str
    about: str | None = None
    status: str | None = None  # RFC 3463 code that must appear, e.g. "5.1.1"


@dataclass(frozen=True)
class QueueEmpty:
    host: str


@dataclass(frozen=True)
class Seconds:
    seconds: float


Condition = Delivered | Read | Queued | Bounced | QueueEmpty | Seconds


@dataclass(frozen=True)
class Wait:
    until: Condition
    timeout: float


@dataclass(frozen=True)
class MailboxExpect:
    """The messages of a mailbox that match ``subject``/``sender``, and what must hold for each."""

    user: str  # address
    on: str  # "server": the mail host's store; "client": the MUA's local mailbox (after fetch)
    subject: str | None = None
    sender: str | None = None
    count: Count = AT_LEAST_ONE  # how many matching messages
    headers: tuple[tuple[str, re.Pattern[str]], ...] = ()
    body: re.Pattern[str] | None = None
    received_via: tuple[str, ...] = ()  # FQDNs that must appear as "by HOST", oldest hop first
    attachments: tuple[AttachmentExpect, ...] = ()
    seen: bool | None = None  # on the server: flagged \Seen (read by IMAP), or not; None: either


@dataclass(frozen=True)
class AttachmentExpect:
    """A file attached to the message: by name, and if given its decoded size and SHA-256."""

    name: str
    size: int | None = None
    sha256: str | None = None  # lower-case hex


@dataclass(frozen=True)
class QueueExpect:
    host: str
    empty: bool | None = None
    to: str | None = None
    status: str | None = None  # pending, delivered, bounced
    attempts: Count | None = None
    error: re.Pattern[str] | None = None  # searched in the last error
    retry_gap: RetryGap | None = None


@dataclass(frozen=True)
class RetryGap:
    """The time from attempt ``attempt - 1`` to attempt ``attempt``, from the queue record."""

    attempt: int  # 2: the gap between the first try and the first retry
    seconds: Count


@dataclass(frozen=True)
class MxQueried:
    """Host ``host`` asked the lab DNS for the MX records of ``domain``."""

    host: str
    domain: str


@dataclass(frozen=True)
class ConnectionRefused:
    """A TCP connection to ``host`` port ``port`` was refused (answered by a reset)."""

    host: str
    port: int


@dataclass(frozen=True)
class Cleartext:
    """The ``command`` (e.g. PASS, AUTH) of ``proto`` crossed the wire readable by anyone; with
    ``subject``, in a session that carried a message with that subject."""

    proto: str
    command: str
    subject: str | None = None


@dataclass(frozen=True)
class Encrypted:
    """The ``command`` of ``proto`` crossed the wire inside TLS: read only with the lab's key log
    (decrypted), never in clear; with ``subject``, only sessions that carried a message with that
    subject count (the same command may have crossed in clear in another session)."""

    proto: str
    command: str
    subject: str | None = None


@dataclass(frozen=True)
class Connected:
    """``source`` opened a ``proto`` session to ``target``."""

    source: str
    target: str
    port: int


@dataclass(frozen=True)
class DnsLooked:
    """``host`` asked the lab DNS for ``name``'s ``type`` records and got ``answer`` (if given):
    an rcode (NXDOMAIN, SERVFAIL, NOERROR), ``NODATA`` (NOERROR, empty), or a value that one of
    the answer's records has (an address, ``10 mail.stevenchoy.example``, a name), in its answer
    or additional section."""

    host: str | None  # None: any host
    name: str  # lower case, no final dot
    type: str  # A, AAAA, MX, ...
    answer: str | None = None


@dataclass(frozen=True)
class Relayed:
    """A message to ``to`` was handed over by SMTP along ``via`` (short host names, in order),
    each hop accepted with 250: read from the SMTP conversations, not from Received headers."""

    to: str
    via: tuple[str, ...]
    subject: str | None = None


@dataclass(frozen=True)
class Pop3Session:
    """A POP3 session of ``user`` that ended (QUIT or a closed connection) having retrieved and
    deleted exactly ``retr`` and ``dele`` distinct messages (None: any number)."""

    user: str  # the login name typed after USER, as the server knows it ("betty")
    retr: int | None = None
    dele: int | None = None


@dataclass(frozen=True)
class ImapSession:
    """An IMAP session of ``user`` that ended (LOGOUT or a closed connection) having fetched whole
    (BODY[], BODY.PEEK[] or RFC822) and expunged exactly ``fetched`` and ``expunged`` distinct
    messages (None: any number)."""

    user: str  # the login name given to LOGIN or AUTHENTICATE PLAIN, as the server knows it ("betty")
    fetched: int | None = None
    expunged: int | None = None


Fact = (MxQueried | ConnectionRefused | Cleartext | Encrypted | Connected | DnsLooked | Relayed | Pop3Session
        | ImapSession)


@dataclass(frozen=True)
class TrafficExpect:
    facts: tuple[Fact, ...]


@dataclass(frozen=True)
class FileExpect:
    """A file on a lab host (a student's answer) exists and its text matches ``match``."""

    host: str
    path: str  # absolute, or relative to the home directory of the host's shell (``~/answer.txt``)
    match: re.Pattern[str] | None = None


Expectation = MailboxExpect | QueueExpect | Bounced | TrafficExpect | FileExpect


@dataclass(frozen=True)
class Expect:
    checks: tuple[Expectation, ...]


# -- faults ----------------------------------------------------------------------------------------

HOST_ACTIONS = ("stop", "start", "kill", "restart", "disconnect", "reconnect", "unshape")


@dataclass(frozen=True)
class HostFault:
    action: str  # one of HOST_ACTIONS
    host: str


DIRECTIONS = ("both", "in", "out")  # what the host receives, sends, or both


@dataclass(frozen=True)
class Shape:
    """Make a host's link slow or lossy, both ways unless ``direction`` says one (see faults.py)."""

    host: str
    delay_ms: float | None = None
    loss_percent: float | None = None
    rate_kbit: float | None = None
    direction: str = "both"  # one of DIRECTIONS


@dataclass(frozen=True)
class Block:
    """Refuse (TCP reset) or silently drop connections to ``port`` on ``host``; unblock undoes it."""

    host: str
    port: int
    how: str = "refuse"  # or "drop"
    undo: bool = False


@dataclass(frozen=True)
class DnsChange:
    """Records of ``domain`` change while the lab runs: new zone files, then the server reloads."""

    domain: str
    topology: Topology  # the lab's topology after the change (before moving to the lab's subnet)


@dataclass(frozen=True)
class ReplyFault:
    """Our SMTP server on ``host`` answers ``rule``'s reply at its stage (services.smtp.replyfaults);
    the rule's id is given when it is put in force."""

    host: str
    rule: ReplyRule


@dataclass(frozen=True)
class ClearReplies:
    """``host``'s SMTP server answers as itself again."""

    host: str


@dataclass(frozen=True)
class DiskFull:
    """Fill the file system of ``path`` on ``host`` (the store its SMTP server writes before it
    answers 250) with a ballast file, or remove it again (``undo``). The scenario's lab makes
    ``path`` a small tmpfs, so filling it is quick and touches nothing else."""

    host: str
    path: str
    undo: bool = False


Fault = HostFault | Shape | Block | DnsChange | ReplyFault | ClearReplies | DiskFull


@dataclass(frozen=True)
class Task:
    """What the student does by hand; the ``wait``/``expect`` steps after it decide whether they did."""

    text: str
    hint: str = ""  # shown when half the time limit has passed
    time_limit: float = 600.0  # seconds for the task's checks to hold, from when the text is shown


# What a step does; `labctl check` runs only the Wait and Expect steps that follow a Task.
Action = Send | Fetch | Dialogue | Wait | Expect | Fault | Task


@dataclass(frozen=True)
class Step:
    number: int  # 1-based
    line: int | None
    kind: str  # the key in the file: send, fetch, smtp, pop3, imap, task, wait, fault, expect
    title: str  # a one-line summary for the progress line and the report
    action: Action
    note: str = ""  # what a student should notice, shown when the step runs


@dataclass(frozen=True)
class Scenario:
    source: Path
    name: str
    description: str
    goal: str
    topology: Topology
    steps: tuple[Step, ...] = field(default_factory=tuple)
