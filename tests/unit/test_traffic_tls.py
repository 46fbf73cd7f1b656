"""TLS in a capture: real sessions (Python's ssl, the test CA) decoded with and without the key log.

Every capture here holds a real handshake and real records (tests/unit/tlswire.py): TLS 1.3 with
each of its three AEAD suites, TLS 1.2 with AES-128/256-GCM and ChaCha20-Poly1305, carrying an
SMTP STARTTLS dialogue, POP3 STLS, or implicit TLS on 465/995; then the capture is spoiled the
ways real ones are (a flipped octet, a lost segment, records cut across segments, keys missing).
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from labctl.traffic import render, tls
from labctl.traffic.decode import TrafficDecoder
from labctl.traffic.model import Conversation
from labctl.traffic.pcap import CaptureReader, write_pcapng
from labctl.traffic.tcp import Gap, StreamView
from tests.unit import tlswire
from tests.unit.packets import ANDY, BETTY, MAIL, NAMES, SMTP, Packet, Tcp, pcap

AUTH = b"AUTH PLAIN AGFuZHkAYW5keS1zZWNyZXQ=\r\n"  # andy / andy-secret
MESSAGE = b"From: andy@ouhk.example\r\nSubject: Under TLS\r\nMessage-ID: <tls.1@ouhk.example>\r\n\r\nHi.\r\n"
SMTP_SCRIPT: list[tlswire.Step] = [
    ("s", b"220 smtp.ouhk.example ESMTP maillab\r\n"),
    ("c", b"EHLO andy\r\n"), ("s", b"250-smtp.ouhk.example\r\n250 STARTTLS\r\n"),
    ("c", b"STARTTLS\r\n"), ("s", b"220 2.0.0 ready to start TLS\r\n"),
    ("tls", b""),
    ("c", b"EHLO andy\r\n"), ("s", b"250-smtp.ouhk.example\r\n250 AUTH PLAIN LOGIN\r\n"),
    ("c", AUTH), ("s", b"235 2.7.0 authenticated\r\n"),
    ("c", b"MAIL FROM:<andy@ouhk.example>\r\n"), ("s", b"250 2.1.0 ok\r\n"),
    ("c", b"RCPT TO:<betty@stevenchoy.example>\r\n"), ("s", b"250 2.1.5 ok\r\n"),
    ("c", b"DATA\r\n"), ("s", b"354 go ahead\r\n"),
    ("c", MESSAGE + b".\r\n"), ("s", b"250 2.0.0 queued\r\n"),
    ("c", b"QUIT\r\n"), ("s", b"221 2.0.0 bye\r\n"),
]
SUITES = [("1.3", None, "TLS_AES_256_GCM_SHA384"),
          ("1.3", "TLS_AES_128_GCM_SHA256", "TLS_AES_128_GCM_SHA256"),
          ("1.3", "TLS_CHACHA20_POLY1305_SHA256", "TLS_CHACHA20_POLY1305_SHA256"),
          ("1.2", "ECDHE-ECDSA-AES128-GCM-SHA256", "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"),
          ("1.2", "ECDHE-ECDSA-AES256-GCM-SHA384", "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384"),
          ("1.2", "ECDHE-ECDSA-CHACHA20-POLY1305", "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256")]
_SESSIONS: dict[tuple[str, str, str | None], tlswire.Session] = {}


def session(script: Sequence[tlswire.Step] = SMTP_SCRIPT, version: str = "1.3", cipher: str | None = None,
            name: str = "smtp") -> tlswire.Session:
    key = (name, version, cipher)
    if key not in _SESSIONS:
        _SESSIONS[key] = tlswire.session(script, version=version, cipher=cipher)
    return _SESSIONS[key]


def packets(played: tlswire.Session, client: str = ANDY, server: str = SMTP, port: int = 587, *,
            split: int | None = None, skip: int | None = None, flip: int | None = None) -> list[Packet]:
    """The session as TCP segments: one per write (or ``split``-octet pieces); chunk ``skip`` lost
    from the capture; the last octet of chunk ``flip`` altered."""
    t = Tcp(client, 40312, server, port).handshake()
    for i, (from_client, data) in enumerate(played.chunks):
        if flip == i:
            data = data[:-1] + bytes([data[-1] ^ 0x01])
        pieces = [data[j:j + split] for j in range(0, len(data), split)] if split else [data]
        for piece in pieces:
            if skip == i:  # advance the sequence numbers without a captured segment
                if from_client:
                    t.cseq += len(piece)
                else:
                    t.sseq += len(piece)
                continue
            t.segment(from_client, piece)
    return t.close().packets


def decode(capture: list[Packet], keylog: str | None, *, decrypt: bool = True) -> Conversation:
    decoder = TrafficDecoder(NAMES, decrypt=decrypt)
    if keylog:
        decoder.add_keys(keylog)
    decoder.feed_capture(pcap(capture))
    decoder.tcp.finish()
    [conv] = decoder.conversations()
    return conv


def tls_index(played: tlswire.Session, nth: int, from_client: bool) -> int:
    """The chunk index of the ``nth`` TLS write of one side (0: its first TLS chunk)."""
    return [i for i, (c, _) in enumerate(played.chunks) if i >= played.tls_chunks and c == from_client][nth]


@pytest.mark.parametrize(("version", "cipher", "iana"), SUITES)
def test_starttls_dialogue_decrypted(version: str, cipher: str | None, iana: str) -> None:
    played = session(version=version, cipher=cipher)
    conv = decode(packets(played), played.keylog)
    lines = render.text([conv]).splitlines()
    assert lines[:7] == [
        "andy (10.89.0.10:40312) -> smtp.ouhk.example (10.89.0.25:587)  SMTP",
        "S: 220 smtp.ouhk.example ESMTP maillab",
        "C: EHLO andy",
        "S: 250-smtp.ouhk.example",
        "S: 250 STARTTLS",
        "C: STARTTLS",
        "S: 220 2.0.0 ready to start TLS",
    ]
    assert lines[7] == (f"   [STARTTLS, then TLS {version}, {iana}, SNI mail.stevenchoy.example, certificate "
                        "CN=mail.stevenchoy.example (decrypted with the lab's key log)]")
    assert lines[8:11] == ["C: EHLO andy", "S: 250-smtp.ouhk.example", "S: 250 AUTH PLAIN LOGIN"]
    assert lines[11] == ('C: AUTH PLAIN AGFuZHkAYW5keS1zZWNyZXQ=   (base64 of user "andy", password "andy-secret": '
                         'decrypted from TLS)')
    assert conv.tls is not None and conv.tls.to_json() == {
        "started": "starttls", "version": f"TLS {version}", "cipher": iana, "server_name": tlswire.SERVER_NAME,
        "certificate": "CN=mail.stevenchoy.example", "decrypted": True, "problem": None}
    inside = [e for e in conv.events if e.decrypted]
    assert [e.text for e in inside][-2:] == ["QUIT", "221 2.0.0 bye"]
    assert not any(e.decrypted for e in conv.events[:6]) and all(e.kind != "record" for e in conv.events)
    [message] = conv.messages
    assert (message.subject, message.sender, message.recipients, message.reply_code) == (
        "Under TLS", "andy@ouhk.example", ("betty@stevenchoy.example",), 250)
    auth = next(e for e in inside if e.kind == "auth")
    assert auth.secrets and "andy-secret" not in auth.shown(hide_secrets=True)
    as_json = conv.to_json(hide_secrets=True)
    assert as_json["tls"]["decrypted"] is True
    assert any(e.get("decrypted") and e.get("clear_text_secret") for e in as_json["events"])
    assert "andy-secret" not in str(as_json)


@pytest.mark.parametrize("version", ["1.3", "1.2"])
def test_no_decrypt_shows_what_an_outsider_sees(version: str) -> None:
    played = session(version=version, cipher=None if version == "1.3" else "ECDHE-ECDSA-AES128-GCM-SHA256")
    conv = decode(packets(played), played.keylog, decrypt=False)
    assert not any(e.decrypted for e in conv.events)
    records = [e for e in conv.events if e.kind == "record"]
    assert records[0].text.startswith("<TLS record: handshake (ClientHello), ")
    assert records[0].direction == "C" and records[1].text.startswith("<TLS record: handshake (ServerHello")
    assert sum("application data" in e.text for e in records) >= 14  # seven writes each way
    assert conv.tls is not None and not conv.tls.decrypted and conv.tls.server_name == tlswire.SERVER_NAME
    # TLS 1.2 sends the certificate in clear; TLS 1.3 encrypts it.
    assert conv.tls.certificate == (None if version == "1.3" else "CN=mail.stevenchoy.example")
    assert "andy-secret" not in render.text([conv]) and not conv.messages


def test_missing_keys_said_and_records_shown() -> None:
    played = session()
    conv = decode(packets(played), None)
    assert conv.tls is not None and not conv.tls.decrypted
    assert conv.tls.problem == "the lab's key log has no secrets for this session"
    note = next(e for e in conv.events if e.kind == "tls")
    assert note.text.endswith("; the lab's key log has no secrets for this session")
    records = [e for e in conv.events if e.kind == "record"]
    assert sum(e.text.startswith("<TLS record: application data, ") for e in records) >= 14
    assert not any("not decrypted" in e.text for e in records)  # sealed, as an outsider sees them; the note says why


@pytest.mark.parametrize(("version", "cipher"), [("1.3", None), ("1.2", "ECDHE-ECDSA-CHACHA20-POLY1305")])
def test_flipped_octet_record_shown_undecryptable(version: str, cipher: str | None) -> None:
    played = session(version=version, cipher=cipher)
    bad = tls_index(played, -3, True)  # the client's RCPT TO (its third write from the end)
    conv = decode(packets(played, flip=bad), played.keylog)
    broken = [e for e in conv.events if e.kind == "record"]
    assert len(broken) == 1 and "bad tag" in broken[0].text and broken[0].direction == "C"
    texts = [e.text for e in conv.events if e.decrypted]
    assert "C: EHLO andy" not in texts and "EHLO andy" in texts  # before it: decoded
    assert "221 2.0.0 bye" in texts  # after it, the records still open (their sequence numbers go on)
    assert conv.tls is not None and conv.tls.decrypted and "bad tag" in (conv.tls.problem or "")


def test_lost_segment_is_a_gap_and_later_records_still_open() -> None:
    played = session()
    lost = tls_index(played, 3, False)  # a server reply inside TLS
    conv = decode(packets(played, skip=lost), played.keylog)
    texts = [e.text for e in conv.events]
    assert any(e.kind == "gap" for e in conv.events)
    assert "221 2.0.0 bye" in texts and "QUIT" in texts  # the records after the lost one: opened
    assert texts.index("<47 octets missing from the capture>") > texts.index("250 AUTH PLAIN LOGIN".join(
        ["250-smtp.ouhk.example\n", ""]))


def test_records_split_across_segments() -> None:
    played = session()
    whole = decode(packets(played), played.keylog)
    split = decode(packets(played, split=7), played.keylog)
    assert [(e.kind, e.text, e.decrypted) for e in split.events] == [
        (e.kind, e.text, e.decrypted) for e in whole.events]


def test_gap_inside_a_record() -> None:
    played = session()
    cut = tls_index(played, 5, True)
    conv = decode(_cut_inside(played, cut), played.keylog)
    broken = [e for e in conv.events if e.kind == "record"]
    assert broken and "missing from the capture" in broken[0].text
    assert "221 2.0.0 bye" in [e.text for e in conv.events]


def _cut_inside(played: tlswire.Session, index: int) -> list[Packet]:
    """The capture with 10 octets from the middle of chunk ``index`` missed."""
    t = Tcp(ANDY, 40312, SMTP, 587).handshake()
    for i, (from_client, data) in enumerate(played.chunks):
        if i == index:
            t.segment(from_client, data[:20])
            t.cseq += 10
            t.segment(from_client, data[30:])
        else:
            t.segment(from_client, data)
    return t.close().packets


def test_pop3_stls_and_implicit_995() -> None:
    stls = [("s", b"+OK POP3 ready\r\n"), ("c", b"STLS\r\n"), ("s", b"+OK begin TLS\r\n"), ("tls", b""),
            ("c", b"USER betty\r\n"), ("s", b"+OK\r\n"), ("c", b"PASS betty-secret\r\n"), ("s", b"+OK in\r\n"),
            ("c", b"QUIT\r\n"), ("s", b"+OK bye\r\n")]
    played = session(stls, name="pop3")
    conv = decode(packets(played, BETTY, MAIL, 110), played.keylog)
    lines = render.text([conv]).splitlines()
    assert lines[1:4] == ["S: +OK POP3 ready", "C: STLS", "S: +OK begin TLS"]
    assert lines[4].startswith("   [STARTTLS, then TLS 1.3, TLS_AES_256_GCM_SHA384")
    assert lines[5].startswith("C: USER betty") and any("betty-secret" in line for line in lines)
    implicit = [("tls", b""), ("s", b"+OK POP3 ready\r\n"), ("c", b"USER betty\r\n"), ("s", b"+OK\r\n"),
                ("c", b"QUIT\r\n"), ("s", b"+OK bye\r\n")]
    played = session(implicit, name="pop3s")
    conv = decode(packets(played, BETTY, MAIL, 995), played.keylog)
    assert conv.protocol == "pop3" and conv.tls is not None and conv.tls.started == "implicit"
    lines = render.text([conv]).splitlines()
    assert lines[1].startswith("   [implicit TLS: TLS 1.3, TLS_AES_256_GCM_SHA384")
    assert lines[2:] == ["S: +OK POP3 ready", "C: USER betty", "S: +OK", "C: QUIT", "S: +OK bye"]


def test_implicit_465_and_not_tls() -> None:
    script = [("tls", b""), *[s for s in SMTP_SCRIPT if s[0] != "tls"][:1], ("c", b"QUIT\r\n"),
              ("s", b"221 bye\r\n")]
    played = session(script, name="smtps")
    conv = decode(packets(played, port=465), played.keylog)
    assert [e.text for e in conv.events if e.decrypted] == ["220 smtp.ouhk.example ESMTP maillab", "QUIT",
                                                              "221 bye"]
    clear = Tcp(ANDY, 40313, SMTP, 465).handshake().s(b"220 hello in clear\r\n").close().packets
    conv = decode(clear, None)
    assert not conv.decodable and conv.tls is not None and conv.tls.problem == "not TLS"


def test_keys_arriving_later_re_decode() -> None:
    """--follow: the records first, the key log's lines later; the same decoder then opens them."""
    played = session()
    decoder = TrafficDecoder(NAMES)
    decoder.feed_capture(pcap(packets(played)))
    [before] = decoder.conversations()
    assert not any(e.decrypted for e in before.events)
    assert decoder.add_keys(played.keylog) > 0
    [after] = decoder.conversations()
    assert any(e.decrypted and e.text == "QUIT" for e in after.events)
    assert decoder.add_keys(played.keylog) == 0  # the same lines again: nothing new


