"""OpenSSL's subject hash of a certificate (``openssl x509 -subject_hash``), without openssl.

OpenSSL finds a CA in a directory (its CA *path*, ``/etc/ssl/certs``) by a link named
``<hash>.0``, the hash being of the certificate's subject in a canonical form. Each lab host with
TLS on makes that link for the lab CA when its role starts; running ``openssl x509`` for it cost
20 ms of CPU per host, five at a time on two cores during ``labctl up --tls``. This computes the
same value in Python from the certificate's DER (``tests/unit/test_certhash.py`` checks it against
openssl for several subjects).

The canonical form (OpenSSL's ``x509_name_canon`` and ``asn1_string_canon``): every attribute
value of a string type becomes a UTF8String, with leading and trailing white space removed, runs
of white space made one space, and ASCII letters lower-cased; other values are kept as they are;
the relative distinguished names are DER-encoded one after another, without the outer SEQUENCE.
The hash is the first four octets of its SHA-1, read as a little-endian number.
"""

from __future__ import annotations

import base64
import hashlib
import re

SEQUENCE, SET, UTF8STRING = 0x30, 0x31, 0x0C
# The string types OpenSSL canonicalises (ASN1_MASK_CANON), and how each is decoded.
_STRING_TYPES = {
    0x0C: "utf-8",  # UTF8String
    0x13: "latin-1",  # PrintableString
    0x14: "latin-1",  # T61String (OpenSSL reads it as Latin-1)
    0x16: "latin-1",  # IA5String
    0x1A: "latin-1",  # VisibleString
    0x1C: "utf-32-be",  # UniversalString
    0x1E: "utf-16-be",  # BMPString
}
_SPACE = re.compile(rb"[ \t\n\v\f\r]+")  # ossl_isspace
_PEM = re.compile(r"-----BEGIN CERTIFICATE-----(.+?)-----END CERTIFICATE-----", re.S)


def _tlv(data: bytes, at: int) -> tuple[int, int, int]:
    """(tag, start of the contents, end of the contents) of the DER element at ``at``."""
    if at + 2 > len(data):
        raise ValueError("truncated DER")
    tag, first = data[at], data[at + 1]
    at += 2
    if first < 0x80:
        length = first
    else:
        n = first & 0x7F
        if n == 0 or n > 4 or at + n > len(data):
            raise ValueError("bad DER length")
        length = int.from_bytes(data[at:at + n], "big")
        at += n
    if at + length > len(data):
        raise ValueError("truncated DER")
    return tag, at, at + length


def _children(data: bytes, start: int, end: int) -> list[tuple[int, int, int, int]]:
    """(tag, element start, contents start, end) of each element in ``data[start:end]``."""
    out = []
    while start < end:
        tag, body, stop = _tlv(data, start)
        out.append((tag, start, body, stop))
        start = stop
    return out


def _der(tag: int, contents: bytes) -> bytes:
    n = len(contents)
    if n < 0x80:
        return bytes([tag, n]) + contents
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + contents


def _canon_value(tag: int, value: bytes, raw: bytes) -> bytes:
    encoding = _STRING_TYPES.get(tag)
    if encoding is None:
        return raw
    text = value.decode(encoding).encode("utf-8")
    text = _SPACE.sub(b" ", text.strip(b" \t\n\v\f\r"))
    # ASCII letters only: OpenSSL lower-cases octets below 0x80 and leaves UTF-8 sequences alone.
    return _der(UTF8STRING, bytes(c + 32 if 0x41 <= c <= 0x5A else c for c in text))


def subject_of(der: bytes) -> tuple[int, int]:
    """Where the certificate's subject Name's contents start and end in its DER."""
    tag, body, end = _tlv(der, 0)
    if tag != SEQUENCE:
        raise ValueError("not a certificate")
    _, tbs, tbs_end = _tlv(der, body)
    fields = _children(der, tbs, tbs_end)
    if fields and fields[0][0] == 0xA0:  # [0] EXPLICIT version
        fields = fields[1:]
    # serialNumber, signature, issuer, validity, subject
    if len(fields) < 5 or fields[4][0] != SEQUENCE:
        raise ValueError("no subject in the certificate")
    _, _, start, stop = fields[4]
    return start, stop


def canonical_subject(der: bytes) -> bytes:
    start, stop = subject_of(der)
    canon = b""
    for tag, _, body, end in _children(der, start, stop):
        if tag != SET:
            raise ValueError("a relative distinguished name is not a SET")
        entries = []
        for atv_tag, _, atv_body, atv_end in _children(der, body, end):
            parts = _children(der, atv_body, atv_end)
            if atv_tag != SEQUENCE or len(parts) != 2:
                raise ValueError("an attribute is not a SEQUENCE of type and value")
            (_, oid_at, _, oid_end), (vtag, v_at, v_body, v_end) = parts
            value = _canon_value(vtag, der[v_body:v_end], der[v_at:v_end])
            entries.append(_der(SEQUENCE, der[oid_at:oid_end] + value))
        canon += _der(SET, b"".join(sorted(entries)))  # DER orders a SET OF by encoding
    return canon


def subject_hash(pem: str) -> str:
    """``openssl x509 -subject_hash`` of the first certificate in ``pem``: 8 hex digits."""
    found = _PEM.search(pem)
    if found is None:
        raise ValueError("no PEM certificate")
    digest = hashlib.sha1(canonical_subject(base64.b64decode(found.group(1))), usedforsecurity=False).digest()
    return f"{int.from_bytes(digest[:4], 'little'):08x}"
