"""The IMAP4rev1 server: grammar (parser), session (core), Maildir++ store (store), asyncio shell (server)."""
