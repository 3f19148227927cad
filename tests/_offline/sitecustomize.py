"""Blocks outbound network in every Python process that starts with this folder first on ``PYTHONPATH``.

``tests/test_offline.py`` puts this folder first on a job's ``PYTHONPATH``. Python imports ``sitecustomize`` from
the first folder on ``sys.path`` that has one, at start-up, before any user code; Ray's local raylet starts its
Python workers with the driver's environment, so they import this module too. It replaces
``socket.socket.connect``, ``socket.socket.connect_ex`` and ``socket.create_connection`` with versions that raise
``OSError("network blocked by tests/test_offline.py: <address>")`` for any address that is not loopback
(127.0.0.0/8, ::1, ``localhost``), an address of one of this machine's own network interfaces, or a unix socket.
Every Python client (urllib, requests/urllib3, httpx, aiohttp, huggingface_hub, boto3, ssl) opens its connections
through these.

Ray's C++ core (GCS, raylet, gRPC between processes) does not use Python sockets and is not affected. It picks the
node's address from the interface of the default route, not loopback, and Ray's Python processes (dashboard,
agents, workers) then connect to each other on that address; a connection to one of this machine's own addresses
never leaves the machine, so it is allowed.

The raised ``OSError`` carries no errno: callers that treat a specific errno (ENETUNREACH) as "offline, look up my
host name instead" take their generic path.

When ``$TRCGL_OFFLINE_LOG`` names a file, each process appends one JSON line when the blocker is installed
(``{"event": "installed", "pid", "cmdline"}``) and one per refused connection (``{"event": "blocked", "pid",
"cmdline", "address", "type"}``), so the test can show which processes were covered and what was refused even
where the caller swallowed the error.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket

MESSAGE = "network blocked by tests/test_offline.py"
LOG_ENV = "TRCGL_OFFLINE_LOG"
# only IP sockets reach other machines (unix, netlink and packet sockets are left alone)
INET = (socket.AF_INET, socket.AF_INET6)
LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}


def _cmdline() -> str:
    # /proc, not sys.argv: sys.argv may not be set yet while site-packages are being processed
    try:
        with open("/proc/self/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode(errors="replace").strip()[:300]
    except OSError:
        return ""


def _log(event: str, **fields: object) -> None:
    path = os.environ.get(LOG_ENV)
    if not path:
        return
    line = json.dumps({"event": event, "pid": os.getpid(), "cmdline": _cmdline(), **fields}, default=str)
    try:
        # one short O_APPEND write per line: lines from concurrent processes do not interleave
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, (line + "\n").encode())
        finally:
            os.close(fd)
    except OSError:
        pass


_OWN: set[str] | None = None


def own_addresses() -> set[str]:
    """The IP addresses of this machine's network interfaces (read once, on the first non-loopback connect)."""
    global _OWN
    if _OWN is None:
        try:
            import psutil  # imported here: only processes that connect somewhere other than loopback pay for it

            _OWN = {
                a.address.split("%", 1)[0]
                for addrs in psutil.net_if_addrs().values()
                for a in addrs
                if a.family in (socket.AF_INET, socket.AF_INET6)
            }
        except Exception:  # no psutil: loopback only, the stricter rule
            _OWN = set()
    return _OWN


def is_local(address: object) -> bool:
    """Whether ``address`` (what ``socket.connect`` takes) is loopback, an address of this machine, or a unix socket.

    Args:
        address: a ``(host, port[, flowinfo, scope_id])`` tuple, or a path (str/bytes) for AF_UNIX.
    """
    if isinstance(address, str | bytes | bytearray | os.PathLike):
        return True  # AF_UNIX path (or abstract name): never leaves the machine
    if not isinstance(address, tuple) or not address:
        return False
    host = address[0]
    if isinstance(host, bytes):
        host = host.decode(errors="replace")
    if not isinstance(host, str):
        return False
    host = host.strip().rstrip(".").lower()
    if host in LOOPBACK_NAMES:
        return True
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False  # any other host name: refused before its DNS lookup
    return ip.is_loopback or str(ip) in own_addresses()


def _refuse(address: object, kind: object) -> OSError:
    _log("blocked", address=repr(address), type=getattr(kind, "name", str(kind)))
    return OSError(f"{MESSAGE}: {address!r}")


_connect = socket.socket.connect
_connect_ex = socket.socket.connect_ex
_create_connection = socket.create_connection


def _guarded_connect(self: socket.socket, address: object) -> None:
    if self.family in INET and not is_local(address):
        raise _refuse(address, self.type)
    return _connect(self, address)


def _guarded_connect_ex(self: socket.socket, address: object) -> int:
    if self.family in INET and not is_local(address):
        raise _refuse(address, self.type)
    return _connect_ex(self, address)


def _guarded_create_connection(address: tuple, *args: object, **kwargs: object) -> socket.socket:
    # checked on the name, before getaddrinfo: a refused host costs no DNS query
    if not is_local(address):
        raise _refuse(address, socket.SOCK_STREAM)
    return _create_connection(address, *args, **kwargs)


socket.socket.connect = _guarded_connect  # type: ignore[method-assign]
socket.socket.connect_ex = _guarded_connect_ex  # type: ignore[method-assign]
socket.create_connection = _guarded_create_connection  # type: ignore[assignment]
_log("installed")
