"""Handing a message to the MTA over SMTP (smtplib), step by step so its final reply can be shown.

``smtplib.SMTP.sendmail`` hides the reply to DATA, which is the line a student should see (it
carries the MTA's queue id). So the transaction is spelled out: EHLO, AUTH on the submission port,
MAIL, one RCPT per recipient, DATA.

TLS (issue 12): ``tls="implicit"`` is submission over TLS from the first byte (port 465, RFC 8314),
``"starttls"`` upgrades the session first (RFC 3207) and fails if the server does not offer it
(a client that quietly goes on in clear would hand its password to whoever removed the offer).
"""

from __future__ import annotations

import smtplib
import ssl
from dataclasses import dataclass, field

from services.mua.errors import MuaError
from services.mua.security import CLEAR, IMPLICIT, STARTTLS, Security, not_verified

SMTP_PORT = 25  # RFC 5321 §4.5.4.2; the lab MTA relays for the hosts of its own LAN here, without AUTH
SUBMISSION_PORT = 587  # RFC 6409 §3.1: message submission, with AUTH (RFC 4954)
SUBMISSIONS_PORT = 465  # RFC 8314 §3.3: message submission over TLS from the first byte

# RFC 5321 §4.5.3.2 gives a client minutes per step, for servers across the Internet under load.
# A lab server answers in milliseconds; a student should not wait five minutes to learn it is down.
TIMEOUT = 30.0


class SubmitError(MuaError):
    """The MTA refused the message, or could not be reached."""


@dataclass(frozen=True)
class Login:
    user: str
    password: str


@dataclass(frozen=True)
class Receipt:
    reply: str  # the reply to the end of DATA: "250 2.0.0 <queue id> Message accepted for delivery"
    refused: dict[str, str] = field(default_factory=dict)  # recipient -> the server's reply to RCPT


