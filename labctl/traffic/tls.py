"""TLS inside a captured connection: its records, its handshake, and (with the lab's key log) its plaintext.

Pure: two reassembled streams (:class:`~labctl.traffic.tcp.StreamView`) and a :class:`KeyLog` in,
a :class:`TlsSession` out, which is what an outsider sees (the records: types, sizes, times; the
handshake in clear: version, cipher, SNI, and in TLS 1.2 the certificate) and, where the key log
has the session's secrets, each direction's application data as a StreamView of its own, each
chunk stamped with the capture time of the record that carried it, for the dialogue decoders.

What is implemented, and where it comes from:

* the record layer (RFC 8446 §5.1, RFC 5246 §6.2), handshake messages reassembled across records;
* the key log in NSS key log format (``SSLKEYLOGFILE``): ``CLIENT_RANDOM`` for TLS 1.2,
  ``CLIENT/SERVER_HANDSHAKE_TRAFFIC_SECRET`` and ``CLIENT/SERVER_TRAFFIC_SECRET_0`` for TLS 1.3,
  matched by the ClientHello's random;
* TLS 1.3: HKDF-Expand-Label (RFC 8446 §7.1), the traffic keys and per-record nonce (§5.3), the
  inner content type after the padding (§5.4), the switch to the application secret after each
  side's Finished, KeyUpdate (§4.6.3, §7.2);
* TLS 1.2: the PRF and key expansion (RFC 5246 §5, §6.3), AES-GCM with its explicit nonce
  (RFC 5288 §3) and ChaCha20-Poly1305 with the XORed one (RFC 7905 §2);
* AES-128/256-GCM and ChaCha20-Poly1305 from the ``cryptography`` package.

Never guessed: a record that does not open (no keys, a bad tag, a cipher not implemented, octets
the capture missed) is reported as such (:attr:`TlsRecord.problem`) and leaves a hole of its size
in the plaintext (a :class:`~labctl.traffic.tcp.Gap`), so what came before it, and what the later
records carry if they open, still decode. Nothing here raises on any bytes.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from labctl.traffic.model import TlsSummary
from labctl.traffic.tcp import Gap, StreamView

# Record content types (RFC 8446 §5.1, RFC 6520).
CHANGE_CIPHER_SPEC, ALERT, HANDSHAKE, APPLICATION_DATA, HEARTBEAT = 20, 21, 22, 23, 24
RECORD_TYPES: Mapping[int, str] = {CHANGE_CIPHER_SPEC: "change cipher spec", ALERT: "alert",
                                   HANDSHAKE: "handshake", APPLICATION_DATA: "application data",
                                   HEARTBEAT: "heartbeat"}
# Handshake message types (RFC 8446 §4, RFC 5246 §7.4).
CLIENT_HELLO, SERVER_HELLO, NEW_SESSION_TICKET, ENCRYPTED_EXTENSIONS, CERTIFICATE = 1, 2, 4, 8, 11
SERVER_KEY_EXCHANGE, CERTIFICATE_REQUEST, SERVER_HELLO_DONE, CERTIFICATE_VERIFY = 12, 13, 14, 15
CLIENT_KEY_EXCHANGE, FINISHED, KEY_UPDATE = 16, 20, 24
HANDSHAKE_TYPES: Mapping[int, str] = {
    CLIENT_HELLO: "ClientHello", SERVER_HELLO: "ServerHello", NEW_SESSION_TICKET: "NewSessionTicket",
    ENCRYPTED_EXTENSIONS: "EncryptedExtensions", CERTIFICATE: "Certificate",
    SERVER_KEY_EXCHANGE: "ServerKeyExchange", CERTIFICATE_REQUEST: "CertificateRequest",
    SERVER_HELLO_DONE: "ServerHelloDone", CERTIFICATE_VERIFY: "CertificateVerify",
    CLIENT_KEY_EXCHANGE: "ClientKeyExchange", FINISHED: "Finished", KEY_UPDATE: "KeyUpdate"}
# Alert descriptions (RFC 8446 §6, RFC 5246 §7.2): a client refusing a certificate says why in one.
ALERTS: Mapping[int, str] = {
    0: "close_notify", 10: "unexpected_message", 20: "bad_record_mac", 22: "record_overflow",
    40: "handshake_failure", 42: "bad_certificate", 43: "unsupported_certificate", 44: "certificate_revoked",
    45: "certificate_expired", 46: "certificate_unknown", 47: "illegal_parameter", 48: "unknown_ca",
    49: "access_denied", 50: "decode_error", 51: "decrypt_error", 70: "protocol_version",
    71: "insufficient_security", 80: "internal_error", 86: "inappropriate_fallback", 90: "user_canceled",
    109: "missing_extension", 110: "unsupported_extension", 112: "unrecognized_name",
    116: "certificate_required", 120: "no_application_protocol"}
# Extensions read from the hellos (RFC 6066 §3, RFC 8446 §4.2.1).
EXT_SERVER_NAME, EXT_SUPPORTED_VERSIONS = 0, 43
TLS13 = 0x0304
VERSIONS: Mapping[int, str] = {0x0300: "SSL 3.0", 0x0301: "TLS 1.0", 0x0302: "TLS 1.1", 0x0303: "TLS 1.2",
                               TLS13: "TLS 1.3"}
# RFC 8446 §4.1.3: a ServerHello with this random is a HelloRetryRequest.
HELLO_RETRY_RANDOM = bytes.fromhex("cf21ad74e59a6111be1d8c021e65b891c2a211167abb8c5e079e09e2c8a8339c")
# A record's length may not exceed 2^14 + 2048 octets (RFC 5246 §6.2.3; TLS 1.3 is stricter).
MAX_RECORD = (1 << 14) + 2048
HEADER = 5
TAG = 16
# After octets the capture missed at a record boundary, how many lost records to try past (each
# try is an AEAD tag check, which either opens the record or does not: nothing is guessed).
MAX_LOST_RECORDS = 64


@dataclass(frozen=True)
class Suite:
    name: str  # IANA
    aead: str  # "AES-GCM" or "CHACHA20-POLY1305"
    key_len: int
    hash: str  # the PRF's (TLS 1.2) or HKDF's (TLS 1.3) hash
    tls13: bool


def _suites() -> dict[int, Suite]:
    out = {0x1301: Suite("TLS_AES_128_GCM_SHA256", "AES-GCM", 16, "sha256", True),
           0x1302: Suite("TLS_AES_256_GCM_SHA384", "AES-GCM", 32, "sha384", True),
           0x1303: Suite("TLS_CHACHA20_POLY1305_SHA256", "CHACHA20-POLY1305", 32, "sha256", True)}
    for code, kx in ((0x009C, "RSA"), (0x009E, "DHE_RSA"), (0xC02B, "ECDHE_ECDSA"), (0xC02F, "ECDHE_RSA")):
        out[code] = Suite(f"TLS_{kx}_WITH_AES_128_GCM_SHA256", "AES-GCM", 16, "sha256", False)
        out[code + 1] = Suite(f"TLS_{kx}_WITH_AES_256_GCM_SHA384", "AES-GCM", 32, "sha384", False)
    for code, kx in ((0xCCA8, "ECDHE_RSA"), (0xCCA9, "ECDHE_ECDSA"), (0xCCAA, "DHE_RSA")):
        out[code] = Suite(f"TLS_{kx}_WITH_CHACHA20_POLY1305_SHA256", "CHACHA20-POLY1305", 32, "sha256", False)
    return out


SUITES: Mapping[int, Suite] = _suites()


def suite_name(code: int) -> str:
    suite = SUITES.get(code)
    return suite.name if suite is not None else f"cipher suite 0x{code:04X}"


# -- the key log -------------------------------------------------------------------------------------

KEYLOG_LABELS = frozenset({"CLIENT_RANDOM", "CLIENT_HANDSHAKE_TRAFFIC_SECRET", "SERVER_HANDSHAKE_TRAFFIC_SECRET",
                           "CLIENT_TRAFFIC_SECRET_0", "SERVER_TRAFFIC_SECRET_0", "EXPORTER_SECRET",
                           "CLIENT_EARLY_TRAFFIC_SECRET", "EARLY_EXPORTER_SECRET"})


@dataclass
class KeyLog:
    """Secrets by ClientHello random: {client random: {label: secret}} (NSS key log format)."""

    secrets: dict[bytes, dict[str, bytes]] = field(default_factory=dict)
    lines: list[str] = field(default_factory=list)  # the lines read, once each, in order (for export)

    def add_text(self, text: str) -> int:
        """Read key log lines (comments and lines that are not key log lines are skipped); how many were new."""
        new = 0
        for raw in text.splitlines():
            parts = raw.split()
            if len(parts) != 3 or parts[0] not in KEYLOG_LABELS:
                continue
            try:
                random, secret = bytes.fromhex(parts[1]), bytes.fromhex(parts[2])
            except ValueError:
                continue
            if len(random) != 32:
                continue
            known = self.secrets.setdefault(random, {})
            if known.get(parts[0]) != secret:
                known[parts[0]] = secret
                self.lines.append(" ".join(parts))
                new += 1
        return new

    def get(self, client_random: bytes, label: str) -> bytes | None:
        return self.secrets.get(client_random, {}).get(label)

    def text(self) -> str:
        return "".join(line + "\n" for line in self.lines)

    def __len__(self) -> int:
        return len(self.lines)


def parse_keylog(text: str) -> KeyLog:
    keys = KeyLog()
    keys.add_text(text)
    return keys


# -- key derivation ---------------------------------------------------------------------------------


def hkdf_expand_label(secret: bytes, label: str, context: bytes, length: int, hash_name: str) -> bytes:
    """RFC 8446 §7.1: HKDF-Expand(Secret, HkdfLabel, Length) (RFC 5869 §2.3)."""
    full = b"tls13 " + label.encode()
    info = struct.pack("!HB", length, len(full)) + full + bytes([len(context)]) + context
    out, block, i = b"", b"", 1
    while len(out) < length:
        block = hmac.new(secret, block + info + bytes([i]), hash_name).digest()
        out += block
        i += 1
    return out[:length]


def prf(secret: bytes, label: bytes, seed: bytes, length: int, hash_name: str) -> bytes:
    """The TLS 1.2 PRF: P_hash(secret, label + seed) (RFC 5246 §5)."""
    seed = label + seed
    out, a = b"", seed
    while len(out) < length:
        a = hmac.new(secret, a, hash_name).digest()
        out += hmac.new(secret, a + seed, hash_name).digest()
    return out[:length]


AeadOpen = Callable[[bytes, "bytes | memoryview", bytes], bytes]  # (nonce, ciphertext and tag, aad) -> plaintext


def _aead(suite: Suite, key: bytes) -> AeadOpen:
    cipher = AESGCM(key) if suite.aead == "AES-GCM" else ChaCha20Poly1305(key)
    return cipher.decrypt


@dataclass
class _Keys:
    """One direction's current traffic keys, and its record sequence number."""

    open: AeadOpen
    iv: bytes  # TLS 1.3 and ChaCha20 (1.2): the 12-octet IV; AES-GCM 1.2: the 4-octet salt
    seq: int = 0
    secret: bytes = b""  # TLS 1.3: the traffic secret (for KeyUpdate)


