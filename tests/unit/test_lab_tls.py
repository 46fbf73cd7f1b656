"""TLS in the lab, labctl side (issue 12): the topology key, the plan's files and digests, the facts."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from labctl import labtls, topology
from labctl.errors import SourceError
from labctl.plan import LABEL_CONFIG, plan
from labctl.scenario import model as m
from labctl.scenario.facts import check_fact
from labctl.scenario.steps import StepFailed
from labctl.traffic.model import Conversation, Endpoint, Event, MailMessage, TlsSummary
from services import config as svc

BASE = topology.DEFAULT_TOPOLOGY.read_text()


def with_tls(value: str) -> str:
    return BASE.replace("x-maillab:\n", f"x-maillab:\n  tls: {value}\n", 1)


def test_no_tls_leaves_lab_json_and_digests_as_before_issue_12() -> None:
    topo = topology.load()
    plans = plan("l", topo, "img")
    for p in plans.values():
        files = json.loads(p.container.environment[svc.FILES_ENV])
        assert "tls" not in json.loads(files["maillab/lab.json"])
        assert not any(name.startswith(labtls.TLS_FILES) for name in files)
        assert labtls.LABEL_TLS_CA not in p.container.labels


@pytest.mark.parametrize(("value", "expected"), [
    ("true", svc.TlsSettings(enabled=True)),
    ("false", svc.TlsSettings()),
    ("{auth: anywhere, relay: verify}", svc.TlsSettings(True, False, "verify")),
    ("{relay: none}", svc.TlsSettings(True, True, "none")),
])
def test_the_tls_key(value: str, expected: svc.TlsSettings) -> None:
    assert topology.load(text=with_tls(value)).tls == expected


@pytest.mark.parametrize(("value", "said"), [
    ("{auth: sometimes}", "tls.auth 'sometimes': valid choices: tls-only"),
    ("{relay: must}", "tls.relay 'must': valid choices: may"),
    ("{verify: true}", "unknown key 'verify'"),
    ("yes please", "must be a mapping"),
])
def test_a_bad_tls_value_says_where_and_what_is_valid(value: str, said: str) -> None:
    with pytest.raises(SourceError) as err:
        topology.load(text=with_tls(value))
    assert said in str(err.value) and ":20:" in str(err.value)


def test_an_overlay_turns_tls_on() -> None:
    topo = topology.load_overlay(topology.load(), topology.DEFAULT_TOPOLOGY, "tls: {auth: anywhere}\n")
    assert topo.tls == svc.TlsSettings(True, False, "may")


def test_tls_files_go_to_hosts_and_stay_out_of_the_digest() -> None:
    topo = replace(topology.load(), tls=svc.TlsSettings(enabled=True))
    tls = labtls.issue("l", topo)
    assert set(tls.leaves) == {"smtp", "mail"}
    leaf = tls.leaves["mail"].certificate
    assert "mail.stevenchoy.example" in str(leaf.subject)
    with_files, without = plan("l", topo, "img", tls), plan("l", topo, "img")
    for name, p in with_files.items():
        files = json.loads(p.container.environment[svc.FILES_ENV])
        assert files[labtls.CA_FILE] == tls.ca.cert_pem
        assert (labtls.CERT_FILE in files) == (name in ("smtp", "mail"))
        assert json.loads(files["maillab/lab.json"])["tls"]["enabled"] is True
        assert p.container.labels[labtls.LABEL_TLS_CA] == tls.fingerprint
        assert p.digest == without[name].digest == p.container.labels[LABEL_CONFIG]
    assert not labtls.expiring(tls.until) and labtls.expiring("not a date")


def _conv(*events: Event, tls: TlsSummary | None = None) -> Conversation:
    return Conversation("smtp", "tcp", Endpoint("10.89.0.10", 40000, "andy"), Endpoint("10.89.0.25", 587, "smtp"),
                        0.0, 1.0, list(events), tls=tls)


AUTH_CLEAR = Event(0.5, "C", "auth", "AUTH PLAIN AGFuZHkAYW5keS1zZWNyZXQ=", secrets=("andy-secret",))
AUTH_INSIDE = replace(AUTH_CLEAR, decrypted=True)
STARTTLS = TlsSummary("starttls", "TLS 1.3", "TLS_AES_256_GCM_SHA384", decrypted=True)


def test_auth_inside_tls_is_encrypted_not_clear() -> None:
    convs = [_conv(AUTH_INSIDE, tls=STARTTLS)]
    said = check_fact(m.Encrypted("smtp", "AUTH"), convs, {})
    assert "crossed the wire encrypted (starttls, TLS 1.3" in said and "andy-secret" not in said
    with pytest.raises(StepFailed):
        check_fact(m.Cleartext("smtp", "AUTH"), convs, {})


def test_auth_in_clear_is_not_encrypted() -> None:
    convs = [_conv(AUTH_CLEAR), _conv(AUTH_INSIDE, tls=STARTTLS)]
    assert "in clear" in check_fact(m.Cleartext("smtp", "AUTH"), convs, {})
    with pytest.raises(StepFailed) as err:
        check_fact(m.Encrypted("smtp", "AUTH"), convs, {})
    assert "it crossed in clear" in str(err.value)


def test_subject_looks_only_at_the_session_that_carried_it() -> None:
    postcard, sealed = _conv(AUTH_CLEAR), _conv(AUTH_INSIDE, tls=STARTTLS)
    postcard.messages.append(MailMessage(0.6, "<1@x>", "Postcard", 3, 40, True))
    sealed.messages.append(MailMessage(0.6, "<2@x>", "Sealed letter", 3, 40, True))
    convs = [postcard, sealed]
    assert "encrypted" in check_fact(m.Encrypted("smtp", "AUTH", "sealed"), convs, {})
    assert "in clear" in check_fact(m.Cleartext("smtp", "AUTH", "Postcard"), convs, {})
    with pytest.raises(StepFailed) as err:
        check_fact(m.Encrypted("smtp", "AUTH", "Postcard"), convs, {})
    assert "in the session of 'Postcard'" in str(err.value)
    with pytest.raises(StepFailed):
        check_fact(m.Cleartext("smtp", "AUTH", "Sealed letter"), convs, {})


def test_tls_without_the_key_log_is_no_proof() -> None:
    convs = [_conv(tls=replace(STARTTLS, decrypted=False, problem="no key log entry"))]
    with pytest.raises(StepFailed) as err:
        check_fact(m.Encrypted("smtp", "AUTH"), convs, {})
    assert "1 SMTP session(s) in TLS" in str(err.value) and "no key log entry" in str(err.value)
