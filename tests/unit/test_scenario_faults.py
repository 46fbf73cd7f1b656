"""The commands a fault runs on a lab host, built without a lab: netem and its fallback, port blocks.

Both shaping paths are checked here whatever kernel runs the tests (CI's may or may not have
``sch_netem``); the lab test runs the one its kernel has.
"""

from __future__ import annotations

import io
import ipaddress
import tarfile

import pytest

from labctl.lab import tar_of
from labctl.scenario import faults, parse
from labctl.scenario import model as m
from labctl.scenario.context import StepFailed

TAG = ["-m", "comment", "--comment", "maillab-fault"]


def test_netem_does_delay_loss_and_rate_in_one_qdisc() -> None:
    plan = faults.shape_plan(m.Shape("mx1", delay_ms=200, loss_percent=12.5, rate_kbit=256), "eth0", netem=True)
    (command,) = plan.commands
    assert command.argv == ["tc", "qdisc", "replace", "dev", "eth0", "root", "netem",
                            "delay", "200ms", "loss", "12.5%", "rate", "256kbit"]
    assert command.undo == ["tc", "qdisc", "del", "dev", "eth0", "root"]
    assert command.what == "netem on mx1"
    assert plan.summary == "netem on mx1 eth0: delay 200ms loss 12.5% rate 256kbit"


def test_netem_with_only_a_delay() -> None:
    (command,) = faults.shape_plan(m.Shape("mx1", delay_ms=1500), "eth1", netem=True).commands
    assert command.argv[-3:] == ["netem", "delay", "1500ms"]


def test_without_netem_loss_is_an_iptables_statistic_drop_and_rate_a_tbf() -> None:
    plan = faults.shape_plan(m.Shape("mx1", loss_percent=10, rate_kbit=2000), "eth0", netem=False)
    loss, rate = plan.commands
    rule = ["INPUT", "-i", "eth0", "-m", "statistic", "--mode", "random", "--probability", "0.1000", *TAG,
            "-j", "DROP"]
    assert (loss.argv, loss.undo) == (["iptables", "-A", *rule], ["iptables", "-D", *rule])
    assert loss.what == "a 10% loss rule on mx1"
    assert rate.argv == ["tc", "qdisc", "replace", "dev", "eth0", "root", "tbf", "rate", "2000kbit",
                         "burst", faults.TBF_BURST, "latency", faults.TBF_LATENCY]
    assert rate.undo == ["tc", "qdisc", "del", "dev", "eth0", "root"]
    assert plan.summary == ("mx1 eth0: 10% of arriving packets dropped (iptables statistic); "
                            "sending limited to 2000 kbit/s (tbf) (no netem in this kernel)")


def test_without_netem_only_what_was_asked_is_done() -> None:
    (rate,) = faults.shape_plan(m.Shape("mx1", rate_kbit=64), "eth0", netem=False).commands
    assert rate.argv[6] == "tbf"
    (loss,) = faults.shape_plan(m.Shape("mx1", loss_percent=0.5), "eth0", netem=False).commands
    assert loss.argv[:2] == ["iptables", "-A"] and "0.0050" in loss.argv


def test_without_netem_a_delay_is_refused_with_what_to_do() -> None:
    with pytest.raises(StepFailed) as failed:
        faults.shape_plan(m.Shape("mx1", delay_ms=200, loss_percent=10), "eth0", netem=False)
    assert failed.value.expected == "a 200 ms delay on mx1's link"
    assert "no netem (sch_netem)" in failed.value.seen and "drop the delay" in failed.value.seen


def test_a_missing_netem_is_told_from_other_tc_errors() -> None:
    assert faults.netem_missing("Error: Specified qdisc kind is unknown.")
    assert not faults.netem_missing("RTNETLINK answers: Operation not permitted")


def test_block_refuses_with_a_reset_or_drops() -> None:
    rules = faults.block_rules(25)
    base = ["INPUT", "-p", "tcp", "--dport", "25", *TAG, "-j"]
    assert rules == {"refuse": [*base, "REJECT", "--reject-with", "tcp-reset"], "drop": [*base, "DROP"]}
    assert set(rules) == set(parse.BLOCK_HOW)  # every way the scenario format offers


def test_the_interface_is_the_one_holding_the_lab_address() -> None:
    shown = ("1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever preferred_lft forever\n"
             "57: eth1@if58    inet 10.0.0.10/24 brd 10.0.0.255 scope global eth1\\       valid_lft forever\n")
    assert faults.interface_with(shown, ipaddress.IPv4Address("10.0.0.10")) == "eth1"
    assert faults.interface_with(shown, ipaddress.IPv4Address("10.0.0.11")) is None
    assert faults.interface_with("", ipaddress.IPv4Address("10.0.0.10")) is None


def test_zone_files_travel_as_a_tar_of_readable_files() -> None:
    data = tar_of({"db.example": b"$ORIGIN example.\n", "named.conf": b"zone\n"}, mtime=1_700_000_000)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = {t.name: t for t in tar.getmembers()}
        assert set(members) == {"db.example", "named.conf"}
        assert members["db.example"].mode == 0o644 and members["db.example"].mtime == 1_700_000_000
        extracted = tar.extractfile(members["db.example"])
        assert extracted is not None and extracted.read() == b"$ORIGIN example.\n"