def _tls13_keys(suite: Suite, secret: bytes) -> _Keys:
    key = hkdf_expand_label(secret, "key", b"", suite.key_len, suite.hash)
    iv = hkdf_expand_label(secret, "iv", b"", 12, suite.hash)
    return _Keys(_aead(suite, key), iv, 0, secret)


def _xor_nonce(iv: bytes, seq: int) -> bytes:
    return (int.from_bytes(iv, "big") ^ seq).to_bytes(12, "big")


def _tls12_keys(suite: Suite, master: bytes, client_random: bytes, server_random: bytes) -> tuple[_Keys, _Keys]:
    """(client's write keys, server's write keys) from the master secret (RFC 5246 §6.3)."""
    iv_len = 4 if suite.aead == "AES-GCM" else 12
    block = prf(master, b"key expansion", server_random + client_random, 2 * (suite.key_len + iv_len), suite.hash)
    k = suite.key_len
    ckey, skey = block[:k], block[k:2 * k]
    civ, siv = block[2 * k:2 * k + iv_len], block[2 * k + iv_len:2 * k + 2 * iv_len]
    return _Keys(_aead(suite, ckey), civ), _Keys(_aead(suite, skey), siv)


# -- records ---------------------------------------------------------------------------------------


@dataclass(slots=True)
class TlsRecord:
    """One record as the capture has it, and what became of it."""

    from_client: bool
    offset: int  # stream offset of its header
    type: int  # the outer content type
    length: int  # its fragment's length, as the header says
    time: float  # the capture time of its first octet (seconds since the epoch)
    complete: bool  # all of it captured so far (else: still arriving, or cut by a gap)
    missing: int = 0  # octets of it the capture missed
    inner: str | None = None  # what it turned out to be: "handshake (ClientHello)", "application data"
    plaintext: int = 0  # octets of application data it gave
    problem: str | None = None  # why it did not open ("bad tag (not these keys, or altered)")
    sealed: bool = False  # encrypted on the wire (opened if ``inner`` says what it was)

    def describe(self) -> str:
        kind = self.inner or RECORD_TYPES.get(self.type, f"type {self.type}")
        text = f"TLS record: {kind}, {self.length} octet{'' if self.length == 1 else 's'}"
        if self.missing:
            text += f", {self.missing} missing from the capture"
        elif not self.complete:
            text += ", not all captured yet"
        return f"<{text}{f': not decrypted, {self.problem}' if self.problem else ''}>"


