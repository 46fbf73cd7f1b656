"""Scenario files: the shipped ones parse, and every class of error names its file and line."""

from __future__ import annotations

from pathlib import Path

import pytest

from labctl import topology
from labctl.errors import SourceError
from labctl.scenario import model as m
from labctl.scenario import parse
from services.smtp.replyfaults import ReplyRule

SCENARIOS = sorted((Path(__file__).resolve().parents[2] / "scenarios").glob("*.yml"))
HEAD = "name: t\ndescription: d\ngoal: g\n"  # three lines; steps start on line 4


def load(text: str, path: Path = Path("s.yml")) -> m.Scenario:
    return parse.load(path, text)


def error_of(text: str) -> SourceError:
    with pytest.raises(SourceError) as info:
        load(text)
    return info.value


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.stem)
def test_every_shipped_scenario_parses_and_is_a_lesson(path: Path) -> None:
    sc = parse.load(path)
    assert len(sc.description) > 100 and sc.goal and sc.steps
    assert all(s.line for s in sc.steps)


def test_there_are_the_twelve_lessons_of_the_issue() -> None:
    assert {p.stem for p in SCENARIOS} >= {
        "journey", "activity-1-smtp-by-hand", "activity-2-pop3-by-hand", "mime-attachment", "mx-down-then-back",
        "backup-mx", "unknown-recipient", "relay-refused", "implicit-mx", "null-mx", "pop3-drop-after-dele",
        "lossy-slow-link",
    }


def test_a_scenario_resolves_hosts_users_and_values() -> None:
    sc = load(HEAD + """topology:
  retry: {schedule: [1], give_up: 30}
steps:
  - send:
      from: andy@ouhk.example
      to: [betty, carol@elsewhere.example]
      subject: 2024
      attach:
        - {name: a.bin, bytes: 100}
        - {name: b.txt, text: "hi"}
    note: look
  - smtp:
      from: betty
      server: smtp.ouhk.example
      dialogue:
        - expect: "220"
        - send: |
            Subject: x

            .
          expect: "250 2.0.0"
          match: accepted
  - wait: {delivered: {to: betty}, timeout: 500ms}
  - fault: {shape: {host: mail.stevenchoy.example, delay: 100ms, loss: 5%, rate: 2mbit}}
  - fault: {dns: {domain: stevenchoy.example, mx: ["0 ."]}}
  - expect:
      mailbox: {user: betty, where: client, received_via: [smtp]}
      queue: {to: x@y.example, status: pending, attempts: 2, error: refused}
""")
    send, smtp, wait, shape, dns, expect = (s.action for s in sc.steps)
    assert sc.topology.retry.schedule == (1.0,)
    assert isinstance(send, m.Send) and send.sender == "andy"
    assert send.to == ("betty@stevenchoy.example", "carol@elsewhere.example") and send.subject == "2024"
    assert [len(a.data) for a in send.attachments] == [100, 2] and sc.steps[0].note == "look"
    assert send.attachments[0].data == parse.load(Path("s.yml"), HEAD.replace("t\n", "u\n", 1) + """steps:
  - send: {from: andy, to: betty, subject: s, attach: [{name: a.bin, bytes: 100}]}
""").steps[0].action.attachments[0].data  # type: ignore[union-attr]  # the same bytes on every run
    assert isinstance(smtp, m.Dialogue) and smtp.server == "smtp.ouhk.example" and smtp.port == 25
    assert smtp.exchanges[1].send == "Subject: x\n\n." and smtp.exchanges[1].line == 20
    assert isinstance(wait, m.Wait) and wait.timeout == 0.5 and wait.until == m.Delivered("betty@stevenchoy.example")
    assert shape == m.Shape("mail", 100.0, 5.0, 2000.0)
    assert isinstance(dns, m.DnsChange) and dns.domain == "stevenchoy.example"
    steven = next(d for d in dns.topology.domains if d.name == "stevenchoy.example")
    assert [(r.preference, r.exchange) for r in steven.mx] == [(0, ".")]
    assert isinstance(expect, m.Expect)
    mailbox, queue = expect.checks
    assert isinstance(mailbox, m.MailboxExpect) and mailbox.on == "client"
    assert mailbox.received_via == ("smtp.ouhk.example",)
    assert isinstance(queue, m.QueueExpect) and queue.host == "smtp" and queue.attempts == m.Count(2, 2)


