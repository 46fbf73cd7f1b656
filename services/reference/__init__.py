"""Reference peers: Postfix, Dovecot and NSD playing our roles in the same lab, for comparison."""
