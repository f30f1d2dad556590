"""Tries to read a host file and open a network connection; fails if either works."""
import socket

from sluice import log


def handle(events):
    try:
        with open("/etc/hostname") as f:
            raise RuntimeError("read a host file: " + f.read())
    except OSError as e:
        log(f"open denied: {e!r}")
    try:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(1)
        s.connect(("127.0.0.1", 7))
        s.close()
        raise RuntimeError("opened a connection")
    except OSError as e:
        log(f"socket denied: {e!r}")
