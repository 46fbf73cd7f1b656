"""A stored message as IMAP's FETCH shows it: ENVELOPE, BODYSTRUCTURE and body sections (RFC 3501 §6.4.5, §7.4.2).

Pure. Every byte range is cut from the message's CRLF form (:func:`services.textwire.crlf_form`),
so that a section's literal and the sizes BODYSTRUCTURE announces are the same octets. The MIME
tree is found by boundaries in those bytes; the ``email`` package reads each part's header (types,
parameters with RFC 2231, addresses), and header values are sent as they are stored (RFC 2047
words stay encoded, as §7.4.2 requires).
"""

from __future__ import annotations

import email.utils
import re
from dataclasses import dataclass, field
from email.message import Message
from email.parser import BytesHeaderParser
from email.policy import compat32

CRLF = b"\r\n"
MAX_DEPTH = 32  # nested multiparts beyond this are shown as opaque parts: no recursion bomb
MAX_QUOTED = 1000  # a longer string goes as a literal, which has no line to overflow


# -- IMAP strings ---------------------------------------------------------------------------------


def string(data: bytes | str) -> bytes:
    """An IMAP string (RFC 3501 §4.3): quoted when it can be, else a literal."""
    raw = data.encode("utf-8", "surrogateescape") if isinstance(data, str) else data
    if len(raw) <= MAX_QUOTED and all(0x20 <= b < 0x7F for b in raw):
        return b'"' + raw.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    return b"{%d}\r\n" % len(raw) + raw


def nstring(data: bytes | str | None) -> bytes:
    return b"NIL" if data is None else string(data)


def glist(items: list[bytes]) -> bytes:
    return b"(" + b" ".join(items) + b")"


# -- the MIME tree ----------------------------------------------------------------------------------


@dataclass
class Part:
    """One entity: its header (with the blank line after it, if there was one) and its body."""

    header: bytes
    body: bytes
    fields: Message  # the header, parsed
    children: list[Part] = field(default_factory=list)  # a multipart's parts
    message: Part | None = None  # a message/rfc822's encapsulated message

    @property
    def content_type(self) -> str:
        return self.fields.get_content_type()


def parse(crlf: bytes, default_type: str = "text/plain", depth: int = 0) -> Part:
    """The MIME tree of an entity in CRLF form (RFC 2045, RFC 2046 §5.1)."""
    if crlf.startswith(CRLF):
        header, body = CRLF, crlf[2:]
    else:
        end = crlf.find(CRLF + CRLF)
        header, body = (crlf, b"") if end < 0 else (crlf[: end + 4], crlf[end + 4:])
    fields = BytesHeaderParser(policy=compat32).parsebytes(header)
    fields.set_default_type(default_type)
    part = Part(header, body, fields)
    if depth >= MAX_DEPTH:
        return part
    maintype = part.content_type.split("/")[0]
    if maintype == "multipart":
        boundary = fields.get_param("boundary")
        if isinstance(boundary, str) and boundary:
            child_type = "message/rfc822" if part.content_type == "multipart/digest" else "text/plain"
            delimiter = boundary.encode("utf-8", "surrogateescape")
            part.children = [parse(p, child_type, depth + 1) for p in _split(body, delimiter)]
    elif part.content_type == "message/rfc822":
        part.message = parse(body, "text/plain", depth + 1)
    return part


def _split(body: bytes, boundary: bytes) -> list[bytes]:
    """The parts between ``--boundary`` lines (RFC 2046 §5.1.1): the CRLF before a delimiter is
    the delimiter's, not the part's."""
    delimiter = CRLF + b"--" + boundary
    text = CRLF + body
    parts: list[bytes] = []
    at = text.find(delimiter)
    while at >= 0:
        line_end = text.find(CRLF, at + len(delimiter))
        closing = text.startswith(b"--", at + len(delimiter))
        if closing or line_end < 0:
            break
        start = line_end + 2
        nxt = text.find(delimiter, start - 2)
        parts.append(text[start:] if nxt < 0 else text[start:nxt])
        at = nxt
    return parts


# -- ENVELOPE (RFC 3501 §7.4.2) ------------------------------------------------------------------------


def _raw(fields: Message, name: str) -> str | None:
    for key, value in fields.raw_items():
        if key.lower() == name:
            return re.sub(r"\r?\n(?=[ \t])", "", value).strip()
    return None