def test_attachments_from_files_are_read_relative_to_the_scenario(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "logo.png").write_bytes(b"\x89PNG")
    sc = load(HEAD + "steps:\n  - send: {from: andy, to: betty, subject: s,\n"
                     "           attach: [{name: l.png, file: data/logo.png}]}\n",
              tmp_path / "s.yml")
    action = sc.steps[0].action
    assert isinstance(action, m.Send) and action.attachments[0].data == b"\x89PNG"


CASES = [
    # the document
    ("name: t\ndescription: d\ngoal: g\n", 1, "the scenario has no 'steps'"),
    (HEAD + "step: []\n", 4,
     "unknown key 'step' in the scenario; valid keys: name, description, goal, topology, steps"),
    ("name: [x]\ndescription: d\ngoal: g\nsteps: [{fetch: {user: betty}}]\n", 1, "name must be non-empty text"),
    ("name: a/b\ndescription: d\ngoal: g\nsteps: [{fetch: {user: betty}}]\n", 1, "one line of letters"),
    (HEAD + "steps: []\n", 4, "steps must be a non-empty list"),
    (HEAD + "steps:\n  - fetch: {user: betty}\n  - fetch: {user: betty}\n  fetch: x\n", 7, "not valid YAML"),
    (HEAD + "steps:\n  - fetch: {user: betty}\nsteps: []\n", 6, "duplicate key 'steps' (first at line 4)"),
    # the topology section (errors from labctl.topology, with the scenario's lines)
    (HEAD + "topology:\n  hosts:\n    mx2: {hostname: mx2.stevenchoy.example, role: dns}\n"
            "steps: [{fetch: {user: betty}}]\n",
     6, "role 'dns' cannot be added; valid roles: mta, mx, mua"),
    (HEAD + "topology:\n  retries: {}\nsteps: [{fetch: {user: betty}}]\n", 5,
     "unknown key 'retries' in topology changes; valid keys: hosts, swap, domains, retry"),
    # steps
    (HEAD + "steps:\n  - fetch: {user: betty}\n  - sned: {}\n", 6,
     "unknown step kind 'sned'; valid kinds: send, fetch, smtp, pop3, imap, task, wait, fault, expect"),
    (HEAD + "steps:\n  - fetch: {user: betty}\n    wait: {seconds: 1}\n", 5, "a step does exactly one thing"),
    (HEAD + "steps:\n  - name: only a name\n", 5, "a step does exactly one thing"),
    (HEAD + "steps:\n  - fetch\n", 5, "step 1 must be a mapping"),
    # send
    (HEAD + "steps:\n  - send:\n      from: andy\n      to: betty\n", 5, "send needs 'subject'"),
    (HEAD + "steps:\n  - send:\n      from: mail\n      to: betty\n      subject: s\n", 6,
     "'mail' is not a mail user with a MUA host; valid choices: andy (andy@ouhk.example), betty"),
    (HEAD + "steps:\n  - send:\n      from: andy\n      to: bettystevenchoy\n      subject: s\n", 7,
     "'bettystevenchoy' is not a mail address"),
    (HEAD + "steps:\n  - send:\n      from: andy\n      to: betty\n      subject: s\n      cc: x\n", 9,
     "unknown key 'cc' in send; valid keys: from, to, subject, body, attach, submission, tls"),
    (HEAD + "steps:\n  - send:\n      from: andy\n      to: betty\n      subject: s\n      tls: yes\n", 9,
     "tls must be one of starttls, implicit, clear (or left out for the MUA's default"),
    (HEAD + "steps:\n  - send:\n      from: andy\n      to: betty\n      subject: s\n      submission: yes please\n", 9,
     "submission must be true or false"),
    (HEAD + "steps:\n  - send:\n      from: andy\n      to: betty\n      subject: s\n      attach:\n"
            "        - {name: a}\n",
     10, "exactly one of: text, bytes"),
    (HEAD + "steps:\n  - send:\n      from: andy\n      to: betty\n      subject: s\n      attach:\n"
            "        - {name: a, file: nothere.bin}\n", 10, "cannot read"),
    (HEAD + "steps:\n  - send:\n      from: andy\n      to: betty\n      subject: s\n      attach:\n"
            "        - {name: ../a, text: x}\n", 10, "must be a plain file name"),
    (HEAD + "steps:\n  - send:\n      from: andy\n      to: betty\n      subject: s\n      attach:\n"
            "        - {name: a, bytes: 0}\n", 10, "bytes must be a whole number of at least 1"),
    # fetch
    (HEAD + "steps:\n  - fetch: {user: carol}\n", 5, "'carol' is not a mail user with a MUA host"),
    (HEAD + "steps:\n  - fetch: {user: betty, keep: true}\n", 5,
     "unknown key 'keep' in fetch; valid keys: user, delete"),
    # dialogues
    (HEAD + "steps:\n  - smtp:\n      from: andy\n      server: ns\n      dialogue: [{send: QUIT}]\n", 7,
     "'ns' is not a mta/mx host of this lab; valid choices: smtp, mail"),
    (HEAD + "steps:\n  - smtp:\n      from: andy\n      server: smtp\n      dialogue: []\n", 8,
     "dialogue must be a non-empty list"),
    (HEAD + "steps:\n  - smtp:\n      from: andy\n      server: smtp\n      dialogue:\n        - send: QUIT\n"
            "          expect: OK\n", 10, "expect 'OK' is not the start of a SMTP reply, like 250, 354 or 250 2.1.5"),
    (HEAD + "steps:\n  - pop3:\n      from: betty\n      server: mail\n      dialogue:\n        - send: QUIT\n"
            "          expect: '250'\n", 10, "is not the start of a POP3 reply, like +OK or -ERR"),
    (HEAD + "steps:\n  - smtp:\n      from: andy\n      server: smtp\n      dialogue:\n        - send: QUIT\n"
            "          match: '(unclosed'\n", 10, "is not a valid regular expression"),
    (HEAD + "steps:\n  - smtp:\n      from: andy\n      server: smtp\n      dialogue:\n        - expect: '220'\n"
            "        - expect: '250'\n", 10, "only the first dialogue entry may have no 'send'"),
    (HEAD + "steps:\n  - smtp:\n      from: andy\n      server: smtp\n      port: 70000\n"
            "      dialogue: [{send: QUIT}]\n",
     8, "port must be a number from 1 to 65535"),
    (HEAD + "steps:\n  - smtp:\n      from: andy\n      server: smtp\n      dialogue:\n        - send: QUIT\n"
            "          reply: '221'\n", 10, "unknown key 'reply' in a dialogue line; valid keys: send, expect, match"),
    # wait
    (HEAD + "steps:\n  - wait: {timeout: 5}\n", 5,
     "wait for exactly one of: delivered, read, queued, bounced, queue_empty"),
    (HEAD + "steps:\n  - wait:\n      arrived: {to: betty}\n", 6,
     "unknown key 'arrived' in wait; valid keys: delivered, read, queued, bounced, queue_empty, seconds, timeout"),
    (HEAD + "steps:\n  - wait:\n      delivered: {to: betty}\n      timeout: forever\n", 7,
     "timeout must be seconds like 30, 2.5 or 500ms"),
    (HEAD + "steps:\n  - wait:\n      delivered: {to: betty}\n      timeout: 601\n", 7, "at most 600 seconds"),
    (HEAD + "steps:\n  - wait:\n      delivered: {to: nobody@stevenchoy.example}\n", 6,
     "'nobody@stevenchoy.example' is not an account of this lab; valid choices: andy@ouhk.example, betty@"),
    (HEAD + "steps:\n  - wait:\n      queued: {to: betty, host: mail}\n", 6, "'mail' is not a mta host of this lab"),
    (HEAD + "steps:\n  - wait:\n      bounced: {to: andy, status: 5.1}\n", 6, "is not an RFC 3463 code like 5.1.1"),
    # faults
    (HEAD + "steps:\n  - fault: {reboot: mail}\n", 5,
     "unknown key 'reboot' in fault; valid keys: stop, start, kill, restart, disconnect, reconnect, unshape, shape"),
    (HEAD + "steps:\n  - fault: {stop: mail, start: mail}\n", 5, "a fault step does one of"),
    (HEAD + "steps:\n  - fault: {stop: mx9}\n", 5,
     "'mx9' is not a host of this lab; valid choices: ns, smtp, mail, andy, betty"),
    (HEAD + "steps:\n  - fault:\n      shape: {host: mail}\n", 6, "shape needs at least one of: delay"),
    (HEAD + "steps:\n  - fault:\n      shape: {host: mail, loss: 100%}\n", 6, "loss must be a percentage above 0"),
    (HEAD + "steps:\n  - fault:\n      shape: {host: mail, rate: fast}\n", 6, "rate must be like 256kbit or 2mbit"),
    (HEAD + "steps:\n  - fault:\n      block: {host: mail, port: 25, how: ignore}\n", 6,
     "how 'ignore': valid choices: refuse, drop"),
    (HEAD + "steps:\n  - fault:\n      block: {host: mail}\n", 6, "block needs 'port'"),
    (HEAD + "steps:\n  - fault:\n      dns: {domain: nope.example, mx: []}\n", 6,
     "domain 'nope.example' is not a lab domain; valid choices: ouhk.example, stevenchoy.example"),
    (HEAD + "steps:\n  - fault:\n      dns: {domain: stevenchoy.example, mx: ['10 andy.ouhk.example']}\n", 6,
     "which runs no SMTP server"),
    (HEAD + "steps:\n  - fault:\n      reply: {host: mail, stage: ehlo, code: 450}\n", 6,
     "reply: stage 'ehlo' is not one of: connect, helo, mail, rcpt, data, dot"),
    (HEAD + "steps:\n  - fault:\n      reply: {host: mail, stage: connect, code: 450}\n", 6,
     "at connect a server answers 421 (and closes) or 554"),
    (HEAD + "steps:\n  - fault:\n      reply:\n        host: mail\n        stage: rcpt\n        code: 450\n"
            "        status: 5.7.1\n", 10, "status '5.7.1' is not an RFC 3463 code of the reply's class"),
    (HEAD + "steps:\n  - fault:\n      reply: {host: mail, stage: mail, code: 550, to: 'b*'}\n", 6,
     "a recipient pattern cannot apply at mail"),
    (HEAD + "steps:\n  - fault:\n      reply: {host: mail, stage: rcpt, code: 450, times: 1, for: 30}\n", 6,
     "give times or seconds, not both"),
    (HEAD + "steps:\n  - fault:\n      reply: {host: mail, stage: rcpt, code: 250}\n", 6,
     "code must be a whole number of at least 400"),
    (HEAD + "steps:\n  - fault:\n      reply: {host: ns, stage: rcpt, code: 450}\n", 6,
     "ns is a dns host with no SMTP server: reply faults need our SMTP server (services.smtp); "
     "hosts that run it: smtp, mail"),
    (HEAD + "topology:\n  swap: {mail: postfix-mx}\nsteps:\n  - fault: {unreply: mail}\n", 7,
     "mail runs a reference postfix-mx: reply faults need our SMTP server"),
    (HEAD + "steps:\n  - fault: {disk_full: ns}\n", 5,
     "'ns' is not a mta/mx host of this lab; valid choices: smtp, mail"),
    (HEAD + "topology:\n  swap: {mail: postfix-mx}\nsteps:\n  - fault: {disk_full: mail}\n", 7,
     "'mail' is not a mta/mx host of this lab; valid choices: smtp"),
    # expect
    (HEAD + "steps:\n  - expect: {}\n", 5, "expect what? one or more of: mailbox, queue, bounce, traffic"),
    (HEAD + "steps:\n  - expect:\n      inbox: {user: betty}\n", 6,
     "unknown key 'inbox' in expect; valid keys: mailbox, queue, bounce, traffic"),
    (HEAD + "steps:\n  - expect:\n      mailbox: {user: betty, where: imap}\n", 6,
     "where 'imap': valid choices: server, client"),
    (HEAD + "steps:\n  - expect:\n      mailbox:\n        user: betty\n        count: 0\n        body: x\n", 8,
     "count: 0 expects no such message"),
    (HEAD + "steps:\n  - expect:\n      mailbox:\n        user: betty\n        headers: {'Bad Name': x}\n", 8,
     "'Bad Name' is not a header field name"),
    (HEAD + "steps:\n  - expect:\n      mailbox:\n        user: betty\n        received_via: [andy]\n", 8,
     "'andy' is not a mta/mx host of this lab"),
    (HEAD + "steps:\n  - expect:\n      mailbox: {user: andy@ouhk.example, where: client, count: 1}\n"
            "      queue: {host: smtp}\n", 7, "say what the queue holds: empty: true, or to: ADDRESS"),
    (HEAD + "steps:\n  - expect:\n      queue: {empty: true, to: x@y.example}\n", 6,
     "an empty queue holds no recipient"),
    (HEAD + "steps:\n  - expect:\n      queue: {to: x@y.example, status: lost}\n", 6,
     "status 'lost': valid choices: pending, delivered, bounced"),
    (HEAD + "steps:\n  - expect:\n      traffic:\n        - mx_query: {domain: stevenchoy.example}\n"
            "        - sniffed: {}\n", 8, "unknown key 'sniffed' in a traffic fact; valid keys: mx_query, refused, "
                                      "cleartext, encrypted, connection"),
    (HEAD + "steps:\n  - expect:\n      traffic:\n        - cleartext: {proto: dns, command: LOGIN}\n", 7,
     "proto 'dns': valid choices: smtp, pop3, imap"),
]


