"""The reference peers' side of the topology, and the Postfix, Dovecot and NSD files they write."""

from __future__ import annotations

import base64
import dataclasses
from pathlib import Path

import pytest

from labctl import topology, zonefiles
from labctl.errors import LabctlError, SourceError
from labctl.plan import host_images
from services.config import Account, Domain, LabConfig, TlsSettings
from services.reference import dovecot, nsd, postfix

LAB_YML = topology.DEFAULT_TOPOLOGY.read_text()
COMPOSE = topology.DEFAULT_TOPOLOGY.parent
SWAPS = {
    "mx.yml": {"mail": "postfix-mx"},
    "mta.yml": {"smtp": "postfix-mta"},
    "mail.yml": {"smtp": "postfix-mta", "mail": "postfix-mx"},
    "dns.yml": {"ns": "nsd-dns"},
}


def reference(overlay: str) -> topology.Topology:
    """compose/lab.yml with one of the reference overlays (compose/reference/*.yml)."""
    return topology.load_overlay(topology.load(), COMPOSE / "reference" / overlay)


def error_of(text: str) -> SourceError:
    with pytest.raises(SourceError) as info:
        topology.load(Path("lab.yml"), text)
    return info.value


def line_of(needle: str, text: str) -> int:
    return next(i + 1 for i, line in enumerate(text.splitlines()) if needle in line)


@pytest.mark.parametrize("fname", sorted(SWAPS))
def test_reference_topologies_are_the_lab_with_only_the_roles_swapped(fname: str) -> None:
    ours, theirs = topology.load(), reference(fname)
    assert theirs.domains == ours.domains and theirs.subnet == ours.subnet and theirs.retry == ours.retry
    for a, b in zip(ours.hosts, theirs.hosts, strict=True):
        want_role = SWAPS[fname].get(a.name, a.role)
        # Reference roles need the reference image; the MUA hosts take it for fetchmail and dnsperf.
        want_image = "reference" if b.role != a.role or a.role == "mua" else "lab"
        assert (b.name, b.fqdn, b.address, b.role, b.image) == (a.name, a.fqdn, a.address, want_role, want_image)
        assert b.kind == a.role  # a postfix-mx does the job of an mx
    assert theirs.nameserver.name == "ns"
    # The zones NSD serves are the very files our DNS server loads.
    assert zonefiles.render(theirs) == zonefiles.render(ours)


def test_our_lab_runs_on_the_lab_image_only() -> None:
    assert {h.image for h in topology.load().hosts} == {"lab"}


def test_unknown_image_is_refused_with_its_line() -> None:
    text = LAB_YML.replace("    command: mx\n", "    command: mx\n    image: postfix:latest\n")
    err = error_of(text)
    assert err.line == line_of("image: postfix:latest", text)
    assert "image 'postfix:latest' is not a lab image; valid images: lab" in err.message and "reference" in err.message


def test_reference_role_on_the_lab_image_is_refused() -> None:
    text = LAB_YML.replace("    command: mx\n", "    command: postfix-mx\n    image: lab\n")
    err = error_of(text)
    assert err.line == line_of("image: lab", text)
    assert "'postfix-mx' runs on the reference image" in err.message


def test_unknown_role_lists_the_reference_roles() -> None:
    text = LAB_YML.replace("    command: mx\n", "    command: exim-mx\n")
    err = error_of(text)
    assert err.line == line_of("exim-mx", text)
    assert "postfix-mta, postfix-mx" in err.message and "nsd-dns" in err.message


def test_two_name_servers_are_refused() -> None:
    text = LAB_YML.replace("    command: mx\n", "    command: nsd-dns\n")
    assert "exactly one host with command: dns (or nsd-dns), not 2: ns, mail" in error_of(text).message


def test_a_postfix_host_may_keep_a_domains_mailboxes() -> None:
    topo = reference("mail.yml")
    assert {d.mail_host for d in topo.domains} == {"smtp", "mail"}


def test_host_images_needs_every_image_the_topology_names() -> None:
    topo = reference("mx.yml")
    with pytest.raises(LabctlError, match="hosts mail, andy, betty run the reference image"):
        host_images(topo, "maillab:1")
    tags = host_images(topo, {"lab": "maillab:1", "reference": "maillab-reference:2"})
    assert tags == {"ns": "maillab:1", "smtp": "maillab:1", "mail": "maillab-reference:2",
                    "andy": "maillab-reference:2", "betty": "maillab-reference:2"}
    assert set(host_images(topology.load(), "maillab:1").values()) == {"maillab:1"}


# -- the files the roles write -----------------------------------------------------------------


def config_for(fname: str, host: str) -> LabConfig:
    topo = reference(fname)
    return topo.lab_config("t", topo.host(host))


def settings(main_cf: str) -> dict[str, str]:
    pairs = [line.partition("=") for line in main_cf.splitlines() if line and not line.startswith("#")]
    assert all(eq for _, eq, _ in pairs)
    keys = [key.strip() for key, _, _ in pairs]
    assert len(keys) == len(set(keys)), "a setting written twice: Postfix would take the last silently"
    return {key.strip(): value.strip() for key, _, value in pairs}


