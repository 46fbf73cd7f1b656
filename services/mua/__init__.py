"""The mail user agent: the host role and the `mail` command a student types."""
