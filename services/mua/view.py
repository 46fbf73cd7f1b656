"""Reading a message: decoded headers and text, the MIME tree, the attachments' bytes.

Pure functions of the stored bytes. A message is whatever a peer sent, so nothing here may raise
on odd input: an unknown charset falls back to UTF-8 with replacement characters, a header the
``email`` package cannot parse is shown as its raw text.
"""

from __future__ import annotations

import hashlib
import html
import json
import mimetypes
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from email import policy
from email.header import decode_header, make_header
from email.message import EmailMessage, Message
from email.parser import BytesParser
from email.utils import parsedate_to_datetime
from html.parser import HTMLParser
from typing import Any, TypeVar

T = TypeVar("T")
D = TypeVar("D")

# The header fields `read` shows, in this order.
DISPLAY_HEADERS = ("From", "To", "Cc", "Date", "Subject", "Message-ID")

# RFC 2045 §5.2: text without a charset is US-ASCII. Read it as UTF-8, its superset: unlabeled
# 8-bit text is UTF-8 far more often than anything else. RFC 2045 §6.1: no
# Content-Transfer-Encoding means 7bit.
DEFAULT_CHARSET = "utf-8"
DEFAULT_ENCODING = "7bit"

# NAME_MAX of Linux file systems, in bytes: a longer attachment name cannot be created.
MAX_FILENAME_BYTES = 255
# Of a name cut to MAX_FILENAME_BYTES, keep an extension up to this long so the type survives.
MAX_KEPT_EXTENSION = 16

# HTML elements that start a paragraph (a blank line around them) or a line, in the crude rendering.
HTML_PARAGRAPHS = frozenset({"blockquote", "h1", "h2", "h3", "h4", "h5", "h6", "ol", "p", "pre", "table", "ul"})
HTML_LINES = frozenset({"address", "article", "aside", "br", "div", "dd", "dl", "dt", "footer", "form", "header",
                        "hr", "li", "main", "nav", "section", "tr"})
HTML_HIDDEN = frozenset({"head", "script", "style", "title"})


@dataclass(frozen=True)
class Part:
    """One node of the MIME tree.

    ``number`` is numbered like IMAP's part specifiers (RFC 3501 §6.4.5): the children of the
    top-level multipart are 1, 2, ...; a nested child is 1.1; a message that is not multipart has
    one part, 1. The top-level multipart itself has the empty number. A forwarded message
    (message/rfc822) is one node, with the message it carries below it.
    """

    number: str
    depth: int
    content_type: str
    encoding: str
    charset: str | None
    size: int | None  # decoded bytes of a leaf; None for a multipart
    filename: str | None
    disposition: str | None
    sha256: str | None = None  # of the decoded bytes of a leaf (a scenario checks an attachment by it)
    # A message/delivery-status part (RFC 3464 §2.1): its blocks of fields, per message then per
    # recipient. The email package parses the blocks as parts of their own; they are its text.
    report: tuple[tuple[tuple[str, str], ...], ...] = ()

    @property
    def is_attachment(self) -> bool:
        return self.size is not None and (self.disposition == "attachment" or self.filename is not None)


@dataclass(frozen=True)
class Summary:
    """One line of `mail list`."""

    number: int
    key: str
    date: str
    sender: str
    subject: str
    size: int


def parse(data: bytes) -> EmailMessage:
    # policy.default decodes RFC 2047 header text and gives the EmailMessage API (get_body).
    return BytesParser(_class=EmailMessage, policy=policy.default).parsebytes(data)


def _clean(text: str) -> str:
    """Printable on any terminal and in JSON: undecodable bytes (surrogates) become "?"."""
    return text.encode("utf-8", "replace").decode("utf-8")


def header(msg: Message, name: str) -> str | None:
    """A header field's text with RFC 2047 encoded-words decoded, or None if absent."""
    if name not in msg:
        return None
    try:
        return _clean(str(msg[name]))
    except Exception:  # noqa: BLE001 - the email package's parser has bugs on garbage; show it raw
        raw = next((v for k, v in msg.raw_items() if k.lower() == name.lower()), "")
        try:
            return _clean(str(make_header(decode_header(str(raw)))))
        except Exception:  # noqa: BLE001 - same reason: a header is peer data
            return _clean(str(raw))