@pytest.mark.parametrize(("text", "line", "message"), CASES, ids=[f"{i:02d}" for i in range(len(CASES))])
def test_every_error_has_its_line_and_says_what_is_valid(text: str, line: int, message: str) -> None:
    err = error_of(text)
    assert message in err.message, err.message
    assert err.line == line, f"line {err.line}, wanted {line}: {err}"
    assert str(err).startswith(f"s.yml:{line}: ")


def test_a_send_says_how_it_protects_the_connection() -> None:
    sc = load(HEAD + """steps:
  - send: {from: andy, to: betty, subject: a, submission: true, tls: clear}
  - send: {from: andy, to: betty, subject: b, submission: true, tls: starttls}
  - send: {from: andy, to: betty, subject: c, tls: implicit}
  - send: {from: andy, to: betty, subject: d}
""")
    assert [(s.action.tls, m.SEND_TLS.get(s.action.tls)) for s in sc.steps if isinstance(s.action, m.Send)] == [
        ("clear", "--no-tls"), ("starttls", "--starttls"), ("implicit", "--tls"), ("", None)]


def test_a_reply_fault_reads_as_the_server_will_use_it() -> None:
    sc = load(HEAD + """steps:
  - fault:
      reply: {host: mail.stevenchoy.example, stage: RCPT, code: 450, status: 4.7.1, text: Greylisted, times: 1}
  - fault:
      reply: {host: smtp, stage: mail, code: 550, from: '*@ouhk.example', for: 30}
  - fault: {unreply: mail}
""")
    first, second, third = (s.action for s in sc.steps)
    assert first == m.ReplyFault("mail", ReplyRule("", "rcpt", 450, "4.7.1", "Greylisted", times=1))
    assert second == m.ReplyFault("smtp", ReplyRule("", "mail", 550, "5.0.0", "Refused", seconds=30.0,
                                                    sender="*@ouhk.example"))
    assert third == m.ClearReplies("mail")
    assert sc.steps[0].title == "mail answers rcpt: 450 4.7.1 Greylisted for the first 1 try"


