"""The mail user agent: the host role and the `mail` command a student types."""

PROG = "mail"  # the command a student types on a MUA host (/usr/local/bin/mail): its name in errors
