"""One mail transaction as the MTA's client runs it, with no I/O: what to send, what the replies mean.

A :class:`Transaction` is the client side of RFC 5321 §3.3: MAIL, an RCPT per recipient, DATA,
the message. Pipelined (RFC 2920) when the server offers PIPELINING: MAIL, every RCPT and DATA in
one write, the replies read back in order; else lock-step, a command per reply. It sends nothing
itself: :meth:`Transaction.start` gives the first bytes to write, :meth:`Transaction.receive` takes
each reply and gives what to write next, until :attr:`Transaction.done`. The shell
(:mod:`services.smtp.client`) is a short loop around it on the event loop; the unit tests feed it
replies by hand, partial failures included.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from services.smtp.wire import DATA_GO_AHEAD_CODE, Reply
from services.textwire import stuff

ACCEPTED_RCPT_CODES = frozenset({250, 251})  # RFC 5321 §4.2.2: 251, user not local; will forward
CLOSING_CODE = 421  # RFC 5321 §3.8: the server is closing the session; no other command


@dataclass
class HostResult:
    """What one SMTP session did: each recipient's deciding reply, or why there was none."""

    replies: dict[str, Reply] = field(default_factory=dict)
    error: str = ""
    error_status: str = "4.4.1"  # RFC 3463: no answer from host; 4.4.2 once the session broke
    mail_code: int | None = None  # the reply to MAIL; None: the session failed before it


class _Awaiting(enum.Enum):
    """The reply the transaction reads next."""

    MAIL = "MAIL"
    RCPT = "RCPT"
    RSET = "RSET"  # lock-step, no recipient accepted: the transaction is abandoned
    DATA = "DATA"
    EMPTY_END = "EMPTY_END"  # pipelined, 354 with no recipient accepted: the empty message's reply
    END = "END"  # the reply after the data, deciding for every accepted recipient
    NOTHING = "NOTHING"  # done


def mail_command(sender: str, recipients: Sequence[str], size: int, eight_bit: bool,
                 extensions: Mapping[str, str]) -> str:
    """``MAIL FROM:<sender>`` with the parameters the server's extensions let it carry."""
    options = []
    if "SIZE" in extensions:
        options.append(f"SIZE={size}")  # RFC 1870: lets the server refuse before DATA
    if eight_bit and "8BITMIME" in extensions:
        options.append("BODY=8BITMIME")  # RFC 6152
    if not all(a.isascii() for a in (sender, *recipients)) and "SMTPUTF8" in extensions:
        options.append("SMTPUTF8")  # RFC 6531; without it the server refuses the address
    return f"MAIL FROM:<{sender}>" + "".join(f" {o}" for o in options)