def test_a_full_disk_makes_the_store_a_small_tmpfs_in_the_scenario_s_lab() -> None:
    base = topology.load().with_tmpfs("mail", "/var/mail/maillab", "size=2m")  # compose `tmpfs:`
    sc = parse.load(Path("s.yml"), HEAD + """steps:
  - fault: {disk_full: smtp}
  - fault: {disk_free: smtp}
  - fault: {disk_full: mail}
""", base)
    assert [s.action for s in sc.steps] == [m.DiskFull("smtp", "/var/spool/maillab"),
                                            m.DiskFull("smtp", "/var/spool/maillab", undo=True),
                                            m.DiskFull("mail", "/var/mail/maillab")]
    tmpfs = {h.name: h.tmpfs for h in sc.topology.hosts if h.tmpfs}
    assert tmpfs == {"smtp": (("/var/spool/maillab", parse.DISK_SIZE),),
                     "mail": (("/var/mail/maillab", "size=2m"),)}  # the topology's own size stands


def test_a_shape_says_its_direction() -> None:
    sc = load(HEAD + "steps:\n  - fault: {shape: {host: mail, rate: 2mbit}}\n"
                     "  - fault: {shape: {host: mail, loss: 5%, direction: in}}\n")
    both, into = sc.steps
    assert both.action == m.Shape("mail", rate_kbit=2000)
    assert both.title == "shape mail's link (both ways): rate 2000 kbit/s"
    assert isinstance(into.action, m.Shape) and into.action.direction == "in"
    assert "direction 'up': valid choices: both, in, out" in error_of(
        HEAD + "steps:\n  - fault: {shape: {host: mail, rate: 2mbit, direction: up}}\n").message