def headers(msg: Message) -> dict[str, str]:
    found = {name: header(msg, name) for name in DISPLAY_HEADERS}
    return {name: value for name, value in found.items() if value is not None}


def all_headers(msg: Message) -> list[tuple[str, str]]:
    """Every header field in order, decoded: the Received chain and Return-Path included."""
    out: list[tuple[str, str]] = []
    for name, raw in msg.raw_items():
        raw = re.sub(r"\r?\n[ \t]+", " ", str(raw))  # unfold (RFC 5322 §2.2.3)
        try:
            value = _clean(str(make_header(decode_header(raw))))
        except Exception:  # noqa: BLE001 - a header is peer data; show it raw
            value = _clean(str(raw))
        out.append((name, value))
    return out


def _safe(call: Callable[[], T], default: D) -> T | D:
    try:
        return call()
    except Exception:  # noqa: BLE001 - a malformed MIME header is peer data, not our bug
        return default


def payload(part: Message) -> bytes:
    """The decoded bytes of a leaf part (base64 and quoted-printable undone)."""
    data = _safe(lambda: part.get_payload(decode=True), None)
    return data if isinstance(data, bytes) else b""


def part_text(part: Message) -> str:
    """A text part as a string: transfer encoding undone, then its charset decoded."""
    charset = _safe(part.get_content_charset, None) or DEFAULT_CHARSET
    data = payload(part)
    try:
        text = data.decode(charset, "replace")
    except (LookupError, ValueError):  # a charset Python does not know (or not a text codec, "idna")
        text = data.decode("utf-8", "replace")
    # A message parsed as it came off the wire keeps its CRLF line ends (RFC 5322 §2.3).
    return text.replace("\r\n", "\n")


LINE, PARAGRAPH = 1, 2  # how many line ends a block element puts before the next text


