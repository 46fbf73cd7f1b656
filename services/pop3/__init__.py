"""POP3 (RFC 1939) in the lab: a sans-I/O session core and the asyncio server around it."""
