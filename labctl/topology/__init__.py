"""The lab topology: ``compose/lab.yml`` (and overlays on it) read and checked into frozen dataclasses.

- :mod:`~labctl.topology.model`: the dataclasses, and the queries that ask hosts by what they do;
- :mod:`~labctl.topology.compose`: ``networks:``/``services:`` into hosts (one host reader);
- :mod:`~labctl.topology.mail`: ``x-maillab``: domains, MX records, users, retry (one domain reader);
- :mod:`~labctl.topology.base`: a topology file; :mod:`~labctl.topology.overlay`: edits of one;
- :mod:`~labctl.topology.checks`: the rules the whole lab keeps, checked after every edit.
"""

from labctl.topology.base import DEFAULT_TOPOLOGY, load
from labctl.topology.model import IMAGES, DomainSpec, HostSpec, MxRecord, Topology, is_reference
from labctl.topology.overlay import apply_overlay, change_domain, load_overlay

__all__ = [
    "DEFAULT_TOPOLOGY", "IMAGES", "DomainSpec", "HostSpec", "MxRecord", "Topology", "apply_overlay",
    "change_domain", "is_reference", "load", "load_overlay",
]