def _addresses(fields: Message, name: str) -> bytes:
    """An ENVELOPE address list: ``"(" 1*address ")"``, the addresses side by side with no space
    between them (RFC 3501 §9, env-to); a group as its start marker, members and end marker."""
    value = _raw(fields, name)
    if not value:
        return b"NIL"
    found = []
    for group, text in _address_groups(value):
        if group is not None:  # §7.4.2: the group's name in the mailbox field, host NIL
            found.append(glist([b"NIL", b"NIL", nstring(email.utils.unquote(group) or None), b"NIL"]))
        for display, address in email.utils.getaddresses([text]):
            if not address and not display:
                continue
            mailbox, at, host = address.rpartition("@") if "@" in address else (address, "", "")
            found.append(glist([nstring(display or None), b"NIL", nstring(mailbox or None),
                                nstring(host) if at else b"NIL"]))
        if group is not None:
            found.append(b"(NIL NIL NIL NIL)")  # the end of the group
    return b"(" + b"".join(found) + b")" if found else b"NIL"


def _address_groups(value: str) -> list[tuple[str | None, str]]:
    """An address list cut at its groups (RFC 5322 §3.4, ``name: a, b;``): (the group's name, or
    None outside a group; the text of its addresses). Quotes, comments and <...> are skipped
    over, so that a ':' or ';' in them cuts nothing."""
    out: list[tuple[str | None, str]] = []
    group: str | None = None
    start = segment = 0  # where the current run of addresses, and the current address, begin
    quoted = escaped = False
    comment = angle = 0
    for i, c in enumerate(value):
        if escaped:
            escaped = False
        elif c == "\\" and (quoted or comment):
            escaped = True
        elif quoted:
            quoted = c != '"'
        elif comment:
            comment += {"(": 1, ")": -1}.get(c, 0)
        elif c == '"':
            quoted = True
        elif c == "(":
            comment = 1
        elif c == "<":
            angle += 1
        elif c == ">":
            angle = max(angle - 1, 0)
        elif angle:
            continue
        elif c == ":" and group is None:
            out.append((None, value[start:segment]))
            group, start = value[segment:i].strip(), i + 1
            segment = start
        elif c == ";" and group is not None:
            out.append((group, value[start:i]))
            group, start = None, i + 1
            segment = start
        elif c == ",":
            segment = i + 1
    out.append((group, value[start:]))
    return out


def envelope(part: Part) -> bytes:
    f = part.fields
    sender = "sender" if _raw(f, "sender") else "from"  # §7.4.2: the server defaults them to From
    reply_to = "reply-to" if _raw(f, "reply-to") else "from"
    return glist([nstring(_raw(f, "date")), nstring(_raw(f, "subject")), _addresses(f, "from"),
                  _addresses(f, sender), _addresses(f, reply_to), _addresses(f, "to"), _addresses(f, "cc"),
                  _addresses(f, "bcc"), nstring(_raw(f, "in-reply-to")), nstring(_raw(f, "message-id"))])


# -- BODYSTRUCTURE (RFC 3501 §7.4.2) -------------------------------------------------------------------


def _params(fields: Message, header: str = "content-type") -> list[tuple[str, str]]:
    params = fields.get_params(header=header) or []
    out = []
    for key, value in params[1:]:  # the first is the type (or the disposition) itself
        out.append((key, email.utils.collapse_rfc2231_value(value)))
    return out


def _param_list(params: list[tuple[str, str]]) -> bytes:
    return glist([string(k) + b" " + string(v) for k, v in params]) if params else b"NIL"


def _extension(fields: Message) -> list[bytes]:
    """body-fld-dsp, body-fld-lang, body-fld-loc."""
    disposition = fields.get("content-disposition")
    dsp = b"NIL"
    if isinstance(disposition, str) and disposition.strip():
        kind = disposition.split(";", 1)[0].strip().lower()
        dsp = glist([string(kind), _param_list(_params(fields, "content-disposition"))])
    language = _raw(fields, "content-language")
    return [dsp, nstring(language), nstring(_raw(fields, "content-location"))]


def _lines(body: bytes) -> int:
    return body.count(CRLF) + (1 if body and not body.endswith(CRLF) else 0)


