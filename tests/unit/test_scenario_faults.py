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


IFB_SETUP = [
    ["ip", "link", "add", "ifb0", "type", "ifb"],
    ["ip", "link", "set", "ifb0", "up"],
    ["tc", "qdisc", "add", "dev", "eth0", "handle", "ffff:", "ingress"],
    ["tc", "filter", "add", "dev", "eth0", "parent", "ffff:", "protocol", "ip", "u32", "match", "u32", "0", "0",
     "action", "mirred", "egress", "redirect", "dev", "ifb0"],
]
IFB_UNDO = [["ip", "link", "del", "ifb0"], ["tc", "qdisc", "del", "dev", "eth0", "ingress"]]


def argvs(plan: faults.ShapePlan) -> list[list[str]]:
    return [c.argv for c in plan.commands]


def test_netem_shapes_both_ways_by_default_what_arrives_through_an_ifb_device() -> None:
    plan = faults.shape_plan(m.Shape("mx1", delay_ms=200, loss_percent=12.5, rate_kbit=256), "eth0", netem=True)
    netem = ["delay", "200ms", "loss", "12.5%", "rate", "256kbit"]
    assert argvs(plan) == [*IFB_SETUP, ["tc", "qdisc", "replace", "dev", "ifb0", "root", "netem", *netem],
                           ["tc", "qdisc", "replace", "dev", "eth0", "root", "netem", *netem]]
    assert [c.undo for c in plan.commands if c.undo] == [*IFB_UNDO, ["tc", "qdisc", "del", "dev", "ifb0", "root"],
                                                         ["tc", "qdisc", "del", "dev", "eth0", "root"]]
    assert plan.summary == ("mx1 in: netem delay 200ms loss 12.5% rate 256kbit on ifb0 (fed by eth0's ingress); "
                            "out: netem delay 200ms loss 12.5% rate 256kbit on eth0")


def test_one_direction_only_when_the_step_says_so() -> None:
    out = faults.shape_plan(m.Shape("mx1", delay_ms=1500, direction="out"), "eth1", netem=True)
    assert argvs(out) == [["tc", "qdisc", "replace", "dev", "eth1", "root", "netem", "delay", "1500ms"]]
    into = faults.shape_plan(m.Shape("mx1", rate_kbit=64, direction="in"), "eth0", netem=False)
    assert argvs(into)[:4] == IFB_SETUP and argvs(into)[4][4:7] == ["ifb0", "root", "tbf"]
    assert into.summary == "mx1 in: 64 kbit/s (tbf on ifb0 (fed by eth0's ingress)) (no netem in this kernel)"


def test_without_netem_loss_is_an_iptables_statistic_drop_each_way_and_rate_a_tbf() -> None:
    plan = faults.shape_plan(m.Shape("mx1", loss_percent=10, rate_kbit=2000), "eth0", netem=False)
    stat = ["-m", "statistic", "--mode", "random", "--probability", "0.1000", *TAG, "-j", "DROP"]
    tbf = ["tbf", "rate", "2000kbit", "burst", faults.TBF_BURST, "latency", faults.TBF_LATENCY]
    assert argvs(plan) == [*IFB_SETUP,
                           ["iptables", "-A", "INPUT", "-i", "eth0", *stat],
                           ["tc", "qdisc", "replace", "dev", "ifb0", "root", *tbf],
                           ["iptables", "-A", "OUTPUT", "-o", "eth0", *stat],
                           ["tc", "qdisc", "replace", "dev", "eth0", "root", *tbf]]
    loss = plan.commands[4]
    assert loss.undo == ["iptables", "-D", *loss.argv[2:]] and loss.what == "a 10% loss rule on mx1"
    assert plan.summary == (
        "mx1 in: 10% loss (iptables statistic on INPUT), 2000 kbit/s (tbf on ifb0 (fed by eth0's ingress)); "
        "out: 10% loss (iptables statistic on OUTPUT), 2000 kbit/s (tbf on eth0) (no netem in this kernel)")


def test_without_an_ifb_device_what_arrives_is_policed_by_iptables() -> None:
    plan = faults.shape_plan(m.Shape("mx1", rate_kbit=256, direction="in"), "eth0", netem=False, ifb=False)
    (police,) = plan.commands
    assert police.argv == ["iptables", "-A", "INPUT", "-i", "eth0", "-m", "hashlimit", "--hashlimit-name",
                           "maillab-in", "--hashlimit-above", "32000b/s", "--hashlimit-burst", faults.POLICE_BURST,
                           *TAG, "-j", "DROP"]
    assert "hashlimit policing on INPUT: no ifb" in plan.summary


def test_without_netem_a_delay_is_refused_with_what_to_do() -> None:
    with pytest.raises(StepFailed) as failed:
        faults.shape_plan(m.Shape("mx1", delay_ms=200, loss_percent=10), "eth0", netem=False)
    assert failed.value.expected == "a 200 ms delay on mx1's link"
    assert "no netem (sch_netem)" in failed.value.seen and "drop the delay" in failed.value.seen
    with pytest.raises(StepFailed, match="direction: out"):
        faults.shape_plan(m.Shape("mx1", delay_ms=200), "eth0", netem=True, ifb=False)


def test_a_missing_kernel_feature_is_told_from_other_errors() -> None:
    assert faults.kernel_lacks("Error: Specified qdisc kind is unknown.")
    assert faults.kernel_lacks("Error: Unknown device type.")
    assert not faults.kernel_lacks("RTNETLINK answers: Operation not permitted")


def test_a_full_disk_is_a_ballast_file_filling_the_store_then_removed() -> None:
    fill, free = faults.disk_commands("/var/mail/maillab")[False], faults.disk_commands("/var/mail/maillab")[True]
    assert fill == ["sh", "-c", "cat /dev/zero > /var/mail/maillab/.maillab-ballast 2>/dev/null; sync; "
                                "df -kP /var/mail/maillab | tail -n 1"]
    assert free == ["sh", "-c", "rm -f /var/mail/maillab/.maillab-ballast && df -kP /var/mail/maillab | tail -n 1"]
    assert faults.free_kb("tmpfs 16384 16384 0 100% /var/mail/maillab\n") == (16384, 0)


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