def test_keylog_parsing() -> None:
    random = "ab" * 32
    keys = tls.parse_keylog(f"# comment\nCLIENT_RANDOM {random} {'01' * 48}\nbogus line\n"
                            f"CLIENT_TRAFFIC_SECRET_0 {random} zz\nSERVER_TRAFFIC_SECRET_0 {random[:10]} 00\n")
    assert len(keys) == 1 and keys.get(bytes.fromhex(random), "CLIENT_RANDOM") == b"\x01" * 48


def test_hkdf_expand_label_rfc8448() -> None:
    """RFC 8448 §3 (Simple 1-RTT Handshake): the server's handshake key and IV from its secret."""
    secret = bytes.fromhex("b67b7d690cc16c4e75e54213cb2d37b4e9c912bcded9105d42befd59d391ad38")
    assert tls.hkdf_expand_label(secret, "key", b"", 16, "sha256").hex() == "3fce516009c21727d0f2e4e86ee403bc"
    assert tls.hkdf_expand_label(secret, "iv", b"", 12, "sha256").hex() == "5d313eb2671276ee13000b30"


def test_pcapng_secrets_block_round_trip() -> None:
    played = session()
    import io

    out = io.BytesIO()
    write_pcapng(CaptureReader(pcap(packets(played))), out, keylog=played.keylog)
    decoder = TrafficDecoder(NAMES)
    decoder.feed_capture(out.getvalue())
    decoder.tcp.finish()
    [conv] = decoder.conversations()
    assert conv.tls is not None and conv.tls.decrypted


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600), st.binary(max_size=600), st.integers(0, 40), st.booleans())
def test_record_parser_never_raises(client: bytes, server: bytes, at: int, keyed: bool) -> None:
    played = session()
    keys = tls.parse_keylog(played.keylog) if keyed else None
    # Real hellos first (so the key path is taken), then any bytes; and any bytes alone.
    hello_c = b"".join(d for c, d in played.chunks[played.tls_chunks:played.tls_chunks + 1] if c)
    for c_data, s_data in ((client, server), (hello_c + client, server)):
        views = [StreamView(d, [0], [1], [Gap(min(at, len(d)), 5)] if at % 3 == 0 else []) for d in (c_data, s_data)]
        out = tls.decode(views[0], views[1], keys, started="implicit")
        assert isinstance(out.summary.decrypted, bool)
        tls.note(out.summary)
        for record in out.records:
            record.describe()


