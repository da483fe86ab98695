"""The threading model shared by server and client.

One background I/O thread per server or client owns the ZeroMQ socket and every
``SSLObject`` (neither is thread-safe).  Public methods never touch them: they
put a command on a queue and wake the thread through a self-pipe that its poll
watches, and they wait on events or queues the thread fills.  So any number of
application threads may call ``send``/``recv`` concurrently.  An unexpected
exception in the I/O thread is kept and re-raised (as ``TransportError``) by
every later call, never swallowed.
"""

from __future__ import annotations

import queue
import secrets
import threading
from itertools import count
from typing import Any

import zmq

from fltac_secure.errors import TransportError
from fltac_secure.transport.session import Waker


class IdSource:
    """Message ids unique per sender and per process run: ``<random>-<n>``.

    The random prefix keeps ids from a restarted process from colliding with
    ids a peer has already seen (and would drop as duplicates).
    """

    def __init__(self) -> None:
        self._prefix = secrets.token_hex(6)
        self._n = count(1)
        self._lock = threading.Lock()

    def next(self) -> str:
        with self._lock:
            return f"{self._prefix}-{next(self._n)}"


class IOLoop:
    """Base class: a daemon I/O thread, a command queue and a waker."""

    thread_name = "fltac-io"

    def __init__(self) -> None:
        self._cmds: queue.Queue[tuple[Any, ...]] = queue.Queue()
        self._waker = Waker()
        self._zctx = zmq.Context()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._closed = False
        self._crash: BaseException | None = None
        self.ids = IdSource()

    # -- API side ------------------------------------------------------------
    def _check_alive(self) -> None:
        if self._crash is not None:
            raise TransportError(f"transport I/O thread failed: {self._crash!r}", "crashed") from self._crash
        if self._closed:
            raise TransportError("transport is closed; create a new one", "closed")

    def _submit(self, *cmd: Any) -> None:
        self._check_alive()
        self._cmds.put(cmd)
        self._waker.wake()

    def _start_thread(self) -> None:
        if self._thread is not None:
            raise TransportError("already started", "state")
        self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)
        self._thread.start()

    def close(self, timeout: float = 5.0) -> None:
        """Stop the I/O thread, close the socket; idempotent."""
        if self._closed:
            return
        self._closed = self._stopping = True
        self._waker.wake()
        if self._thread is not None:
            self._thread.join(timeout)
        self._waker.close()
        self._zctx.term()

    def __enter__(self) -> IOLoop:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- I/O side --------------------------------------------------------------
    def _run(self) -> None:
        try:
            while not self._stopping:
                self._step()
        except BaseException as exc:  # kept and re-raised to callers, never swallowed
            self._crash = exc
            self._on_crash(exc)
        finally:
            self._teardown()

    def _drain_commands(self) -> None:
        self._waker.drain()
        while True:
            try:
                cmd = self._cmds.get_nowait()
            except queue.Empty:
                return
            self._command(cmd)

    def _step(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _command(self, cmd: tuple[Any, ...]) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _on_crash(self, exc: BaseException) -> None:
        """Wake API threads waiting on the I/O thread (subclasses)."""

    def _teardown(self) -> None:
        """Close sockets (subclasses); runs on the I/O thread."""