def _words(code: int, text: bytes | str) -> str:
    """A server reply as one line, the way it came on the wire ("550 5.1.1 User unknown")."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return " ".join(f"{code} {text}".split())


def submit(host: str, port: int, message: bytes, sender: str, recipients: list[str], *,
           login: Login | None = None, helo: str | None = None, timeout: float = TIMEOUT,
           tls: Security = CLEAR, context: ssl.SSLContext | None = None) -> Receipt:
    """Send ``message`` to the MTA at ``host``:``port`` for ``recipients``; ``tls``: CLEAR,
    STARTTLS or IMPLICIT, with ``context`` (services.tls.client_context).

    Returns the final reply and any recipients refused at RCPT; raises SubmitError when nothing
    was accepted.
    """
    where = f"{host}:{port}"
    try:
        if tls == IMPLICIT:
            smtp: smtplib.SMTP = smtplib.SMTP_SSL(host, port, local_hostname=helo, timeout=timeout,
                                                  context=context)
        else:
            smtp = smtplib.SMTP(host, port, local_hostname=helo, timeout=timeout)
    except ssl.SSLCertVerificationError as exc:
        raise SubmitError(not_verified(host, exc, "send")) from exc
    except ssl.SSLError as exc:
        raise SubmitError(f"no TLS with {where}: {exc.reason or exc}; is it the TLS port (465 for --tls)?") from exc
    except smtplib.SMTPConnectError as exc:  # a greeting other than 220 (RFC 5321 §3.1)
        raise SubmitError(f"{where} turned the connection away: {_words(exc.smtp_code, exc.smtp_error)}") from exc
    except OSError as exc:
        raise SubmitError(f"cannot connect to the SMTP server {where}: {exc.strerror or exc}; "
                          "is the lab up (labctl status) and the server name right (--smtp)?") from exc
    try:
        if tls == STARTTLS:
            _starttls(smtp, where, context)
        return _transaction(smtp, where, message, sender, recipients, login)
    except ssl.SSLCertVerificationError as exc:
        raise SubmitError(not_verified(host, exc, "send")) from exc
    except ssl.SSLError as exc:
        raise SubmitError(f"the TLS handshake with {where} failed: {exc.reason or exc}") from exc
    except smtplib.SMTPServerDisconnected as exc:
        raise SubmitError(f"{where} closed the connection: {exc}") from exc
    except smtplib.SMTPResponseException as exc:
        raise SubmitError(f"{where} refused: {_words(exc.smtp_code, exc.smtp_error)}") from exc
    except smtplib.SMTPException as exc:
        raise SubmitError(f"SMTP with {where} failed: {exc}") from exc
    except OSError as exc:
        raise SubmitError(f"the connection to {where} failed: {exc.strerror or exc}") from exc
    finally:
        smtp.close()


def _starttls(smtp: smtplib.SMTP, where: str, context: ssl.SSLContext | None) -> None:
    smtp.ehlo()
    if not smtp.has_extn("starttls"):
        raise SubmitError(f"{where} offers no STARTTLS; is the lab up with TLS (labctl up --tls)? "
                          "Or send in clear with --no-tls")
    smtp.starttls(context=context)
    smtp.ehlo()  # RFC 3207 §4.2: the server has forgotten the first EHLO


def _transaction(smtp: smtplib.SMTP, where: str, message: bytes, sender: str, recipients: list[str],
                 login: Login | None) -> Receipt:
    smtp.ehlo_or_helo_if_needed()
    if login is not None:
        _authenticate(smtp, where, login)

    options = [f"SIZE={len(message)}"] if smtp.has_extn("size") else []  # RFC 1870 §6
    code, text = smtp.mail(sender, options)
    if code != 250:
        smtp.rset()
        raise SubmitError(f"{where} refused the sender {sender}: {_words(code, text)}")

    refused: dict[str, str] = {}
    for rcpt in recipients:
        code, text = smtp.rcpt(rcpt)
        if code not in (250, 251):  # 251: "will forward" (RFC 5321 §3.4)
            refused[rcpt] = _words(code, text)
    if len(refused) == len(recipients):
        smtp.rset()
        reasons = "; ".join(f"{r}: {w}" for r, w in refused.items())
        raise SubmitError(f"{where} refused every recipient: {reasons}")

    code, text = smtp.data(message)  # smtplib dot-stuffs and ends with CRLF.CRLF (RFC 5321 §4.5.2)
    if code != 250:
        raise SubmitError(f"{where} did not accept the message: {_words(code, text)}")
    reply = _words(code, text)
    try:
        smtp.quit()
    except (smtplib.SMTPException, OSError):
        pass  # the message is accepted; a lost goodbye changes nothing
    return Receipt(reply, refused)


def _authenticate(smtp: smtplib.SMTP, where: str, login: Login) -> None:
    """AUTH (RFC 4954) with one mechanism the server offers, tried once.

    Not ``smtplib.SMTP.login``: after a refusal it tries each other mechanism the server offers,
    so one wrong password would show on the wire, and in the server's log, as several failures.
    """
    offered = str(smtp.esmtp_features.get("auth", "")).upper().split()
    smtp.user, smtp.password = login.user, login.password  # what smtplib's auth_* callbacks read
    try:
        if "PLAIN" in offered:  # RFC 4616: one round trip, the one a student can decode by hand
            smtp.auth("PLAIN", smtp.auth_plain)
        elif "LOGIN" in offered:
            smtp.auth("LOGIN", smtp.auth_login)
        elif "CRAM-MD5" in offered:  # RFC 2195
            smtp.auth("CRAM-MD5", smtp.auth_cram_md5)
        else:
            raise SubmitError(f"{where} offers no AUTH PLAIN, LOGIN or CRAM-MD5 (only "
                              f"{' '.join(offered) or 'no AUTH'}); submit without --submission (port 25)")
    except smtplib.SMTPAuthenticationError as exc:
        raise SubmitError(f"{where} refused the login for {login.user}: "
                          f"{_words(exc.smtp_code, exc.smtp_error)}; check --user and --password") from exc