class _TextFromHtml(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.chunks: list[str | int] = []
        self.hidden = 0

    def _break(self, tag: str) -> None:
        if tag in HTML_PARAGRAPHS:
            self.chunks.append(PARAGRAPH)
        elif tag in HTML_LINES:
            self.chunks.append(LINE)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in HTML_HIDDEN:
            self.hidden += 1
        self._break(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag in HTML_HIDDEN:
            self.hidden = max(0, self.hidden - 1)
        self._break(tag)

    def handle_data(self, data: str) -> None:
        if not self.hidden:
            self.chunks.append(data)

    def text(self) -> str:
        out: list[str] = []
        pending = 0  # the strongest break since the last text
        for chunk in self.chunks:
            if isinstance(chunk, int):
                pending = max(pending, chunk)
            elif chunk.strip():
                if pending and out:
                    out.append("\n" * pending)
                pending = 0
                out.append(re.sub(r"\s+", " ", chunk))  # a source line break is only white space
            elif out and not pending:
                out.append(" ")  # white space between inline elements still parts words
        return "\n".join(" ".join(line.split()) for line in "".join(out).split("\n")).strip()


def html_to_text(markup: str) -> str:
    """A crude rendering of HTML: the text, a line break per block element, no markup."""
    parser = _TextFromHtml()
    try:
        parser.feed(markup)
        parser.close()
    except Exception:  # noqa: BLE001 - HTMLParser is lenient, but the markup is peer data
        return html.unescape(markup)
    return parser.text()


def body_text(msg: EmailMessage) -> str:
    """The text a reader should see: the text/plain body, else the HTML body rendered crudely."""
    body = _safe(lambda: msg.get_body(preferencelist=("plain", "html")), None)
    if body is None:
        return ""
    text = part_text(body)
    if _safe(body.get_content_subtype, "plain") == "html":
        return html_to_text(text)
    return text


DELIVERY_STATUS = "message/delivery-status"


def _report_blocks(part: Message) -> tuple[tuple[tuple[str, str], ...], ...]:
    """The field blocks of a message/delivery-status part, decoded as any header is."""
    blocks = _safe(part.get_payload, [])
    return tuple(tuple(all_headers(b)) for b in (blocks if isinstance(blocks, list) else []) if isinstance(b, Message))


def _report_text(report: tuple[tuple[tuple[str, str], ...], ...]) -> bytes:
    return "\n\n".join("\n".join(f"{n}: {v}" for n, v in block) for block in report).encode("utf-8") + b"\n"


def _is_report(part: Message) -> bool:
    return _safe(part.get_content_type, "") == DELIVERY_STATUS


def _leaf_bytes(part: Message) -> bytes:
    """A leaf's decoded bytes; a delivery-status part's are its fields, as text."""
    return _report_text(_report_blocks(part)) if _is_report(part) else payload(part)


def _describe(part: Message, number: str, depth: int) -> Part:
    report = _report_blocks(part) if _is_report(part) else ()
    leaf = not part.is_multipart() or _is_report(part)
    encoding = _safe(lambda: str(part.get("Content-Transfer-Encoding", DEFAULT_ENCODING)), DEFAULT_ENCODING)
    filename = _safe(part.get_filename, None)
    data = _leaf_bytes(part) if leaf else None
    return Part(
        number=number,
        depth=depth,
        content_type=_safe(part.get_content_type, "application/octet-stream"),
        encoding=encoding.strip().lower() or DEFAULT_ENCODING,
        charset=_safe(part.get_content_charset, None),
        size=len(data) if data is not None else None,
        filename=_clean(filename) if isinstance(filename, str) else None,
        disposition=_safe(part.get_content_disposition, None),
        sha256=hashlib.sha256(data).hexdigest() if data is not None else None,
        report=report,
    )


def _walk(part: Message, number: str, depth: int) -> list[tuple[Part, Message]]:
    found = [(_describe(part, number, depth), part)]
    if part.is_multipart() and not _is_report(part):
        children = part.get_payload()
        for i, child in enumerate(children if isinstance(children, list) else [], start=1):
            if isinstance(child, Message):
                found += _walk(child, f"{number}.{i}" if number else str(i), depth + 1)
    return found


def _nodes(msg: Message) -> list[tuple[Part, Message]]:
    return _walk(msg, "" if msg.is_multipart() else "1", 0)


def tree(msg: Message) -> list[Part]:
    """Every part of the message, depth first, in the order they appear."""
    return [p for p, _ in _nodes(msg)]


def attachments(msg: Message) -> list[tuple[Part, bytes]]:
    """The attachments (parts with a file name or an attachment disposition) and their bytes."""
    return [(p, _leaf_bytes(m)) for p, m in _nodes(msg) if p.is_attachment]


def part(msg: Message, number: str) -> tuple[Part, bytes] | None:
    """Leaf part ``number`` (as `tree` numbers them) and its decoded bytes, or None."""
    for p, m in _nodes(msg):
        if p.number == number and p.size is not None:
            return p, _leaf_bytes(m)
    return None


def safe_filename(name: str | None, fallback: str) -> str:
    """A file name that stays in the folder it is written to: no path separators, no ``..``,
    no control characters, not hidden, not longer than the file system allows."""
    cleaned = "".join(ch for ch in (name or "") if ch.isprintable())
    cleaned = cleaned.replace("/", "_").replace("\\", "_")
    while ".." in cleaned:
        cleaned = cleaned.replace("..", ".")
    cleaned = cleaned.strip().lstrip(".").strip()
    if not cleaned:
        return fallback
    if len(cleaned.encode("utf-8")) > MAX_FILENAME_BYTES:
        stem, dot, ext = cleaned.rpartition(".")
        if not dot or len(ext) > MAX_KEPT_EXTENSION:
            stem, ext = cleaned, ""
        suffix = f".{ext}" if ext else ""
        room = MAX_FILENAME_BYTES - len(suffix.encode("utf-8"))
        cleaned = stem.encode("utf-8")[:room].decode("utf-8", "ignore") + suffix
    return cleaned


def default_filename(p: Part) -> str:
    """The name to save a part under when it has none of its own."""
    ext = mimetypes.guess_extension(p.content_type) or ".bin"
    return f"part-{p.number or '0'}{ext}"


# -- rendering ------------------------------------------------------------------------------------


def render_tree(parts: list[Part]) -> str:
    width = max([len(p.number) for p in parts] + [4])
    lines = []
    for p in parts:
        details = [p.encoding]
        if p.charset:
            details.append(f"charset={p.charset}")
        if p.size is not None:
            details.append(f"{p.size} bytes")
        if p.filename is not None:
            details.append(f"filename={json.dumps(p.filename, ensure_ascii=False)}")
        elif p.disposition == "attachment":
            details.append("attachment")
        label = p.number or "-"
        lines.append(f"  {label:<{width}}  {'  ' * p.depth}{p.content_type}  ({', '.join(details)})")
        for i, block in enumerate(p.report):  # the report's fields, a blank line between its blocks
            indent = f"  {'':<{width}}  {'  ' * (p.depth + 1)}"
            lines += [indent.rstrip()] if i else []
            lines += [f"{indent}{name}: {value}" for name, value in block]
    return "\n".join(lines)


def render_message(msg: EmailMessage) -> str:
    """What `mail read` shows: the main headers, the text, then the MIME tree."""
    head = [f"{name}: {value}" for name, value in headers(msg).items()]
    text = body_text(msg).rstrip("\n") or "(no text part; the MIME tree below shows what there is)"
    return "\n".join([*head, "", text, "", "MIME tree:", render_tree(tree(msg)), *render_path(msg)]) + "\n"


def render_path(msg: Message) -> list[str]:
    """The way the message came, oldest hop first, from its trace fields (RFC 5321 §4.4)."""
    hops = [value for name, value in all_headers(msg) if name.lower() == "received"]
    if not hops:
        return []
    lines = ["", "Path (Received headers, oldest first):"]
    lines += [f"  {i}. {hop}" for i, hop in enumerate(reversed(hops), 1)]
    return_path = next((v for n, v in all_headers(msg) if n.lower() == "return-path"), None)
    if return_path is not None:
        lines.append(f"  Return-Path: {return_path}")
    return lines


def _part_json(p: Part) -> dict[str, Any]:
    """A part's fields; ``report`` (the delivery-status blocks) only where there is one."""
    out = asdict(p)
    if not p.report:
        del out["report"]
    return out


def message_json(msg: EmailMessage) -> dict[str, Any]:
    return {
        "headers": headers(msg),
        "all_headers": [list(pair) for pair in all_headers(msg)],
        "text": body_text(msg),
        "parts": [_part_json(p) for p in tree(msg)],
    }


def short_date(value: str | None) -> str:
    """A Date header as "2026-05-09 07:35 +0800", or its text if it does not parse."""
    if not value:
        return ""
    try:
        return parsedate_to_datetime(value).strftime("%Y-%m-%d %H:%M %z").strip()
    except (TypeError, ValueError, IndexError, OverflowError):
        return value


def summarize(number: int, key: str, data: bytes) -> Summary:
    msg = parse(data)
    return Summary(
        number=number,
        key=key,
        date=short_date(header(msg, "Date")),
        sender=header(msg, "From") or "",
        subject=header(msg, "Subject") or "",
        size=len(data),
    )


def _fit(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def render_list(rows: list[Summary]) -> str:
    lines = [f"{'#':>3}  {'date':<22}  {'from':<30}  {'size':>7}  subject"]
    for r in rows:
        lines.append(f"{r.number:>3}  {_fit(r.date, 22):<22}  {_fit(r.sender, 30):<30}  {r.size:>7}  "
                     f"{_fit(r.subject, 60)}")
    return "\n".join(lines) + "\n"


def render_flagged(rows: list[Summary], flags: list[tuple[str, ...]]) -> str:
    """`mail list --imap`: the list with each message's flags on the server (RFC 3501 §2.3.2)."""
    lines = [f"{'#':>3}  {'flags':<18}  {'date':<22}  {'from':<30}  {'size':>7}  subject"]
    for r, f in zip(rows, flags, strict=True):
        lines.append(f"{r.number:>3}  {_fit(' '.join(f) or '-', 18):<18}  {_fit(r.date, 22):<22}  "
                     f"{_fit(r.sender, 30):<30}  {r.size:>7}  {_fit(r.subject, 60)}")
    return "\n".join(lines) + "\n"
