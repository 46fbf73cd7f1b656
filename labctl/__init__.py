"""labctl: bring maillab labs up and down, use them, and look at what crossed the wire.

The CLI (:mod:`labctl.cli`) is thin; the library modules do the work and report progress as
events (:mod:`labctl.events`).
"""