@dataclass(frozen=True)
class _Raw:
    offset: int
    type: int
    version: int
    length: int
    fragment: bytes | memoryview  # what was captured of it (shorter than ``length`` if cut); a view, not a copy
    time_ns: int
    missing: int
    after_gap: int  # octets missed just before it (between records: whole records lost)
    header: bytes = b""  # its five octets: TLS 1.3's additional data (RFC 8446 §5.2)


def _records(view: StreamView, start: int) -> tuple[list[_Raw], str | None]:
    """The records of one direction from ``start``; stops at bytes that are not a record header."""
    data, gaps = view.data, [g for g in view.gaps if g.at >= start]
    octets = memoryview(data)
    out: list[_Raw] = []
    pos, gi, lost = start, 0, 0
    while pos < len(data):
        while gi < len(gaps) and gaps[gi].at < pos:
            gi += 1
        if gi < len(gaps) and gaps[gi].at == pos:  # octets missed between two records
            lost += gaps[gi].missing
            gi += 1
            continue
        head = data[pos:pos + HEADER]
        if len(head) < HEADER:
            if head[0] not in RECORD_TYPES or (len(head) > 1 and head[1] != 3):
                return out, "not TLS"
            out.append(_Raw(pos, head[0], 0, 0, b"", view.time_at(pos), 0, lost))  # a header still arriving
            return out, None
        rtype, version, length = head[0], (head[1] << 8) | head[2], (head[3] << 8) | head[4]
        if rtype not in RECORD_TYPES or head[1] != 3 or length > MAX_RECORD:
            return out, "not TLS" if not out else "bytes that are not a TLS record"
        end, missing, j = pos + HEADER + length, 0, gi
        while j < len(gaps) and gaps[j].at < end:
            if gaps[j].at < pos + HEADER:  # the header itself was cut: the records cannot be located
                return out, "octets missing from the capture inside a record header"
            end -= gaps[j].missing
            missing += gaps[j].missing
            j += 1
        end = max(end, pos + HEADER)
        out.append(_Raw(pos, rtype, version, length, octets[pos + HEADER:end], view.time_at(pos), missing, lost,
                        head))
        lost = 0
        pos = end
    return out, None