def test_postfix_mx_takes_its_domain_and_relays_for_nobody() -> None:
    cf = settings(postfix.main_cf(config_for("mail.yml", "mail"), mta=False))
    assert cf["myhostname"] == "mail.stevenchoy.example"
    assert cf["virtual_mailbox_domains"] == "stevenchoy.example"
    assert cf["mynetworks"] == "127.0.0.0/8"
    assert cf["virtual_mailbox_base"] == "/var/mail/maillab"
    assert cf["smtpd_relay_restrictions"].endswith("reject_unauth_destination")


def test_postfix_mta_relays_for_the_mua_hosts_and_follows_the_lab_retry_schedule() -> None:
    cf = settings(postfix.main_cf(config_for("mail.yml", "smtp"), mta=True))
    assert cf["virtual_mailbox_domains"] == "ouhk.example"
    assert cf["mynetworks"] == "127.0.0.0/8 10.89.0.10/32 10.89.0.20/32"
    # compose/lab.yml: schedule [5, 10, 20, 40], give_up 600
    assert (cf["minimal_backoff_time"], cf["maximal_backoff_time"], cf["maximal_queue_lifetime"]) == ("5s", "40s",
                                                                                                     "600s")
    assert cf["smtpd_sasl_type"] == "dovecot"


def test_a_postfix_backup_mx_relays_its_domains_on_and_no_other() -> None:
    overlay = Path(__file__).parent.parent / "overlays" / "postfix-mta-backup-mx.yml"
    topo = topology.load_overlay(topology.load(), overlay)
    cf = settings(postfix.main_cf(topo.lab_config("t", topo.host("smtp")), mta=True))
    assert cf["relay_domains"] == "stevenchoy.example"
    assert cf["virtual_mailbox_domains"] == "ouhk.example"
    assert settings(postfix.main_cf(config_for("mail.yml", "smtp"), mta=True))["relay_domains"] == ""


def test_postfix_keeps_its_durability_defaults() -> None:
    text = postfix.main_cf(config_for("mail.yml", "smtp"), mta=True)
    # Nothing that would trade safety for speed: fsync stays on, as in our queue.
    for risky in ("fsync", "sync_", "lmtp_", "in_flow_delay", "destination_concurrency"):
        assert risky not in text


def test_virtual_mailboxes_map_each_account_to_its_maildir() -> None:
    assert postfix.virtual_mailboxes(config_for("mx.yml", "mail")) == (
        "betty@stevenchoy.example stevenchoy.example/betty/\n"
    )


def two_domain_config() -> LabConfig:
    cfg = config_for("mail.yml", "mail")
    return dataclasses.replace(cfg, domains=(
        Domain("a.example", "mail", (Account("jo", "a.example", "p:w\nx"), Account("al", "a.example", "s"))),
        Domain("b.example", "mail", (Account("jo", "b.example", "q"),)),
    ))


def test_dovecot_users_log_in_as_our_pop3_accepts() -> None:
    lines = dovecot.users_file(two_domain_config()).splitlines()
    logins = [line.split(":", 1)[0] for line in lines]
    # "jo" is in two local domains: only the full addresses; "al" is unique: both forms.
    assert logins == ["jo@a.example", "al@a.example", "al", "jo@b.example"]
    fields = lines[0].split(":")
    assert len(fields) == 8  # user:password:uid:gid:gecos:home:shell:extra, whatever the password holds
    assert base64.b64decode(fields[1].removeprefix("{PLAIN.b64}")) == b"p:w\nx"
    assert fields[2:4] == ["5000", "5000"] and fields[5] == "/var/mail/maillab/a.example/jo"


def test_dovecot_is_postfix_sasl_backend_on_the_mta_only() -> None:
    cfg = config_for("mail.yml", "smtp")
    assert "unix_listener /var/spool/postfix/private/auth" in dovecot.dovecot_conf(cfg, sasl_for_postfix=True)
    conf = dovecot.dovecot_conf(cfg, sasl_for_postfix=False)
    assert "unix_listener" not in conf
    assert "protocols = pop3 imap" in conf and "disable_plaintext_auth = no" in conf


def dovecot_settings(conf: str) -> dict[str, str]:
    """The top-level ``key = value`` lines of a dovecot.conf (blocks left out), each written once."""
    top = [line for line in conf.splitlines() if " = " in line and not line.startswith((" ", "#"))]
    keys = [line.split(" = ", 1)[0] for line in top]
    assert len(keys) == len(set(keys)), "a setting written twice: Dovecot would take the last silently"
    return dict(line.split(" = ", 1) for line in top)


def test_dovecot_serves_imap_on_the_maildir_our_imap_server_keeps() -> None:
    conf = dovecot_settings(dovecot.dovecot_conf(config_for("mx.yml", "mail"), sasl_for_postfix=False))
    assert conf["protocols"] == "pop3 imap"
    assert conf["mail_location"] == "maildir:~"  # home = the Maildir: INBOX there, folders as .Name
    assert (conf["ssl"], conf["disable_plaintext_auth"]) == ("no", "no")