TSHARK = shutil.which("tshark")


@pytest.mark.skipif(TSHARK is None, reason="tshark is not installed on this machine")
@pytest.mark.parametrize(("version", "cipher"), [("1.3", None), ("1.2", "ECDHE-ECDSA-AES256-GCM-SHA384")])
def test_tshark_decrypts_the_same_dialogue(tmp_path: Path, version: str, cipher: str | None) -> None:
    """The pcapng with its Decryption Secrets Block: tshark, with no settings, reads the same plaintext."""
    played = session(version=version, cipher=cipher)
    capture = tmp_path / "tls.pcapng"
    with capture.open("wb") as fh:
        write_pcapng(CaptureReader(pcap(packets(played))), fh, keylog=played.keylog)
    assert TSHARK is not None
    ran = subprocess.run([TSHARK, "-n", "-r", str(capture), "-q", "-z", "follow,tls,raw,0"],
                         capture_output=True, text=True, check=True, timeout=120)
    # Node 0 is the side tshark saw first; the second node's data is indented with a tab.
    tabbed_is_client = f"Node 0: {SMTP}:587" in ran.stdout
    theirs_c, theirs_s = b"", b""
    for line in ran.stdout.splitlines():
        if not line or line.startswith(("=", "Follow:", "Filter:", "Node ")):
            continue
        if line.startswith("\t") == tabbed_is_client:
            theirs_c += bytes.fromhex(line.strip())
        else:
            theirs_s += bytes.fromhex(line.strip())
    decoder = TrafficDecoder(NAMES)
    decoder.feed_capture(capture.read_bytes())
    decoder.tcp.finish()
    [conn] = decoder.tcp.connections
    tls_at = sum(len(d) for c, d in played.chunks[:played.tls_chunks] if c)
    server_at = sum(len(d) for c, d in played.chunks[:played.tls_chunks] if not c)
    ours = tls.decode(conn.to_server.view(), conn.to_client.view(), decoder.keys, started="starttls",
                      client_at=tls_at, server_at=server_at)
    assert theirs_c == ours.to_server.data and theirs_s == ours.to_client.data
    assert b"AUTH PLAIN" in theirs_c
    ran = subprocess.run([TSHARK, "-n", "-r", str(capture), "-Y", "smtp.req", "-T", "fields",
                          "-e", "smtp.req.command"], capture_output=True, text=True, check=True, timeout=120)
    [conv] = decoder.conversations()
    # tshark's smtp.req.command is the first four characters of the line ("STAR" for STARTTLS).
    ours_commands = [e.text[:4] for e in conv.events if e.direction == "C" and e.kind in ("command", "auth")]
    theirs_commands = ran.stdout.split()
    assert theirs_commands == ours_commands