def test_a_dns_change_applies_to_the_lab_as_the_steps_leave_it() -> None:
    sc = load(HEAD + """steps:
  - fault: {dns: {domain: stevenchoy.example, mx: ['0 .']}}
  - fault: {dns: {domain: stevenchoy.example, records: ['www IN A 10.89.0.99']}}
""")
    second = sc.steps[1].action
    assert isinstance(second, m.DnsChange)
    steven = next(d for d in second.topology.domains if d.name == "stevenchoy.example")
    assert [r.exchange for r in steven.mx] == ["."] and steven.records == ("www IN A 10.89.0.99",)
    first = next(d for d in sc.topology.domains if d.name == "stevenchoy.example")
    assert [r.exchange for r in first.mx] == ["mail.stevenchoy.example"]  # the lab starts unchanged


def test_the_yaml_1_1_booleans_do_not_bite_keys() -> None:
    """`on:` is true in YAML 1.1; no key of the format is one of those words."""
    words = {"on", "off", "yes", "no", "y", "n", "true", "false"}
    keys = {k for name in dir(parse) if name.endswith("_KEYS") for k in getattr(parse, name)}
    assert not keys & words


def test_the_readme_examples_are_valid() -> None:
    """scenarios/README.md: its full example and its topology section parse; every step example too."""
    import re as _re

    readme_path = Path(__file__).resolve().parents[2] / "scenarios" / "README.md"
    readme = readme_path.read_text()
    blocks = _re.findall(r"```yaml\n(.*?)```", readme, _re.DOTALL)
    full, topo, *steps = blocks
    here = readme_path.parent / "example.yml"  # files named in the examples are relative to scenarios/
    assert load(full, here).name == "The MX is down, then back"
    sc = load(HEAD + topo + "steps: [{fetch: {user: carol}}]\n", here)
    assert {h.name for h in sc.topology.hosts} >= {"mx2", "carol"}
    for block in steps:
        # the step examples may use the hosts the topology example adds
        indented = "".join("  " + line + "\n" for line in block.splitlines())
        assert load(HEAD + topo + "steps:\n" + indented, here).steps


