"""A raw SMTP client for the component tests: lines as typed in telnet, replies read whole."""

from __future__ import annotations

import socket
import ssl

TIMEOUT = 10.0


class Wire:
    """A client typing raw lines, as in telnet."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self.file = self.sock.makefile("rb")
        self.greeting = self.reply()

    def reply(self) -> str:
        """One whole reply, its lines joined by newlines; "" if the server closed instead."""
        lines: list[str] = []
        while True:
            raw = self.file.readline()
            if not raw:
                return "\n".join(lines)
            assert raw.endswith(b"\r\n"), raw
            lines.append(raw[:-2].decode("ascii"))
            if raw[3:4] != b"-":
                return "\n".join(lines)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def command(self, line: str | bytes) -> str:
        self.send((line.encode("ascii") if isinstance(line, str) else line) + b"\r\n")
        return self.reply()

    def closed_by_server(self) -> bool:
        return self.file.read() == b""

    def close(self) -> None:
        self.file.close()
        self.sock.close()

    def starttls(self, context: ssl.SSLContext, hostname: str = "127.0.0.1") -> None:
        """After the server's 220 to STARTTLS: the same connection, in TLS from here on."""
        self.file.close()
        self.sock = context.wrap_socket(self.sock, server_hostname=hostname)
        self.file = self.sock.makefile("rb")
