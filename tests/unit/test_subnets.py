"""Where a lab's network goes: labctl.subnets, a pure choice over the networks already taken."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from labctl.errors import AddressClash
from labctl.subnets import SUBNET_SEARCH, Taken, choose_subnet, free_subnet, host_networks

N = ipaddress.IPv4Network
LAB = N("10.89.0.0/24")


def test_a_free_topology_subnet_is_kept() -> None:
    choice = choose_subnet(LAB, None, [Taken(N("172.17.0.0/16"), "docker network bridge")])
    assert (choice.subnet, choice.moved_from) == (LAB, None)


def test_a_taken_topology_subnet_moves_to_the_first_free_one_of_its_size_and_says_why() -> None:
    taken = [Taken(N("10.89.0.0/24"), "lab 'maillab'"), Taken(N("10.89.1.0/24"), "lab 'other'")]
    choice = choose_subnet(LAB, None, taken)
    assert choice.subnet == N("10.89.2.0/24")
    assert choice.moved_from == "10.89.0.0/24 (lab 'maillab')"


def test_an_overlap_counts_however_the_networks_are_sized() -> None:
    choice = choose_subnet(LAB, None, [Taken(N("10.89.0.128/25"), "docker network x")])
    assert choice.subnet == N("10.89.1.0/24")


def test_an_explicit_subnet_that_clashes_is_refused_with_a_free_one_to_try() -> None:
    with pytest.raises(AddressClash, match=r"10\.90\.0\.0/24 overlaps 10\.90\.0\.0/16 \(this machine's network\).*"
                                           r"e\.g\. 10\.89\.0\.0/24"):
        choose_subnet(LAB, N("10.90.0.0/24"), [Taken(N("10.90.0.0/16"), "this machine's network")])


def test_an_explicit_free_subnet_is_used_even_when_the_topology_s_is_free_too() -> None:
    assert choose_subnet(LAB, N("10.90.0.0/24"), []).subnet == N("10.90.0.0/24")


def test_a_full_search_range_says_to_pass_a_subnet() -> None:
    with pytest.raises(AddressClash, match="no free /24 left in 10.89.0.0/16; pass --subnet"):
        free_subnet(24, [Taken(SUBNET_SEARCH, "lab 'big'")])


def test_the_search_range_avoids_the_build_hosts_networks() -> None:
    for reserved in (N("192.0.2.0/24"), N("203.0.113.0/24"), N("10.255.0.0/16")):
        assert not SUBNET_SEARCH.overlaps(reserved)


def test_host_networks_reads_the_route_table_and_the_name_servers(tmp_path: Path) -> None:
    routes = tmp_path / "route"
    # Iface Destination Gateway Flags RefCnt Use Metric Mask ...: little-endian hex, as the kernel writes it.
    routes.write_text("Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\tMTU\tWindow\tIRTT\n"
                      "eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n"  # default: no clash
                      "eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n")  # 192.0.2.0/24
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("search example\nnameserver 203.0.113.53\nnameserver not-an-address\n")
    assert [t.network for t in host_networks(routes, resolv)] == [N("192.0.2.0/24"), N("203.0.113.53/32")]
    assert host_networks(tmp_path / "none", tmp_path / "none") == []
