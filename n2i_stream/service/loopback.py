"""The real service on loopback with free ports, and a subscriber for its results.

For the demo, the latency benchmark and tests. :class:`Loopback` runs an
:class:`~n2i_stream.service.service.N2IService` with a PULL data socket, a results PUB socket
and (optionally) the control server, all bound to ``127.0.0.1`` on ports the system picks, plus
an in-memory sink. :class:`ResultSubscriber` receives the ``n2i-recon-1.0`` messages on its own
thread; :meth:`Loopback.subscribe` returns one whose subscription has reached the publisher, so it
misses nothing published afterwards.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import zmq

from ..errors import FrameError, ServiceError
from ..io.zmq_sink import ZmqResultSink, ZmqSinkConfig
from ..io.zmq_source import ZmqFrameSource, ZmqSourceConfig
from ..io.zmq_thread import ReceiverThread
from ..wire import ReconHeader, decode_recon
from .control import ControlClient, ControlHandler, ControlServer
from .pipeline import PipelineOptions
from .service import N2IService
from .sinks import MemorySink, ResultSink

if TYPE_CHECKING:
    from .slabs import SlabPool

__all__ = ["Loopback", "ResultSubscriber"]

log = logging.getLogger(__name__)


class ResultSubscriber:
    """Collects result messages from a PUB endpoint on a thread: ``results`` holds
    ``(header, array)`` pairs (arrays copied out of the messages), ``bad`` counts messages that
    failed to decode."""

    def __init__(self, endpoint: str, *, context: zmq.Context) -> None:
        self.endpoint = endpoint
        self.results: list[tuple[ReconHeader, np.ndarray]] = []
        self.bad = 0
        self._ctx = context
        self._cond = threading.Condition()
        self._thread = ReceiverThread(
            context,
            kind=zmq.SUB,
            endpoint=endpoint,
            bind=False,
            rcvhwm=1000,
            what="result subscriber",
            socket="the subscriber socket",
            on_readable=self._receive_all,
        )

    def start(self) -> ResultSubscriber:
        self._thread.start()
        return self

    def of_kind(self, kind: str) -> dict[int, np.ndarray]:
        """The latest array of ``kind`` per time step (whole volumes or the last slice)."""
        with self._cond:
            return {h.time_step: a for h, a in self.results if h.kind == kind}

    def headers(self) -> list[ReconHeader]:
        with self._cond:
            return [h for h, _ in self.results]

    def wait_for(
        self, predicate: Callable[[list[tuple[ReconHeader, np.ndarray]]], bool], timeout: float
    ) -> None:
        """Wait until ``predicate(results)`` holds; ServiceError after ``timeout`` s."""
        with self._cond:
            if not self._cond.wait_for(lambda: predicate(self.results), timeout):
                raise ServiceError(
                    f"subscriber: condition not met within {timeout} s "
                    f"({len(self.results)} results so far)"
                )

    def close(self) -> None:
        self._thread.stop()

    def _receive_all(self, sub: zmq.Socket) -> None:
        while sub.poll(0):
            parts = sub.recv_multipart(copy=False)
            try:
                header, view = decode_recon(parts)
            except FrameError as exc:
                self.bad += 1
                log.warning("subscriber: bad result message: %s", exc)
                continue
            with self._cond:
                self.results.append((header, np.array(view)))
                self._cond.notify_all()


class Loopback:
    """The service with every socket on 127.0.0.1 (free ports); a context manager.

    ``sinks`` are added next to the PUB sink and :attr:`memory` (a :class:`MemorySink`);
    ``slab_pool`` (started, owned by the caller) goes to the service.
    """

    def __init__(
        self,
        *,
        options: PipelineOptions | None = None,
        control: bool = True,
        buffer_bytes: int = 1 << 22,
        buffers: int = 64,
        sinks: Sequence[ResultSink] = (),
        context: zmq.Context | None = None,
        slab_pool: SlabPool | None = None,
    ) -> None:
        self._own_context = context is None
        self.context = zmq.Context() if context is None else context
        self.source = ZmqFrameSource(
            ZmqSourceConfig(
                endpoint="tcp://127.0.0.1:*", bind=True, buffer_bytes=buffer_bytes, buffers=buffers
            ),
            context=self.context,
        )
        self.service = N2IService(self.source, options=options, slab_pool=slab_pool)
        self.memory = MemorySink()
        self.results_sink = ZmqResultSink(
            ZmqSinkConfig(endpoint="tcp://127.0.0.1:*"), context=self.context
        )
        for sink in (self.results_sink, self.memory, *sinks):
            self.service.add_sink(sink)
        self._with_control = control
        self.control: ControlServer | None = None
        self._subscribers: list[ResultSubscriber] = []
        self._clients: list[ControlClient] = []

    def start(self) -> Loopback:
        self.service.start()
        if self._with_control:
            self.control = ControlServer(
                "tcp://127.0.0.1:*", ControlHandler(self.service), context=self.context
            )
            self.control.start()
        return self

    @property
    def data_endpoint(self) -> str:
        return self.source.endpoint

    @property
    def results_endpoint(self) -> str:
        return self.results_sink.endpoint

    @property
    def control_endpoint(self) -> str:
        if self.control is None or self.control.endpoint is None:
            raise ServiceError("this loopback service has no control socket")
        return self.control.endpoint

    def subscribe(self, timeout: float = 10.0) -> ResultSubscriber:
        """A started subscriber whose subscription the publisher has seen."""
        subscriber = ResultSubscriber(self.results_endpoint, context=self.context).start()
        self._subscribers.append(subscriber)
        self.results_sink.wait_for_subscribers(len(self._subscribers), timeout)
        return subscriber

    def client(self, timeout: float = 30.0) -> ControlClient:
        """A control client (closed with the loopback)."""
        client = ControlClient(self.control_endpoint, context=self.context, timeout=timeout)
        self._clients.append(client)
        return client

    def close(self) -> None:
        for client in self._clients:
            client.close()
        for subscriber in self._subscribers:
            subscriber.close()
        self.service.close()
        if self.control is not None:
            self.control.close()
        if self._own_context:
            self.context.term()

    def __enter__(self) -> Loopback:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()
