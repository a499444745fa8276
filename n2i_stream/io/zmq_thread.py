"""One receiving ZMQ socket owned by one thread, woken through an inproc signal.

ZMQ sockets are not thread-safe, so a socket lives on the thread that polls it. Other threads
wake that one by sending on a :class:`WakeSignal` (to stop it, or to have it look at work they
left for it): the polling thread sees the signal's socket readable. The control server and the
slab pool's gather thread use the signal alone. :class:`ReceiverThread` is the whole pattern
for a socket that only receives (the frame source, the document listener): open on the thread,
report a bind or connect failure to :meth:`~ReceiverThread.start`, hand every readable socket to
a callback, record an exception that ends the thread, close everything on the way out.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Callable

import zmq

from ..errors import ServiceError

__all__ = ["ReceiverThread", "WakeSignal"]

log = logging.getLogger(__name__)

_ids = itertools.count()


class WakeSignal:
    """An inproc PUSH/PULL address: the polling thread binds its PULL end, any number of other
    threads send (each on a short-lived PUSH, so the signal itself is thread-safe)."""

    def __init__(self, context: zmq.Context, name: str) -> None:
        self._ctx = context
        self.address = f"inproc://n2i-{name}-wake-{next(_ids)}"

    def bind(self) -> zmq.Socket:
        """The polling thread's end (register it with the poller; close it when done)."""
        sock = self._ctx.socket(zmq.PULL)
        sock.linger = 0
        try:
            sock.bind(self.address)
        except BaseException:
            sock.close()
            raise
        return sock

    def send(self) -> None:
        """Wake the polling thread; nothing happens once its end or the context is closed."""
        try:
            sock = self._ctx.socket(zmq.PUSH)
        except zmq.ZMQError:
            return  # the context is terminated: the thread is gone
        sock.linger = 0
        try:
            sock.connect(self.address)
            sock.send(b"", zmq.NOBLOCK)
        except zmq.ZMQError:
            pass  # the thread already closed its end: it is on its way out
        finally:
            sock.close()

    @staticmethod
    def clear(sock: zmq.Socket) -> None:
        """Take every signal waiting on the bound end (for a thread that goes on polling)."""
        while sock.poll(0):
            sock.recv()


class ReceiverThread:
    """A daemon thread that opens one receiving socket and polls it until :meth:`stop`.

    ``kind`` is ``zmq.PULL`` or ``zmq.SUB`` (``subscribe`` is its prefix); ``what`` names the
    thread in errors ("frame receive", "document") and ``socket`` the socket ("pull socket").
    ``on_readable(sock)`` is called on the thread whenever messages wait; ``on_exit()`` runs
    there last, after the sockets are closed, however a thread that opened them ends.
    """

    def __init__(
        self,
        context: zmq.Context,
        *,
        kind: int,
        endpoint: str,
        bind: bool,
        rcvhwm: int,
        what: str,
        socket: str,
        on_readable: Callable[[zmq.Socket], None],
        on_exit: Callable[[], None] | None = None,
        subscribe: bytes = b"",
    ) -> None:
        self._ctx = context
        self._kind = kind
        self._endpoint_asked = endpoint
        self._bind = bind
        self._rcvhwm = rcvhwm
        self._what = what
        self._socket = socket
        self._on_readable = on_readable
        self._on_exit = on_exit
        self._subscribe = subscribe
        self._wake = WakeSignal(context, what.replace(" ", "-"))
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._start_error: BaseException | None = None
        self.error: BaseException | None = None  #: what ended the thread, if anything did
        self.endpoint: str | None = None  #: the socket's actual endpoint, once open

    @property
    def started(self) -> bool:
        return self._thread is not None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, timeout: float = 10.0) -> None:
        """Start the thread and wait until its socket is open; ServiceError if it cannot be."""
        name = f"n2i-{self._what.replace(' ', '-')}"
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise ServiceError(
                f"the {self._what} thread did not open {self._endpoint_asked} in {timeout} s"
            )
        if self._start_error is not None:
            self._thread.join()
            verb = "bind" if self._bind else "connect"
            raise ServiceError(
                f"cannot {verb} {self._socket} to {self._endpoint_asked}: {self._start_error}"
            ) from self._start_error

    def stop(self, timeout: float = 10.0) -> None:
        """Wake the thread and join it (nothing to do when it is not running)."""
        thread = self._thread
        if thread is None or not thread.is_alive():
            return
        self._wake.send()
        thread.join(timeout)
        if thread.is_alive():
            raise ServiceError(f"the {self._what} thread did not stop within {timeout} s")

    def _open(self) -> tuple[zmq.Socket, zmq.Socket]:
        sock = self._ctx.socket(self._kind)
        try:
            sock.linger = 0
            sock.rcvhwm = self._rcvhwm
            if self._kind == zmq.SUB:
                sock.setsockopt(zmq.SUBSCRIBE, self._subscribe)
            wake = self._wake.bind()
        except BaseException:
            sock.close()
            raise
        try:
            if self._bind:
                sock.bind(self._endpoint_asked)
            else:
                sock.connect(self._endpoint_asked)
            self.endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        except BaseException:
            sock.close()
            wake.close()
            raise
        return sock, wake

    def _run(self) -> None:
        try:
            sock, wake = self._open()
        except zmq.ZMQError as exc:
            self._start_error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            poller = zmq.Poller()
            poller.register(sock, zmq.POLLIN)
            poller.register(wake, zmq.POLLIN)
            while True:
                events = dict(poller.poll())
                if wake in events:
                    break
                self._on_readable(sock)
        except Exception as exc:  # a bug or a dead context: record it and end visibly
            self.error = exc
            log.exception("the %s thread failed", self._what)
        finally:
            sock.close()
            wake.close()
            if self._on_exit is not None:
                self._on_exit()