# -- handshake messages ------------------------------------------------------------------------------


class _Reader:
    """Bounds-checked reads of a handshake message's fields; any overrun raises ValueError."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise ValueError("short")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def number(self, n: int) -> int:
        return int.from_bytes(self.take(n), "big")

    def vector(self, n: int) -> bytes:
        return self.take(self.number(n))

    @property
    def left(self) -> int:
        return len(self.data) - self.pos


def _extensions(r: _Reader) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    if r.left < 2:
        return out
    ext = _Reader(r.vector(2))
    while ext.left >= 4:
        kind = ext.number(2)
        out[kind] = ext.vector(2)
    return out


@dataclass
class _Hello:
    random: bytes
    server_name: str | None = None
    cipher: int | None = None
    version: int | None = None


def _client_hello(body: bytes) -> _Hello:
    r = _Reader(body)
    r.take(2)
    hello = _Hello(r.take(32))
    r.vector(1)  # legacy_session_id
    r.vector(2)  # cipher_suites
    r.vector(1)  # compression
    sni = _extensions(r).get(EXT_SERVER_NAME)
    if sni:
        names = _Reader(_Reader(sni).vector(2))
        while names.left >= 3:
            kind, name = names.number(1), names.vector(2)
            if kind == 0:
                hello.server_name = name.decode("ascii", "replace")
                break
    return hello


def _server_hello(body: bytes) -> _Hello:
    r = _Reader(body)
    legacy = r.number(2)
    hello = _Hello(r.take(32))
    r.vector(1)
    hello.cipher = r.number(2)
    r.take(1)
    chosen = _extensions(r).get(EXT_SUPPORTED_VERSIONS)
    hello.version = int.from_bytes(chosen, "big") if chosen is not None and len(chosen) == 2 else legacy
    return hello


def _subject(der: bytes) -> str | None:
    from cryptography import x509  # only when a certificate is seen: labctl starts without it

    try:
        return x509.load_der_x509_certificate(der).subject.rfc4514_string()
    except ValueError:
        return None


def _certificate(body: bytes, tls13: bool) -> str | None:
    """The subject of the first (the server's own) certificate of a Certificate message."""
    r = _Reader(body)
    if tls13:
        r.vector(1)  # certificate_request_context
    chain = _Reader(r.vector(3))
    return _subject(chain.vector(3))


class _Messages:
    """Handshake messages of one direction, reassembled across records (RFC 8446 §5.1)."""

    def __init__(self) -> None:
        self.buffer = b""

    def feed(self, fragment: bytes | memoryview) -> list[tuple[int, bytes]]:
        self.buffer += fragment
        out = []
        while len(self.buffer) >= 4:
            size = int.from_bytes(self.buffer[1:4], "big")
            if len(self.buffer) < 4 + size:
                break
            out.append((self.buffer[0], self.buffer[4:4 + size]))
            self.buffer = self.buffer[4 + size:]
        return out


# -- a session ----------------------------------------------------------------------------------------


@dataclass
class TlsSession:
    """What a connection's TLS was: a summary, every record, and the application data of each direction."""

    summary: TlsSummary
    records: list[TlsRecord]
    to_server: StreamView  # application data the client sent, as decrypted (empty without keys)
    to_client: StreamView
    keys_found: bool  # the key log had this session's secrets
    # The server's handshake is over as far as the capture shows (TLS 1.3: its Finished opened; 1.2:
    # its ChangeCipherSpec): nothing later changes the summary but records that do not open.
    handshake_done: bool = False
    clear_before: int = 0  # octets the client sent in clear after STARTTLS, before its ClientHello


class _Plain:
    """One direction's plaintext being built: chunks stamped with their record's time, holes as gaps."""

    def __init__(self) -> None:
        self.chunks: list[bytes | memoryview] = []  # joined once, at the end (cheaper than growing one buffer)
        self.size = 0
        self.starts: list[int] = []
        self.stamps: list[int] = []
        self.gaps: list[Gap] = []

    def add(self, chunk: bytes | memoryview, time_ns: int) -> None:
        if chunk:
            self.starts.append(self.size)
            self.stamps.append(time_ns)
            self.chunks.append(chunk)
            self.size += len(chunk)

    def hole(self, missing: int) -> None:
        if missing > 0:
            if self.gaps and self.gaps[-1].at == self.size:
                missing += self.gaps.pop().missing
            self.gaps.append(Gap(self.size, missing))

    def view(self) -> StreamView:
        return StreamView(b"".join(self.chunks), self.starts, self.stamps, self.gaps)


class _Direction:
    """Opening one direction's records, in order."""

    def __init__(self, from_client: bool, raws: list[_Raw], problem: str | None) -> None:
        self.from_client = from_client
        self.raws = raws
        self.stop_problem = problem
        self.messages = _Messages()
        self.plain = _Plain()
        self.records: list[TlsRecord] = []
        self.keys: _Keys | None = None  # the keys records are encrypted with now (None: in clear)
        self.encrypted = False  # past ChangeCipherSpec (1.2) or the ServerHello (1.3)
        self.no_keys: str | None = None  # why the encrypted records cannot be opened
        self.handshake_done = False  # TLS 1.3: this side's Finished seen (the next records use secret 0)


def _open13(keys: _Keys, raw: _Raw) -> tuple[int, bytes | memoryview] | None:
    """(inner content type, content) of a TLS 1.3 record (RFC 8446 §5.2, §5.4), or None if it does not open."""
    try:
        inner = keys.open(_xor_nonce(keys.iv, keys.seq), raw.fragment, raw.header)
    except (InvalidTag, ValueError):
        return None
    # The content as a view: the plaintext is copied once, when a direction's records are joined.
    if inner[-1:] != b"\0":  # no padding (what OpenSSL sends): the type is the last octet
        return (inner[-1], memoryview(inner)[:-1]) if inner else None
    end = len(inner.rstrip(b"\0"))
    if not end:
        return None
    return inner[end - 1], memoryview(inner)[:end - 1]


def _open12(suite: Suite, keys: _Keys, raw: _Raw) -> bytes | None:
    """The content of a TLS 1.2 AEAD record (RFC 5246 §6.2.3.3, RFC 5288 §3, RFC 7905 §2), or None."""
    fragment = raw.fragment
    if suite.aead == "AES-GCM":
        if len(fragment) < 8 + TAG:
            return None
        nonce, sealed = keys.iv + fragment[:8], fragment[8:]
    else:
        nonce, sealed = _xor_nonce(keys.iv, keys.seq), fragment
    if len(sealed) < TAG:
        return None
    aad = struct.pack("!QBHH", keys.seq, raw.type, raw.version, len(sealed) - TAG)
    try:
        return keys.open(nonce, sealed, aad)
    except (InvalidTag, ValueError):
        return None


def alert(content: bytes | memoryview) -> str:
    """An alert record's content, read: "alert (fatal, bad_certificate)"."""
    if len(content) != 2:
        return "alert"
    level = {1: "warning", 2: "fatal"}.get(content[0], f"level {content[0]}")
    return f"alert ({level}, {ALERTS.get(content[1], f'description {content[1]}')})"


def _hs_names(messages: Iterable[tuple[int, bytes]]) -> str:
    return ", ".join(HANDSHAKE_TYPES.get(t, f"type {t}") for t, _ in messages)


def decode(to_server: StreamView, to_client: StreamView, keys: KeyLog | None, *, started: str,
           client_at: int = 0, server_at: int = 0, decrypt: bool = True) -> TlsSession:
    """Read the TLS of one connection from each stream's offset (``client_at``/``server_at``: where the
    TLS begins, after STARTTLS; 0 on an implicit-TLS port). ``decrypt`` False: the records and the
    clear handshake only, as an outsider sees them."""
    skipped = 0
    if started == "starttls":
        skipped = _clear_before_hello(to_server.data, client_at)
    craws, cproblem = _records(to_server, client_at + skipped)
    sraws, sproblem = _records(to_client, server_at)
    client = _Direction(True, craws, cproblem)
    server = _Direction(False, sraws, sproblem)
    state = _State(keys if decrypt else None, decrypt)
    # The ClientHello first (its random picks the secrets), then the server's clear handshake (the
    # version and cipher), then each direction's records in order.
    state.hello(client)
    state.hello(server)
    state.keys_for(client, server)
    for side in (client, server):
        state.run(side)
    summary = state.summary(started, client, server)
    done = server.handshake_done if state.tls13 else server.encrypted
    return TlsSession(summary, sorted(client.records + server.records, key=lambda r: (r.time, not r.from_client)),
                      client.plain.view(), server.plain.view(), state.found, done, skipped)


# A ClientHello's record header: handshake, version 3.1-3.3 (RFC 8446 §5.1: 0x0301 for compatibility).
_HELLO_HEADER = re.compile(rb"\x16\x03[\x01-\x03]..\x01", re.DOTALL)


def _clear_before_hello(data: bytes, at: int) -> int:
    """Octets the client sent after STARTTLS and before its ClientHello: text pipelined in clear
    (the STARTTLS injection of CVE-2024-34083's class: a server must discard it, RFC 3207 §4.2).
    0 when the TLS begins where the dialogue said, or when no ClientHello follows at all."""
    if data[at:at + 1] == b"\x16":
        return 0
    found = _HELLO_HEADER.search(data, at)
    return found.start() - at if found is not None else 0


class _State:
    def __init__(self, keys: KeyLog | None, decrypt: bool) -> None:
        self.keylog = keys
        self.decrypt = decrypt
        self.client_hello: _Hello | None = None
        self.server_hello: _Hello | None = None
        self.suite: Suite | None = None
        self.certificate: str | None = None
        self.found = False
        self.opened = 0  # records that opened

    # The clear part: hellos (and TLS 1.2's Certificate), read before any key is needed.
    def hello(self, side: _Direction) -> None:
        for raw in side.raws:
            if raw.type == CHANGE_CIPHER_SPEC or raw.type == APPLICATION_DATA:
                return
            if raw.type != HANDSHAKE or raw.missing or len(raw.fragment) < raw.length:
                return
            for kind, body in side.messages.feed(raw.fragment):
                try:
                    if kind == CLIENT_HELLO and side.from_client and self.client_hello is None:
                        self.client_hello = _client_hello(body)
                    elif kind == SERVER_HELLO and not side.from_client:
                        hello = _server_hello(body)
                        if hello.random != HELLO_RETRY_RANDOM:
                            self.server_hello = hello
                            self.suite = SUITES.get(hello.cipher or 0)
                    elif kind == CERTIFICATE and not side.from_client and self.certificate is None:
                        self.certificate = _certificate(body, False)
                except ValueError:
                    continue
            if self.tls13 and not side.from_client and self.server_hello is not None:
                return  # TLS 1.3: everything after the ServerHello is encrypted

    @property
    def tls13(self) -> bool:
        return self.server_hello is not None and self.server_hello.version == TLS13

    def keys_for(self, client: _Direction, server: _Direction) -> None:
        """Each direction's first keys from the key log, or why there are none."""
        why: str | None = None
        if not self.decrypt:
            why = ""  # not asked to: no problem to report
        elif self.client_hello is None:
            why = "no ClientHello captured: which session's secrets to use is unknown"
        elif self.server_hello is None:
            why = "no ServerHello captured: the version and cipher are unknown"
        elif self.suite is None:
            why = f"{suite_name(self.server_hello.cipher or 0)} is not one this decoder implements"
        elif self.keylog is None or self.client_hello.random not in self.keylog.secrets:
            why = "the lab's key log has no secrets for this session"
        if why is not None:
            client.no_keys = server.no_keys = why or None
            return
        assert self.keylog is not None and self.suite is not None
        assert self.client_hello is not None and self.server_hello is not None
        suite, random = self.suite, self.client_hello.random
        if self.tls13:
            for side, label in ((client, "CLIENT_HANDSHAKE_TRAFFIC_SECRET"),
                                (server, "SERVER_HANDSHAKE_TRAFFIC_SECRET")):
                secret = self.keylog.get(random, label)
                if secret is None:
                    side.no_keys = f"the lab's key log has no {label} for this session"
                else:
                    side.keys = _tls13_keys(suite, secret)
                    self.found = True
        else:
            master = self.keylog.get(random, "CLIENT_RANDOM")
            if master is None:
                client.no_keys = server.no_keys = "the lab's key log has no CLIENT_RANDOM for this session"
                return
            ckeys, skeys = _tls12_keys(suite, master, random, self.server_hello.random)
            client.keys, server.keys = ckeys, skeys
            self.found = True

    def _next13(self, side: _Direction) -> None:
        """TLS 1.3: this side's Finished was sent; its next records use its application secret."""
        label = "CLIENT_TRAFFIC_SECRET_0" if side.from_client else "SERVER_TRAFFIC_SECRET_0"
        assert self.keylog is not None and self.client_hello is not None and self.suite is not None
        secret = self.keylog.get(self.client_hello.random, label)
        side.handshake_done = True
        if secret is None:
            side.keys, side.no_keys = None, f"the lab's key log has no {label} for this session"
        else:
            side.keys = _tls13_keys(self.suite, secret)

    def run(self, side: _Direction) -> None:
        tls13 = self.tls13
        clear = _Messages()  # the clear handshake, again (for the records' descriptions)
        side.messages = _Messages()  # the encrypted one
        records = side.records
        for raw in side.raws:
            complete = raw.missing == 0 and len(raw.fragment) == raw.length and raw.length > 0
            if raw.after_gap:
                side.plain.hole(raw.after_gap)  # the records the capture missed: their size, sealed
            sealed = side.encrypted or (tls13 and raw.type == APPLICATION_DATA)
            read = self._one(side, raw, complete, clear, tls13)
            if read is None:
                return  # a record still arriving (--follow): nothing after it yet
            records.append(TlsRecord(side.from_client, raw.offset, raw.type, raw.length, raw.time_ns / 1e9, complete,
                                     raw.missing, *read, sealed))

    def _one(self, side: _Direction, raw: _Raw, complete: bool, clear: _Messages,
             tls13: bool) -> tuple[str | None, int, str | None] | None:
        """One record read: (what it was, octets of application data, why it did not open); None: it
        is still arriving."""
        if not (side.encrypted or (tls13 and raw.type == APPLICATION_DATA)):
            if raw.type == HANDSHAKE and complete:
                return f"handshake ({_hs_names(clear.feed(raw.fragment))})", 0, None
            if raw.type == ALERT and complete:
                return alert(raw.fragment), 0, None
            if raw.type == CHANGE_CIPHER_SPEC and not tls13:
                side.encrypted = True  # TLS 1.2: what follows is encrypted (RFC 5246 §7.1)
            return None if not complete and not raw.missing and raw.type == HANDSHAKE else (None, 0, None)
        side.encrypted = True
        keys = side.keys
        if not complete:
            if not raw.missing:
                return None
            # Cut by a gap: cannot open; the sequence number moves on past it.
            side.plain.hole(raw.length)
            if keys is not None:
                keys.seq += 1
            return None, 0, "octets missing from the capture"
        if keys is None:
            side.plain.hole(max(raw.length - TAG, 0))
            return None, 0, None  # sealed, as an outsider sees it: the note says why (no keys)
        opened = self._open(keys, raw, tls13)
        if opened is None:
            side.plain.hole(max(raw.length - TAG, 0))
            keys.seq += 1
            return None, 0, "bad tag (not this session's keys, or the record was altered)"
        keys.seq += 1
        self.opened += 1
        ctype, content = opened
        if ctype == APPLICATION_DATA:
            side.plain.add(content, raw.time_ns)
            return "application data", len(content), None
        if ctype == ALERT:
            return alert(content), 0, None
        if ctype != HANDSHAKE:
            return RECORD_TYPES.get(ctype, f"type {ctype}"), 0, None
        got = side.messages.feed(content)
        for kind, body in got:
            if kind == CERTIFICATE and not side.from_client and tls13 and self.certificate is None:
                try:
                    self.certificate = _certificate(body, True)
                except ValueError:
                    pass
            elif kind == FINISHED and tls13 and not side.handshake_done:
                self._next13(side)
            elif kind == KEY_UPDATE and tls13 and side.keys is not None:
                # RFC 8446 §7.2: the next secret, from this one; sequence numbers restart.
                assert self.suite is not None
                nxt = hkdf_expand_label(side.keys.secret, "traffic upd", b"",
                                        hashlib.new(self.suite.hash).digest_size, self.suite.hash)
                side.keys = _tls13_keys(self.suite, nxt)
        return (f"handshake ({_hs_names(got)})" if got else "handshake"), 0, None

    def _open(self, keys: _Keys, raw: _Raw, tls13: bool) -> tuple[int, bytes | memoryview] | None:
        """Open a record; after octets missed between records, also try the sequence numbers of the
        records they may have held (each try is a tag check: it opens or it does not)."""
        assert self.suite is not None
        tries = MAX_LOST_RECORDS if raw.after_gap else 1
        first = keys.seq
        for extra in range(tries):
            keys.seq = first + extra
            if tls13:
                opened = _open13(keys, raw)
                if opened is not None:
                    return opened
            else:
                content = _open12(self.suite, keys, raw)
                if content is not None:
                    return raw.type, content
        keys.seq = first
        return None

    def summary(self, started: str, client: _Direction, server: _Direction) -> TlsSummary:
        hello, sh = self.client_hello, self.server_hello
        problems = [r.problem for r in client.records + server.records if r.problem]
        problem = next((p for p in (client.stop_problem, server.stop_problem) if p), None)
        if problems:
            problem = problems[0] if problem is None else problem
        decrypted = self.opened > 0
        if problem is None and (client.no_keys or server.no_keys) and self.decrypt:
            problem = client.no_keys or server.no_keys
        return TlsSummary(started,
                          version=VERSIONS.get(sh.version or 0, f"version 0x{sh.version or 0:04X}") if sh else None,
                          cipher=suite_name(sh.cipher) if sh is not None and sh.cipher is not None else None,
                          server_name=hello.server_name if hello else None, certificate=self.certificate,
                          decrypted=decrypted, problem=problem)


def note(summary: TlsSummary) -> str:
    """The note a conversation shows: "STARTTLS, then TLS 1.3, TLS_AES_256_GCM_SHA384, certificate CN=..."."""
    parts = [summary.version or "TLS (no ServerHello captured)"]
    if summary.cipher:
        parts.append(summary.cipher)
    if summary.server_name:
        parts.append(f"SNI {summary.server_name}")
    if summary.certificate:
        parts.append(f"certificate {summary.certificate}")
    head = "STARTTLS, then " if summary.started == "starttls" else "implicit TLS: "
    text = head + ", ".join(parts)
    if summary.decrypted:
        # A record that did not open is an event of its own: the note does not change with it.
        return text + " (decrypted with the lab's key log)"
    return text + (f"; {summary.problem}" if summary.problem else "")
