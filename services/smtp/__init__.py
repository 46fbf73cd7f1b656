"""SMTP in the lab: the servers (aiosmtpd handlers), the sender MTA's queue and relay."""