def test_trace_six_steps_through_tls() -> None:
    """Submission on 587 under STARTTLS, relay in clear on 25, POP3 on 995: the six steps, from decrypted events."""
    from labctl.traffic import journey
    from tests.unit import test_traffic_journey as clear

    submit = packets(session(), ANDY, SMTP, 587)
    pop3s = [("tls", b""), ("s", b"+OK ready\r\n"), ("c", b"USER betty\r\n"), ("s", b"+OK\r\n"),
             ("c", b"PASS pw\r\n"), ("s", b"+OK\r\n"), ("c", b"RETR 1\r\n"),
             ("s", b"+OK message follows\r\n" + b"Received: from andy\r\n" + MESSAGE + b".\r\n"),
             ("c", b"QUIT\r\n"), ("s", b"+OK bye\r\n")]
    fetched = session(pop3s, name="trace-pop3s")
    fetch = packets(fetched, BETTY, MAIL, 995)
    for i, p in enumerate(fetch):
        p.time = clear.T0 + 10 + i * 0.001
    relay = clear._smtp(SMTP, MAIL, 42002, clear.T0 + 4, b"Received: from andy\r\n" + MESSAGE, "smtp",
                        b"250 2.0.0 M9 Message accepted\r\n")
    decoder = TrafficDecoder(NAMES)
    decoder.add_keys(session().keylog + fetched.keylog)
    decoder.feed_capture(pcap(sorted(submit + clear._dns(clear.T0 + 1) + relay + fetch, key=lambda p: p.time)))
    decoder.tcp.finish()
    j = journey.trace(decoder.conversations(), message_id="<tls.1@ouhk.example>")
    assert j.complete, journey.timeline(j)
    text = journey.timeline(j)
    assert "SMTP to port 587, under TLS 1.3" in text and "POP3 from port 995, under TLS 1.3" in text