# -- counts, retry gaps, attachment sizes and hashes, DNS and relay facts (issue 14) ------------------


@pytest.mark.parametrize(("written", "count"), [
    ("2", m.Count(2, 2)), ("'>= 2'", m.Count(2)), ("'<= 3'", m.Count(0, 3)), ("'2..3'", m.Count(2, 3)),
    ("' 1 .. 1 '", m.Count(1, 1)),
])
def test_one_count_syntax_everywhere(written: str, count: m.Count) -> None:
    sc = load(HEAD + f"""steps:
  - wait: {{queued: {{to: betty, attempts: {written}}}}}
  - wait: {{delivered: {{to: betty, count: {written}}}}}
  - expect:
      mailbox: {{user: betty, count: {written}}}
      queue: {{to: betty, attempts: {written}}}
""")
    queued, delivered, expect = (s.action for s in sc.steps)
    assert isinstance(queued, m.Wait) and isinstance(queued.until, m.Queued) and queued.until.attempts == count
    assert isinstance(delivered, m.Wait) and isinstance(delivered.until, m.Delivered)
    assert delivered.until.count == count
    assert isinstance(expect, m.Expect)
    mailbox, queue = expect.checks
    assert isinstance(mailbox, m.MailboxExpect) and mailbox.count == count
    assert isinstance(queue, m.QueueExpect) and queue.attempts == count