def bodystructure(part: Part, extended: bool = True) -> bytes:
    """BODYSTRUCTURE (``extended``) or BODY: the part's MIME structure."""
    if part.children:
        items = b"".join(bodystructure(c, extended) for c in part.children)
        out = [items, string(part.content_type.split("/", 1)[1])]
        if extended:
            out += [_param_list(_params(part.fields)), *_extension(part.fields)]
        return b"(" + b" ".join(out) + b")"
    ctype = part.content_type
    maintype, subtype = ctype.split("/", 1)
    if maintype == "multipart":  # no boundary, or no parts: shown as the text it is
        maintype, subtype = "text", "plain"
    params = _params(part.fields)
    if maintype == "text" and not any(k.lower() == "charset" for k, _ in params):
        params.append(("charset", "us-ascii"))  # RFC 2045 §5.2's default, said aloud
    encoding = _raw(part.fields, "content-transfer-encoding") or "7bit"
    out = [string(maintype), string(subtype), _param_list(params), nstring(_raw(part.fields, "content-id")),
           nstring(_raw(part.fields, "content-description")), string(encoding.lower()),
           str(len(part.body)).encode()]
    if part.message is not None:
        out += [envelope(part.message), bodystructure(part.message, extended), str(_lines(part.body)).encode()]
    elif maintype == "text":
        out.append(str(_lines(part.body)).encode())
    if extended:
        out += [nstring(_raw(part.fields, "content-md5")), *_extension(part.fields)]
    return b"(" + b" ".join(out) + b")"


# -- sections (RFC 3501 §6.4.5) --------------------------------------------------------------------------


_SECTION = re.compile(r"((?:\d+\.)*\d+)?"  # part numbers, then what of the part
                      r"(?:(?:^|\.)(HEADER\.FIELDS\.NOT|HEADER\.FIELDS|HEADER|TEXT|MIME)(?: \((.*)\))?)?",
                      re.IGNORECASE)


class BadSection(ValueError):
    """A section spec the grammar does not allow: the FETCH is answered BAD."""


@dataclass(frozen=True)
class Section:
    parts: tuple[int, ...]
    text: str  # "", HEADER, HEADER.FIELDS, HEADER.FIELDS.NOT, TEXT, MIME
    fields: tuple[str, ...] = ()


def parse_section(spec: str) -> Section:
    m = _SECTION.fullmatch(spec)
    if not m:
        raise BadSection(spec)
    numbers, text, names = m.group(1), (m.group(2) or "").upper(), m.group(3)
    parts = tuple(int(n) for n in numbers.split(".")) if numbers else ()
    if any(n == 0 for n in parts) or (text == "MIME" and not parts):
        raise BadSection(spec)
    if text.startswith("HEADER.FIELDS"):
        if names is None or not names.split():
            raise BadSection(spec)
        return Section(parts, text, tuple(n.strip('"').lower() for n in names.split()))
    if names is not None:
        raise BadSection(spec)
    return Section(parts, text)


def _child(node: Part, number: int) -> Part | None:
    if node.message is not None:  # a message/rfc822 part: its parts are the encapsulated message's
        node = node.message
    if node.children:
        return node.children[number - 1] if number <= len(node.children) else None
    return node if number == 1 else None  # part 1 of a single-part entity is its body


def section_bytes(root: Part, whole: bytes, section: Section) -> bytes:
    """The octets of ``section`` of the message ``whole`` (its CRLF form, parsed as ``root``);
    empty for a part that does not exist."""
    node: Part | None = root
    for number in section.parts:
        node = _child(node, number) if node is not None else None
    if node is None:
        return b""
    if section.parts:
        if section.text == "":
            return node.body
        if section.text == "MIME":
            return node.header
        if node.message is None:
            return b""  # HEADER and TEXT of a part exist only for a message/rfc822
        node = node.message
    elif section.text == "":
        return whole
    if section.text == "TEXT":
        return node.body
    if section.text == "HEADER":
        return node.header
    return header_fields(node.header, section.fields, exclude=section.text.endswith(".NOT"))


def header_fields(header: bytes, names: tuple[str, ...], *, exclude: bool) -> bytes:
    """HEADER.FIELDS (and .NOT): the matching header lines, folding kept, then the blank line."""
    wanted = set(names)
    out: list[bytes] = []
    keep = False
    for line in header.split(CRLF):
        if not line:
            continue
        if line[:1] in (b" ", b"\t"):
            if keep:
                out.append(line)
            continue
        name = line.split(b":", 1)[0].strip().decode("ascii", "replace").lower()
        keep = (name in wanted) != exclude
        if keep:
            out.append(line)
    return b"".join(line + CRLF for line in out) + CRLF