class Transaction:
    """MAIL, RCPT..., DATA for one message on an open session (see the module docstring).

    :attr:`result` fills in as replies come; if the session breaks midway, :meth:`broken` says
    why, and the recipients still without a reply carry that error. :attr:`reusable` tells
    whether the session may carry another message (no ``421`` was seen, RFC 5321 §3.8).
    """

    def __init__(self, sender: str, recipients: Sequence[str], data: bytes, extensions: Mapping[str, str]) -> None:
        self.result = HostResult()
        self.reusable = True
        self._data = data
        self._recipients = tuple(recipients)
        self._pipelined = "PIPELINING" in extensions
        self._mail = mail_command(sender, recipients, len(data), not data.isascii(), extensions)
        self._sender_reply = Reply(0, "", "")  # the reply to MAIL, once it came
        self._answered: list[str] = []  # the recipients whose RCPT has its reply
        self._accepted: list[str] = []  # not settled yet: the reply after the data decides
        self._awaiting = _Awaiting.MAIL

    @property
    def done(self) -> bool:
        """No reply is awaited: the transaction is over (:attr:`result` is complete)."""
        return self._awaiting is _Awaiting.NOTHING

    @property
    def in_data(self) -> bool:
        """The message (or its end) was sent and its reply is awaited: RFC 5321 §4.5.3.2.5-6
        give this wait a timeout of its own."""
        return self._awaiting in (_Awaiting.END, _Awaiting.EMPTY_END)

    def start(self) -> bytes:
        """The first write: MAIL alone, or MAIL, every RCPT and DATA at once (RFC 2920 §3.1)."""
        if not self._pipelined:
            return self._command(self._mail)
        commands = [self._mail, *(self._rcpt(r) for r in self._recipients), "DATA"]
        return "".join(f"{c}\r\n" for c in commands).encode("utf-8")

    def receive(self, reply: Reply) -> bytes:
        """Take the next reply; the bytes to write next (``b""``: none, read on or stop)."""
        if reply.code == CLOSING_CODE:
            self.reusable = False
        match self._awaiting:
            case _Awaiting.MAIL:
                return self._mail_reply(reply)
            case _Awaiting.RCPT:
                return self._rcpt_reply(reply)
            case _Awaiting.RSET | _Awaiting.EMPTY_END:
                return self._finish()
            case _Awaiting.DATA:
                return self._data_reply(reply)
            case _Awaiting.END:
                self._settle(self._accepted, reply)
                return self._finish()
        raise AssertionError("a reply after the transaction ended")  # the shell reads no more

    def broken(self, error: str) -> None:
        """The session broke (connection lost, timeout, garbage): ``error`` says how (RFC 3463
        4.4.2) for every recipient not settled by a reply."""
        self.result.error, self.result.error_status = error, "4.4.2"
        self.reusable = False
        self._awaiting = _Awaiting.NOTHING

    # -- the steps -----------------------------------------------------------------------------

    def _mail_reply(self, reply: Reply) -> bytes:
        self.result.mail_code = reply.code
        self._sender_reply = reply
        if not self._pipelined and reply.code != 250:
            self._settle(self._recipients, reply)
            return self._finish()
        return self._next_rcpt()

    def _rcpt_reply(self, reply: Reply) -> bytes:
        rcpt = self._recipients[len(self._answered)]
        self._answered.append(rcpt)
        if self._sender_reply.code != 250:  # pipelined: the sender was refused, so every recipient's answer
            self.result.replies[rcpt] = self._sender_reply
        elif reply.code in ACCEPTED_RCPT_CODES:
            self._accepted.append(rcpt)
        else:
            self.result.replies[rcpt] = reply
            if reply.code == CLOSING_CODE and not self._pipelined:
                return self._finish()
        return self._next_rcpt()

    def _next_rcpt(self) -> bytes:
        """After the reply to MAIL or to an RCPT: the next RCPT, or DATA (RSET if none was accepted)."""
        if len(self._answered) < len(self._recipients):
            self._awaiting = _Awaiting.RCPT
            return b"" if self._pipelined else self._command(self._rcpt(self._recipients[len(self._answered)]))
        self._awaiting = _Awaiting.DATA
        if self._pipelined:
            return b""  # DATA went with the rest
        if not self._accepted:
            self._awaiting = _Awaiting.RSET
            return self._command("RSET")
        return self._command("DATA")

    def _data_reply(self, reply: Reply) -> bytes:
        if reply.code != DATA_GO_AHEAD_CODE:
            self._settle(self._accepted, reply)
            return self._finish()
        if not self._accepted:
            # RFC 2920 §3.1: a 354 with no recipient accepted (a server may give it) gets an
            # empty message ended at once, and its reply is ignored.
            self._awaiting = _Awaiting.EMPTY_END
            return b".\r\n"
        self._awaiting = _Awaiting.END
        return stuff(self._data)

    # -- helpers -------------------------------------------------------------------------------

    def _settle(self, recipients: Sequence[str], reply: Reply) -> None:
        self.result.replies.update(dict.fromkeys(recipients, reply))

    def _finish(self) -> bytes:
        self._awaiting = _Awaiting.NOTHING
        return b""

    @staticmethod
    def _rcpt(recipient: str) -> str:
        return f"RCPT TO:<{recipient}>"

    @staticmethod
    def _command(line: str) -> bytes:
        return line.encode("utf-8") + b"\r\n"