def tls_config(*, needs_tls: bool) -> LabConfig:
    cfg = config_for("mx.yml", "mail")
    return dataclasses.replace(cfg, tls=TlsSettings(enabled=True, auth_needs_tls=needs_tls))


@pytest.mark.parametrize("needs_tls", [True, False])
def test_dovecot_with_tls_uses_the_lab_certificate(tmp_path: Path, needs_tls: bool) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_text("cert")
    key.write_text("key")
    conf = dovecot_settings(dovecot.dovecot_conf(tls_config(needs_tls=needs_tls), sasl_for_postfix=True,
                                                 cert=cert, key=key))
    assert (conf["ssl"], conf["ssl_cert"], conf["ssl_key"]) == ("yes", f"<{cert}", f"<{key}")
    assert conf["disable_plaintext_auth"] == ("yes" if needs_tls else "no")


def test_dovecot_without_its_certificate_stays_clear(tmp_path: Path) -> None:
    """TLS asked for but no certificate handed to the host: Dovecot would not start with ssl = yes."""
    conf = dovecot_settings(dovecot.dovecot_conf(tls_config(needs_tls=True), sasl_for_postfix=False,
                                                 cert=tmp_path / "none.pem", key=tmp_path / "none.key"))
    assert (conf["ssl"], conf["disable_plaintext_auth"]) == ("no", "no")
    assert "ssl_cert" not in conf


def test_nsd_serves_every_rendered_zone() -> None:
    files = list(zonefiles.render(reference("dns.yml")))
    conf = nsd.nsd_conf([*files, "README"])
    names = [line.split(": ", 1)[1] for line in conf.splitlines() if line.startswith("  name: ")]
    assert names == sorted(f'"{f.removesuffix(".zone")}"' for f in files)
    assert '"stevenchoy.example"' in names and '"0.89.10.in-addr.arpa"' in names
    assert 'zonesdir: "/etc/maillab/zones"' in conf
    assert "rrl-ratelimit: 0" in conf  # a lab's few clients must not be throttled as an attacker


# -- the swap overlay ------------------------------------------------------------------------------


def overlay_error(text: str) -> SourceError:
    with pytest.raises(SourceError) as info:
        topology.load_overlay(topology.load(), Path("swap.yml"), text)
    return info.value


def test_swap_refuses_a_host_the_lab_does_not_have() -> None:
    err = overlay_error("swap:\n  mailx: postfix-mx\n")
    assert err.line == 2 and "host 'mailx' is not in the lab" in str(err) and "mail" in str(err)


def test_swap_refuses_a_program_for_another_job() -> None:
    err = overlay_error("swap:\n  smtp: postfix-mx\n")
    assert err.line == 2 and "smtp is the lab's mta host; it can run mta, postfix-mta, not postfix-mx" in str(err)


def test_swap_refuses_an_unknown_role_or_key() -> None:
    err = overlay_error("swap:\n  mail:\n    command: exim\n")
    assert err.line == 3 and "command 'exim' is not a lab role" in str(err)
    err = overlay_error("swap:\n  mail:\n    kommand: postfix-mx\n")
    assert err.line == 3 and "command" in str(err) and "image" in str(err)


def test_swap_back_to_our_own_role() -> None:
    topo = topology.load_overlay(reference("mx.yml"), Path("back.yml"), "swap:\n  mail: mx\n")
    assert (topo.host("mail").role, topo.host("mail").image) == ("mx", "lab")


def test_postfix_tls_follows_the_lab_and_needs_the_certificate(tmp_path: Path) -> None:
    """Issue 12: STARTTLS offered, AUTH only under TLS, the relay's level per tls.relay."""
    cert = tmp_path / "cert.pem"
    plain = config_for("mail.yml", "smtp")
    on = dataclasses.replace(plain, tls=TlsSettings(enabled=True, auth_needs_tls=True, relay="verify"))
    assert settings(postfix.main_cf(on, mta=True, certificate=cert))["smtpd_tls_security_level"] == "none"
    cert.write_text("a certificate")
    cf = settings(postfix.main_cf(on, mta=True, certificate=cert))
    assert (cf["smtpd_tls_cert_file"], cf["smtpd_tls_key_file"]) == (str(cert), "/etc/maillab/tls/key.pem")
    assert (cf["smtpd_tls_security_level"], cf["smtpd_tls_auth_only"]) == ("may", "yes")
    assert (cf["smtp_tls_security_level"], cf["smtp_tls_CAfile"]) == ("verify", "/etc/maillab/tls/ca.pem")
    may = dataclasses.replace(on, tls=TlsSettings(enabled=True, auth_needs_tls=False, relay="may"))
    cf = settings(postfix.main_cf(may, mta=True, certificate=cert))
    assert (cf["smtp_tls_security_level"], cf["smtpd_tls_auth_only"]) == ("may", "no")
    cf = settings(postfix.main_cf(plain, mta=True, certificate=cert))  # TLS off: as before
    assert (cf["smtpd_tls_security_level"], cf["smtp_tls_security_level"]) == ("none", "none")
    assert "smtpd_tls_cert_file" not in cf
