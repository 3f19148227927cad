"""A tiny loopback TCP proxy with a switch, to make a real endpoint unreachable on demand.

:class:`TcpProxy` forwards ``listen_host:listen_port`` to ``target_host:target_port`` with plain threads and sockets.
:meth:`TcpProxy.cut` makes the endpoint unreachable: existing connections are reset and new ones are refused (the
listening socket is closed, so a client gets ``ECONNREFUSED`` as from a server that is down; with ``mode="reset"``
the port keeps accepting and every new connection is reset at once, as by a middlebox). :meth:`TcpProxy.restore`
brings it back on the same port, :meth:`TcpProxy.outage` cuts now and restores after a delay in a background timer.

    with TcpProxy("127.0.0.1", 5000) as proxy:
        client = make_client(proxy.url)
        proxy.outage(8.0)
        client.get(...)  # must ride out the 8 s outage on its own retries
"""

from __future__ import annotations

import logging
import select
import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Literal

log = logging.getLogger(__name__)

_POLL_S = 0.05  # how often the threads look at the switch
_CHUNK = 64 * 1024


def _reset_and_close(sock: socket.socket) -> None:
    """Closes ``sock`` with an RST (SO_LINGER 0) instead of an orderly FIN; ignores sockets already gone."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


class _Connection:
    """One proxied connection: the client's socket, the target's socket and the thread that pumps between them."""

    def __init__(self, client: socket.socket, upstream: socket.socket, on_done: Callable[[_Connection], None]) -> None:
        self.client = client
        self.upstream = upstream
        self.on_done = on_done
        self.dropped = threading.Event()
        self.thread = threading.Thread(target=self._pump, name="tcp-proxy-pump", daemon=True)

    def drop(self) -> None:
        """Asks the pump thread to reset both sides; wakes it by shutting the sockets down."""
        self.dropped.set()
        for sock in (self.client, self.upstream):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _pump(self) -> None:
        sel = selectors.DefaultSelector()
        peers = {self.client: self.upstream, self.upstream: self.client}
        try:
            for sock in peers:
                sel.register(sock, selectors.EVENT_READ)
            while not self.dropped.is_set():
                for key, _ in sel.select(timeout=_POLL_S):
                    src: socket.socket = key.fileobj  # type: ignore[assignment]
                    data = src.recv(_CHUNK)
                    if not data:
                        return
                    peers[src].sendall(data)
        except OSError:
            return
        finally:
            sel.close()
            if self.dropped.is_set():
                _reset_and_close(self.client)
                _reset_and_close(self.upstream)
            else:
                self.client.close()
                self.upstream.close()
            self.on_done(self)


class TcpProxy:
    """Forwards a loopback port to a target ``host:port``, with a switch that makes the target unreachable.

    Args:
        target_host: host of the real endpoint.
        target_port: port of the real endpoint.
        listen_host: where the proxy listens (loopback by default).
        listen_port: the proxy's port; 0 picks a free one (kept across cut/restore).
        mode: how a cut endpoint answers new connections: ``"refuse"`` (the port is closed: connection refused) or
            ``"reset"`` (accepted, then reset at once).
        connect_timeout_s: timeout of the proxy's own connection to the target.

    Attributes:
        accepted: connections forwarded so far.
        dropped: connections reset by :meth:`cut`.
        rejected: connections reset on arrival while cut (``mode="reset"`` only).
    """

    def __init__(
        self,
        target_host: str,
        target_port: int,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
        mode: Literal["refuse", "reset"] = "refuse",
        connect_timeout_s: float = 5.0,
    ) -> None:
        if mode not in ("refuse", "reset"):
            raise ValueError(f"mode must be 'refuse' or 'reset', got {mode!r}")
        self.target = (target_host, int(target_port))
        self.listen_host = listen_host
        self.mode = mode
        self.connect_timeout_s = connect_timeout_s
        self.accepted = 0
        self.dropped = 0
        self.rejected = 0
        self._cond = threading.Condition()
        self._is_cut = False
        self._wanted = 0  # generation of the switch state asked for ...
        self._applied = 0  # ... and the one the accept thread has put in place
        self._stop = threading.Event()
        self._connections: set[_Connection] = set()
        self._timers: list[threading.Timer] = []
        self._listener: socket.socket | None = self._bind(listen_port)
        self.port: int = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._accept_loop, name=f"tcp-proxy-{self.port}", daemon=True)
        self._thread.start()
        log.info("proxy 127.0.0.1:%d -> %s:%d (%s mode)", self.port, *self.target, mode)

    # ------------------------------------------------------------------------------------------------ public

    @property
    def url(self) -> str:
        """``http://host:port`` of the proxy (an S3 ``endpoint_url``)."""
        return f"http://{self.listen_host}:{self.port}"

    @property
    def is_cut(self) -> bool:
        """Whether the endpoint is unreachable now."""
        with self._cond:
            return self._is_cut

    def cut(self) -> None:
        """Makes the endpoint unreachable: resets every open connection and refuses (or resets) new ones.

        Returns once the switch is in place: no connection made after this call reaches the target.
        """
        self._switch(True)
        with self._cond:
            victims = list(self._connections)
        for conn in victims:
            conn.drop()
        for conn in victims:
            conn.thread.join(timeout=5.0)
        self.dropped += len(victims)
        log.info("proxy :%d cut (%d open connection(s) reset)", self.port, len(victims))

    def restore(self) -> None:
        """Makes the endpoint reachable again on the same port."""
        self._switch(False)
        log.info("proxy :%d restored", self.port)

    def outage(self, seconds: float) -> threading.Timer:
        """Cuts now and restores after ``seconds`` in a background timer (cancelled by :meth:`close`).

        Returns:
            The timer (``join()`` it to wait for the restore).
        """
        self.cut()
        timer = threading.Timer(seconds, self._restore_unless_closed)
        timer.daemon = True
        timer.name = f"tcp-proxy-{self.port}-restore"
        self._timers.append(timer)
        timer.start()
        log.info("proxy :%d outage of %.1f s begun", self.port, seconds)
        return timer

    def close(self) -> None:
        """Stops accepting, resets every connection, cancels pending restores and joins every thread."""
        if self._stop.is_set():
            return
        self._stop.set()
        for timer in self._timers:
            timer.cancel()
        for timer in self._timers:
            if timer is not threading.current_thread():
                timer.join(timeout=5.0)
        self._thread.join(timeout=5.0)
        with self._cond:
            victims = list(self._connections)
        for conn in victims:
            conn.drop()
        for conn in victims:
            conn.thread.join(timeout=5.0)
        log.info("proxy :%d closed (%d forwarded, %d reset by cuts)", self.port, self.accepted, self.dropped)

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------------ internals

    def _bind(self, port: int, timeout_s: float = 5.0) -> socket.socket:
        """A listening socket on ``listen_host:port``; retries briefly when the port is still taken."""
        deadline = time.monotonic() + timeout_s
        while True:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((self.listen_host, port))
                sock.listen(128)
                sock.setblocking(False)
                return sock
            except OSError:
                sock.close()
                if port == 0 or time.monotonic() > deadline:
                    raise
                time.sleep(_POLL_S)

    def _switch(self, cut: bool) -> None:
        if self._stop.is_set():
            raise RuntimeError("the proxy is closed")
        with self._cond:
            self._is_cut = cut
            self._wanted += 1
            wanted = self._wanted
            if not self._cond.wait_for(lambda: self._applied >= wanted or self._stop.is_set(), timeout=10.0):
                raise RuntimeError(f"proxy :{self.port}: the accept thread did not apply the switch")

    def _restore_unless_closed(self) -> None:
        try:
            if not self._stop.is_set():
                self.restore()
        except RuntimeError:  # closed meanwhile: nothing to restore
            pass

    def _apply_switch(self) -> None:
        """Runs on the accept thread, which alone owns the listening socket: closes or reopens it as asked."""
        with self._cond:
            listen = not (self._is_cut and self.mode == "refuse")
            wanted = self._wanted
        if listen and self._listener is None:
            try:
                self._listener = self._bind(self.port)
            except OSError as exc:  # someone took the port while it was closed: say so, keep trying
                log.error("proxy could not listen on :%d again: %s", self.port, exc)
                return
        elif not listen and self._listener is not None:
            self._listener.close()
            self._listener = None
        with self._cond:
            self._applied = max(self._applied, wanted)
            self._cond.notify_all()

    def _accept_loop(self) -> None:
        try:
            while not self._stop.is_set():
                self._apply_switch()
                listener = self._listener
                if listener is None:
                    time.sleep(_POLL_S)
                    continue
                readable, _, _ = select.select([listener], [], [], _POLL_S)
                if not readable:
                    continue
                try:
                    client, _ = listener.accept()
                except (BlockingIOError, InterruptedError):
                    continue
                self._handle(client)
        finally:
            if self._listener is not None:
                self._listener.close()
                self._listener = None
            with self._cond:
                self._cond.notify_all()

    def _handle(self, client: socket.socket) -> None:
        client.setblocking(True)
        if self.is_cut:
            self.rejected += 1
            _reset_and_close(client)
            return
        try:
            upstream = socket.create_connection(self.target, timeout=self.connect_timeout_s)
        except OSError as exc:
            log.warning("proxy :%d cannot reach %s:%d: %s", self.port, *self.target, exc)
            _reset_and_close(client)
            return
        upstream.settimeout(None)
        conn = _Connection(client, upstream, self._forget)
        with self._cond:
            self._connections.add(conn)
        self.accepted += 1
        conn.thread.start()

    def _forget(self, conn: _Connection) -> None:
        with self._cond:
            self._connections.discard(conn)