def test_count_words() -> None:
    assert [str(c) for c in (m.Count(2, 2), m.Count(2), m.Count(0, 3), m.Count(2, 3.5))] == [
        "exactly 2", "at least 2", "at most 3", "2 to 3.5"]
    assert m.Count(2, 3).holds(3) and not m.Count(2, 3).holds(4) and m.Count(2).holds(99)


def test_retry_gap_attachment_checks_and_new_facts() -> None:
    digest = "ab" * 32
    sc = load(HEAD + f"""steps:
  - expect:
      queue: {{to: betty, retry_gap: {{attempt: 2, seconds: "1.5..4"}}}}
      mailbox: {{user: betty, attachments: [a.txt, {{name: b.bin, size: 20000, sha256: "{digest.upper()}"}}]}}
      traffic:
        - dns: {{from: smtp, name: Ghost.Broken.Example., type: a, answer: nxdomain}}
        - dns: {{name: mail.stevenchoy.example, answer: mail}}
        - relayed: {{to: betty, via: [andy, smtp, mail], subject: Hi}}
""", )
    [step] = sc.steps
    assert isinstance(step.action, m.Expect)
    queue, mailbox, traffic = step.action.checks
    assert isinstance(queue, m.QueueExpect) and queue.retry_gap == m.RetryGap(2, m.Count(1.5, 4))
    assert isinstance(mailbox, m.MailboxExpect) and mailbox.attachments == (
        m.AttachmentExpect("a.txt"), m.AttachmentExpect("b.bin", 20000, digest))
    assert isinstance(traffic, m.TrafficExpect) and traffic.facts == (
        m.DnsLooked("smtp", "ghost.broken.example", "A", "NXDOMAIN"),
        m.DnsLooked(None, "mail.stevenchoy.example", "A", "mail"),
        m.Relayed("betty@stevenchoy.example", ("andy", "smtp", "mail"), "Hi"))


@pytest.mark.parametrize(("text", "line", "message"), [
    (HEAD + "steps:\n  - wait: {queued: {to: betty, attempts: '> 2'}}\n", 5,
     "attempts must be a whole number of at least 0 (exactly), or a range in quotes: \">= 2\", \"<= 3\" or "
     "\"2..3\"; not '> 2'"),
    (HEAD + "steps:\n  - wait: {queued: {to: betty, attempts: '3..2'}}\n", 5, "attempts must be"),
    (HEAD + "steps:\n  - wait: {queued: {to: betty, attempts: '1.5..2'}}\n", 5, "attempts must be a whole number"),
    (HEAD + "steps:\n  - expect:\n      queue: {to: betty, retry_gap: {attempt: 1, seconds: 2}}\n", 6,
     "attempt must be a whole number of at least 2"),
    (HEAD + "steps:\n  - expect:\n      queue: {to: betty, retry_gap: {attempt: 2}}\n", 6, "retry_gap needs 'seconds'"),
    (HEAD + "steps:\n  - expect:\n      mailbox: {user: betty, attachments: [{name: a, sha256: xyz}]}\n", 6,
     "sha256 'xyz' is not 64 hex digits"),
    (HEAD + "steps:\n  - expect:\n      mailbox: {user: betty, attachments: [{size: 3}]}\n", 6,
     "an attachment needs 'name'"),
    (HEAD + "steps:\n  - expect:\n      traffic: [{dns: {name: x.example, type: MXX}}]\n", 6,
     "type 'MXX': valid choices: A, AAAA, MX"),
    (HEAD + "steps:\n  - expect:\n      traffic: [{relayed: {to: betty, via: [smtp]}}]\n", 6,
     "via must list the hosts the message passed, at least two"),
    (HEAD + "steps:\n  - expect:\n      traffic: [{relayed: {to: betty, via: [smtp, nowhere]}}]\n", 6,
     "'nowhere' is not a host of this lab"),
])
def test_bad_counts_and_facts_name_the_line(text: str, line: int, message: str) -> None:
    with pytest.raises(SourceError) as failed:
        load(text)
    assert f"s.yml:{line}:" in str(failed.value) and message in str(failed.value)