def test_cli_keylog_no_decrypt_and_hide_secrets(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from labctl import cli

    played = session()
    capture, keylog = tmp_path / "smtp.pcap", tmp_path / "keylog.txt"
    capture.write_bytes(pcap(packets(played)))
    keylog.write_text(played.keylog)
    assert cli.main(["traffic", "--pcap", str(capture), "--keylog", str(keylog), "--json", "--hide-secrets"]) == 0
    [conv] = json.loads(capsys.readouterr().out)
    assert conv["tls"]["decrypted"] is True and conv["tls"]["cipher"] == "TLS_AES_256_GCM_SHA384"
    auth = next(e for e in conv["events"] if e["kind"] == "auth")
    assert auth["decrypted"] and auth["clear_text_secret"] and "andy-secret" not in auth["text"]
    assert cli.main(["traffic", "--pcap", str(capture), "--keylog", str(keylog), "--no-decrypt"]) == 0
    shown = capsys.readouterr().out
    assert "EHLO andy" in shown and "AUTH" not in shown and "C: <TLS record: handshake (ClientHello)" in shown
    assert cli.main(["traffic", "--pcap", str(capture)]) == 0  # no key log: the records, and why
    assert "the lab's key log has no secrets for this session" in capsys.readouterr().out


@pytest.mark.parametrize("look", [1, 2, 3, 5, 8])
@pytest.mark.parametrize(("version", "cipher"), [("1.3", None), ("1.2", "ECDHE-ECDSA-AES128-GCM-SHA256")])
def test_follow_through_tls_prints_what_one_full_decode_prints(version: str, cipher: str | None, look: int) -> None:
    from tests.unit.test_traffic_follow import full_decode, replayed

    played = session(version=version, cipher=cipher)
    frames = list(CaptureReader(pcap(packets(played))))
    full, followed = full_decode(frames, played.keylog), replayed(frames, [look], played.keylog)
    assert followed == full
    assert any("decrypted with the lab's key log" in text for _, _, _, text in next(iter(full.values())))


def test_follow_with_keys_arriving_after_the_records() -> None:
    from labctl.traffic.follow import Follower

    played = session()
    frames = list(CaptureReader(pcap(packets(played))))
    decoder, follower = TrafficDecoder(NAMES), Follower()
    printed: list[str] = []
    half = len(frames) // 2
    for i in range(len(frames)):
        decoder.feed_frames(frames[i:i + 1])
        if i == half:  # the key log read late: nothing printed so far is taken back
            decoder.add_keys(played.keylog)
        printed += [e.text for _, events in follower.poll(decoder.conversations(), now=decoder.latest) for e in events]
    decoder.tcp.finish()
    printed += [e.text for _, events in follower.poll(decoder.conversations(), final=True) for e in events]
    [conv] = decoder.conversations()
    assert printed == [e.text for e in conv.events]
    assert not any(e.kind == "record" for e in conv.events) and "QUIT" in printed


def test_imap_starttls_and_implicit_993() -> None:
    starttls = [("s", b"* OK IMAP4rev1 ready\r\n"), ("c", b"a1 STARTTLS\r\n"), ("s", b"a1 OK begin TLS\r\n"),
                ("tls", b""), ("c", b"a2 LOGIN betty betty-secret\r\n"), ("s", b"a2 OK logged in\r\n"),
                ("c", b"a3 LOGOUT\r\n"), ("s", b"* BYE\r\na3 OK bye\r\n")]
    played = session(starttls, name="imap")
    conv = decode(packets(played, BETTY, MAIL, 143), played.keylog)
    lines = render.text([conv]).splitlines()
    assert lines[1:4] == ["S: * OK IMAP4rev1 ready", "C: a1 STARTTLS", "S: a1 OK begin TLS"]
    assert lines[4].startswith("   [STARTTLS, then TLS 1.3")
    assert lines[5] == "C: a2 LOGIN betty betty-secret   (a password, decrypted from TLS)"
    assert lines[6:] == ["S: a2 OK logged in", "C: a3 LOGOUT", "S: * BYE", "S: a3 OK bye"]
    implicit = [("tls", b""), ("s", b"* OK IMAP4rev1 ready\r\n"), ("c", b"a1 LOGOUT\r\n"), ("s", b"a1 OK bye\r\n")]
    played = session(implicit, name="imaps")
    conv = decode(packets(played, BETTY, MAIL, 993), played.keylog)
    assert conv.protocol == "imap" and [e.text for e in conv.events if e.decrypted] == [
        "* OK IMAP4rev1 ready", "a1 LOGOUT", "a1 OK bye"]


def _seal13(secret: bytes, seq: int, ctype: int, content: bytes) -> bytes:
    """A TLS 1.3 record (TLS_AES_256_GCM_SHA384) sealed with the traffic keys of ``secret`` (RFC 8446 §5.2)."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    key = tls.hkdf_expand_label(secret, "key", b"", 32, "sha384")
    iv = tls.hkdf_expand_label(secret, "iv", b"", 12, "sha384")
    inner = content + bytes([ctype])
    header = bytes([23, 3, 3]) + (len(inner) + 16).to_bytes(2, "big")
    nonce = (int.from_bytes(iv, "big") ^ seq).to_bytes(12, "big")
    return header + AESGCM(key).encrypt(nonce, inner, header)


def test_key_update_switches_to_the_next_secret() -> None:
    """The client sends KeyUpdate (RFC 8446 §4.6.3), then QUIT under the next secret (§7.2); Python's
    ssl cannot send one, so those two records are sealed here, after a real session's EHLO."""
    script = [s for s in SMTP_SCRIPT[:8]]  # up to the EHLO inside TLS and its reply
    played = session(script, name="keyupdate")
    keys = tls.parse_keylog(played.keylog)
    [(random, secrets)] = keys.secrets.items()
    client0 = secrets["CLIENT_TRAFFIC_SECRET_0"]
    client1 = tls.hkdf_expand_label(client0, "traffic upd", b"", 48, "sha384")
    server0 = secrets["SERVER_TRAFFIC_SECRET_0"]
    before = tls.decode(*_views(played), keys, started="starttls", client_at=_at(played, True),
                        server_at=_at(played, False))
    sent = sum(1 for r in before.records if r.from_client and r.inner == "application data")
    after_finished = [r for r in before.records if not r.from_client]
    server_seq = len(after_finished) - 1 - next(i for i, r in enumerate(after_finished)
                                                 if r.inner == "handshake (Finished)")
    update = _seal13(client0, sent, 22, bytes([24, 0, 0, 1, 0]))  # KeyUpdate, update_not_requested
    quit_ = _seal13(client1, 0, 23, b"QUIT\r\n")
    bye = _seal13(server0, server_seq, 23, b"221 2.0.0 bye\r\n")
    more = tlswire.Session([*played.chunks, (True, update), (True, quit_), (False, bye)], played.keylog,
                           played.tls_chunks)
    conv = decode(packets(more), played.keylog)
    assert [e.text for e in conv.events if e.decrypted][-2:] == ["QUIT", "221 2.0.0 bye"]
    assert not any(e.kind == "record" for e in conv.events)


def _views(played: tlswire.Session) -> tuple[StreamView, StreamView]:
    c = b"".join(d for f, d in played.chunks if f)
    s = b"".join(d for f, d in played.chunks if not f)
    return StreamView(c, [0], [1], []), StreamView(s, [0], [1], [])


def _at(played: tlswire.Session, client: bool) -> int:
    return sum(len(d) for f, d in played.chunks[:played.tls_chunks] if f == client)


def test_text_pipelined_after_starttls_is_shown_not_run() -> None:
    """The STARTTLS injection (CVE-2024-34083's class): a command sent in clear in the STARTTLS packet."""
    played = session()
    chunks = list(played.chunks)
    i = next(i for i, (c, d) in enumerate(chunks) if c and d == b"STARTTLS\r\n")
    chunks[i] = (True, b"STARTTLS\r\nRSET\r\n")
    conv = decode(packets(tlswire.Session(chunks, played.keylog, played.tls_chunks)), played.keylog)
    [injected] = [e for e in conv.events if e.kind == "undecodable"]
    assert "sent in clear after STARTTLS" in injected.text and "|RSET..|" in injected.text
    assert conv.tls is not None and conv.tls.decrypted and "QUIT" in [e.text for e in conv.events if e.decrypted]
    assert not any(e.text == "RSET" for e in conv.events)


@settings(max_examples=150, deadline=None)
@given(st.integers(0, 10_000), st.integers(0, 255), st.integers(0, 10_000), st.booleans())
def test_a_real_session_altered_anywhere_decodes_without_raising(at: int, value: int, cut: int, tls12: bool) -> None:
    played = session(version="1.2", cipher="ECDHE-ECDSA-CHACHA20-POLY1305") if tls12 else session()
    chunks = list(played.chunks)
    i = at % len(chunks)
    from_client, data = chunks[i]
    j = (at // len(chunks)) % len(data)
    chunks[i] = (from_client, data[:j] + bytes([value]) + data[j + 1:])
    altered = tlswire.Session(chunks[:len(chunks) - cut % 4], played.keylog, played.tls_chunks)
    conv = decode(packets(altered), played.keylog)
    assert conv.tls is not None or i < played.tls_chunks  # an altered clear dialogue may never reach STARTTLS
    render.text([conv])
    conv.to_json()


@pytest.mark.parametrize(("version", "cipher"), [("1.3", None), ("1.2", "ECDHE-ECDSA-AES128-GCM-SHA256")])
def test_a_refused_certificate_shows_the_clients_alert(version: str, cipher: str | None) -> None:
    """A client that cannot verify the certificate ends the handshake with an alert saying so (OpenSSL
    sends it before its own handshake keys are in use: in clear, in TLS 1.3 too)."""
    played = tlswire.session(SMTP_SCRIPT, version=version, cipher=cipher, untrusted=True)
    conv = decode(packets(played), played.keylog)
    alerts = [e for e in conv.events if e.kind == "record" and "alert" in e.text]
    assert [(e.direction, e.text.split(", ", 1)[0]) for e in alerts] == [("C", "<TLS record: alert (fatal")]
    assert "unknown_ca" in alerts[0].text
    assert conv.tls is not None and conv.tls.certificate == "CN=mail.stevenchoy.example"
    assert not any(e.decrypted for e in conv.events)
