"""Everything that runs inside the lab: the servers, the mail client, the readiness probe.

Each host of the lab starts ``python3 -m services <role>``; see :mod:`services.__main__`.
"""
