"""The ophyd-async device that drives a running n2i-stream service through its control socket.

:class:`N2IStream` is Preparable and Flyable::

    n2i = N2IStream("tcp://recon-host:5560", name="n2i")   # inside init_devices()
    yield from bps.prepare(n2i, scan_table, wait=True)     # the ScanConfig keys, checked here
    yield from bps.kickoff(n2i, wait=True)                 # configure: the session starts
    ...                                                    # the camera streams the frames
    yield from bps.complete(n2i, wait=True)                # the scan's last step is published
    yield from bps.trigger(n2i.training, wait=True)        # training done (progress updates)

While a scan is active a polling task asks the service for its status every ``poll_period``
seconds and copies it into soft signals — state, training iteration / loss / ETA, last published
time step, step and frame counters, latency — which are readable (``read``, ``describe``,
``trigger_and_read``) and subscribable (live tables and plots). ``trigger()`` refreshes them once.

Failures keep the service's words: a reply with ``ok: false`` fails the status with the error it
names (ConfigError, ServiceError, …); a scan that fails fails ``complete()`` with the service's
reason; a service that does not answer fails with :class:`~n2i_plans.client.ServiceUnreachableError`
(a TimeoutError naming the address); a service busy with another scan fails ``kickoff()`` with
:class:`~n2i_plans.client.ServiceBusyError`. Blocking socket calls run on a worker thread, never
on the event loop. ``close()`` releases the socket.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import Any

import zmq
from ophyd_async.core import (
    AsyncStatus,
    DeviceConnector,
    StandardReadable,
    WatchableAsyncStatus,
    WatcherUpdate,
    soft_signal_r_and_setter,
    soft_signal_rw,
)
from ophyd_async.core import StandardReadableFormat as Format

from n2i_stream.config import from_mapping
from n2i_stream.errors import ConfigError, ServiceError, TrainingError

from .client import ControlClient, ServiceBusyError

__all__ = ["ACTIVE_STATES", "TERMINAL_STATES", "N2IStream", "N2ITraining"]

#: Service states in which a scan is running (a new one is refused).
ACTIVE_STATES = ("acquiring", "training", "streaming")
#: States in which the service's last scan has ended.
TERMINAL_STATES = ("done", "failed")
#: Training states after which no more training happens for the scan.
_TRAINING_FINISHED = ("done", "skipped")


def _scan_config_class() -> type | None:
    """The service's ScanConfig, when this installation has it (validated locally then)."""
    try:
        from n2i_stream.service.scan_config import ScanConfig
    except ImportError:
        return None
    return ScanConfig


class _ServiceConnector(DeviceConnector):
    """Connecting the device pings the service, so an unreachable one fails at connect time."""

    async def connect_real(self, device, timeout: float, force_reconnect: bool) -> None:  # type: ignore[override]
        await super().connect_real(device, timeout, force_reconnect)
        await device._connect(timeout)


class N2ITraining(StandardReadable):
    """Training progress of the current scan (``n2i.training``); ``trigger()`` waits for it."""

    def __init__(self, done_status: Callable[[], WatchableAsyncStatus], name: str = "") -> None:
        with self.add_children_as_readables(Format.UNCACHED_SIGNAL):
            self.state, self._set_state = soft_signal_r_and_setter(str, "waiting")
            self.iteration, self._set_iteration = soft_signal_r_and_setter(int, 0)
            self.iterations, self._set_iterations = soft_signal_r_and_setter(int, 0)
            self.eta, self._set_eta = soft_signal_r_and_setter(float, math.nan, units="s")
        with self.add_children_as_readables(Format.HINTED_UNCACHED_SIGNAL):
            self.loss, self._set_loss = soft_signal_r_and_setter(float, math.nan)
        self._done_status = done_status
        super().__init__(name=name)

    def trigger(self) -> WatchableAsyncStatus:
        """Done when training has finished (or was skipped); progress in iterations."""
        return self._done_status()

    def _apply(self, training: Mapping[str, Any]) -> None:
        self._set_state(str(training.get("state", "")))
        self._set_iteration(_int(training.get("iteration"), 0))
        self._set_iterations(_int(training.get("iterations"), 0))
        self._set_loss(_float(training.get("loss")))
        self._set_eta(_float(training.get("eta_s")))


class N2IStream(StandardReadable):
    """An n2i-stream service, reached at ``address`` (its control socket).

    ``poll_period``: seconds between status requests while a scan is active. ``timeout``:
    seconds to wait for each reply. ``configure_timeout``: seconds to wait for the reply to
    ``configure`` (the service may load a model, open the results file and, the first time,
    import its learning code; a status request goes first, so an unreachable service is still
    reported after ``timeout``). ``poll_failures``: consecutive unanswered status requests after
    which waiting statuses fail (a single lost reply is retried). ``server_key`` and
    ``client_key``: for a service whose control socket requires ZeroMQ CURVE, the service's
    public key file and this client's secret key file (``n2i-stream config keys`` writes both).
    """

    def __init__(
        self,
        address: str,
        *,
        poll_period: float = 0.2,
        timeout: float = 5.0,
        configure_timeout: float = 120.0,
        poll_failures: int = 3,
        server_key: str | None = None,
        client_key: str | None = None,
        name: str = "",
    ) -> None:
        problems = []
        if "://" not in address:
            problems.append(f"address: expected 'tcp://host:port', got {address!r}")
        if not poll_period > 0:
            problems.append(f"poll_period: expected > 0 s, got {poll_period!r}")
        if not timeout > 0:
            problems.append(f"timeout: expected > 0 s, got {timeout!r}")
        if not configure_timeout > 0:
            problems.append(f"configure_timeout: expected > 0 s, got {configure_timeout!r}")
        if poll_failures < 1:
            problems.append(f"poll_failures: expected >= 1, got {poll_failures!r}")
        if (server_key is None) != (client_key is None):
            problems.append("CURVE needs both server_key and client_key, or neither")
        if problems:
            raise ConfigError("N2IStream: " + "; ".join(problems))
        self._address = address
        self._poll_failures = poll_failures
        with self.add_children_as_readables(Format.HINTED_UNCACHED_SIGNAL):
            self.last_published, self._set_last_published = soft_signal_r_and_setter(int, -1)
        with self.add_children_as_readables(Format.UNCACHED_SIGNAL):
            self.state, self._set_state = soft_signal_r_and_setter(str, "")
            self.scan_id, self._set_scan_id = soft_signal_r_and_setter(str, "")
            self.reason, self._set_reason = soft_signal_r_and_setter(str, "")
            self.output, self._set_output = soft_signal_r_and_setter(str, "")
            self.steps_total, self._set_steps_total = soft_signal_r_and_setter(int, 0)
            self.steps_received, self._set_steps_received = soft_signal_r_and_setter(int, 0)
            self.steps_fbp, self._set_steps_fbp = soft_signal_r_and_setter(int, 0)
            self.steps_denoised, self._set_steps_denoised = soft_signal_r_and_setter(int, 0)
            self.backlog, self._set_backlog = soft_signal_r_and_setter(int, 0)
            self.frames_received, self._set_frames_received = soft_signal_r_and_setter(int, 0)
            self.frames_bad, self._set_frames_bad = soft_signal_r_and_setter(int, 0)
            self.frames_dropped, self._set_frames_dropped = soft_signal_r_and_setter(int, 0)
            self.frames_duplicate, self._set_frames_duplicate = soft_signal_r_and_setter(int, 0)
            self.frames_late, self._set_frames_late = soft_signal_r_and_setter(int, 0)
            self.latency_last, self._set_latency_last = soft_signal_r_and_setter(
                float, math.nan, units="s"
            )
            self.latency_median, self._set_latency_median = soft_signal_r_and_setter(
                float, math.nan, units="s"
            )
            self.latency_max, self._set_latency_max = soft_signal_r_and_setter(
                float, math.nan, units="s"
            )
            self.ingest_rate, self._set_ingest_rate = soft_signal_r_and_setter(
                float, 0.0, units="frames/s"
            )
        with self.add_children_as_readables(Format.CHILD):
            self.training = N2ITraining(self.training_done)
        with self.add_children_as_readables(Format.CONFIG_SIGNAL):
            self.address, _ = soft_signal_r_and_setter(str, address)
            self.version, self._set_version = soft_signal_r_and_setter(str, "")
            self.poll_period = soft_signal_rw(float, poll_period, units="s")
            self.request_timeout = soft_signal_rw(float, timeout, units="s")
            self.configure_timeout = soft_signal_rw(float, configure_timeout, units="s")
        self._curve = (server_key, client_key) if server_key and client_key else None
        self._context: zmq.Context | None = None  # a CURVE client context this device owns
        self._client: ControlClient | None = None
        self._scan: dict[str, Any] | None = None  # prepared, not yet sent
        self._active_scan: str | None = None  # the scan id this device started
        self._latest: dict[str, Any] | None = None  # the last status of that scan
        self._poll_error: BaseException | None = None
        self._poller: asyncio.Task | None = None
        self._changed = asyncio.Event()
        super().__init__(name=name, connector=_ServiceConnector())

    # -- requests ----------------------------------------------------------------------------

    async def _connect(self, timeout: float) -> None:
        request_timeout = await self.request_timeout.get_value()
        if self._client is None:
            if self._curve is not None and self._context is None:
                from n2i_stream.io.curve import client_context

                self._context = client_context(*self._curve)
            self._client = ControlClient(
                self._address, timeout=request_timeout, context=self._context
            )
        reply = await self.request("ping", timeout=min(timeout, request_timeout))
        self._set_version(str(reply.get("version", "")))
        self._set_state(str(reply.get("state", "")))

    async def request(
        self, command: str, *, timeout: float | None = None, **fields: Any
    ) -> dict[str, Any]:
        """One control request on a worker thread; the reply's fields (errors raised)."""
        if self._client is None:
            raise ServiceError(f"{self.name or 'N2IStream'}: connect the device first")
        wait = await self.request_timeout.get_value() if timeout is None else timeout
        return await asyncio.to_thread(self._client.request, command, timeout=wait, **fields)

    async def fetch_status(self) -> dict[str, Any]:
        """The service's STATUS now; also copied into the signals."""
        status = (await self.request("status"))["status"]
        self._apply(status)
        return status

    def close(self) -> None:
        """Stop polling and close the control socket (idempotent; the service keeps running)."""
        poller, self._poller = self._poller, None  # it ends at its next step by itself too
        if poller is not None and not poller.done() and not poller.get_loop().is_closed():
            poller.get_loop().call_soon_threadsafe(poller.cancel)
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._context is not None:
            self._context.term()
            self._context = None

    # -- the bluesky verbs --------------------------------------------------------------------

    @AsyncStatus.wrap
    async def prepare(self, value: Mapping[str, Any]) -> None:
        """Check a scan configuration (the ScanConfig keys) and keep it for ``kickoff``."""
        self._scan = _check_scan(value)

    @AsyncStatus.wrap
    async def kickoff(self) -> None:
        """Configure the service with the prepared scan: its session starts acquiring."""
        scan = self._scan
        if scan is None:
            raise ServiceError(f"{self.name}: prepare(scan) before kickoff()")
        status = await self.fetch_status()
        state = status.get("state")
        if state in ACTIVE_STATES:
            raise ServiceBusyError(
                f"n2i service at {self._address} is busy with scan {status.get('scan_id')!r} "
                f"in state {state!r}; wait for it to end, or stop/abort it first"
            )
        await self._stop_polling()
        self._latest = None
        self._poll_error = None
        reply = await self.request(
            "configure", scan=scan, timeout=await self.configure_timeout.get_value()
        )
        self._scan = None
        self._active_scan = str(reply.get("scan_id", scan["scan_id"]))
        self._set_scan_id(self._active_scan)
        self._set_state(str(reply.get("state", "acquiring")))
        self._ensure_polling()

    def complete(self) -> AsyncStatus:
        """Done when the scan's last step is published in final form (the scan is ``done``).

        Fails with the service's reason when the scan fails or is aborted.
        """
        scan_id = self._require_scan("complete()")
        return AsyncStatus(self._until(lambda st: _scan_finished(st, scan_id, self._address)))

    def training_done(self) -> WatchableAsyncStatus:
        """Done when training has finished (or was skipped); progress in iterations."""
        scan_id = self._require_scan("training_done()")
        return WatchableAsyncStatus(self._training_progress(scan_id), name=f"{self.name} training")

    @AsyncStatus.wrap
    async def trigger(self) -> None:
        """Refresh the signals from the service's status now."""
        status = await self.fetch_status()
        if status.get("scan_id") == self._active_scan:
            self._publish(status)

    async def end_scan(self, wait: bool = True) -> None:
        """Ask the service to stop (drain) its scan: what arrived is processed and written.

        With ``wait``, returns once the scan is done (within ``configure_timeout``).
        """
        timeout = await self.configure_timeout.get_value()
        await self.request("stop", wait=wait, timeout=timeout)
        await self.fetch_status()

    async def abort_scan(self) -> None:
        """Ask the service to abort its scan (in-flight work dropped; files stay valid)."""
        await self.request("abort", timeout=await self.configure_timeout.get_value())
        await self.fetch_status()

    async def stop(self, success: bool = True) -> None:
        """Stop polling; when ``success`` is False, also abort the scan this device started."""
        await self._stop_polling()
        if not success and self._active_scan is not None:
            status = await self.fetch_status()
            if status.get("scan_id") == self._active_scan and status.get("state") in ACTIVE_STATES:
                await self.abort_scan()

    def describe_collect(self) -> dict:
        """Nothing to collect: the service writes the results (the run records its signals)."""
        return {}

    def collect(self) -> Iterator:
        return iter(())

    # -- polling -----------------------------------------------------------------------------

    def _require_scan(self, what: str) -> str:
        if self._active_scan is None:
            raise ServiceError(f"{self.name}: kickoff() a scan before {what}")
        return self._active_scan

    def _ensure_polling(self) -> None:
        if self._poller is not None and not self._poller.done():
            return
        latest = self._latest
        if latest is not None and latest.get("state") in TERMINAL_STATES:
            return  # that scan is over: nothing more will change
        self._poller = asyncio.create_task(self._poll(self._require_scan("polling")))

    async def _stop_polling(self) -> None:
        poller, self._poller = self._poller, None
        if poller is None or poller.done():
            return
        # The poller also ends by itself at its next step once it is no longer the current
        # one, so a cancellation that does not reach it cannot leave it polling forever.
        poller.cancel()
        timeout = await self.request_timeout.get_value()
        await asyncio.wait({poller}, timeout=timeout + await self.poll_period.get_value() + 1.0)

    async def _poll(self, scan_id: str) -> None:
        me = asyncio.current_task()
        failures = 0
        try:
            while self._poller is me:
                try:
                    status = await self.fetch_status()
                except ServiceError as exc:  # unanswered or refused: retry a few times
                    failures += 1
                    if failures >= self._poll_failures:
                        self._poll_error = exc
                        return
                else:
                    failures = 0
                    if self._poller is not me:
                        return
                    self._publish(status)
                    if status.get("scan_id") != scan_id or status.get("state") in TERMINAL_STATES:
                        return
                # Pacing of the status requests, not synchronisation.
                await asyncio.sleep(await self.poll_period.get_value())
        finally:
            self._notify()

    def _publish(self, status: dict[str, Any]) -> None:
        self._latest = status
        self._notify()

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def _statuses(self) -> AsyncIterator[dict[str, Any]]:
        """Each new status of the active scan (the latest one first), until polling ends."""
        self._ensure_polling()
        seen = None
        while True:
            if self._poll_error is not None:
                raise self._poll_error
            latest = self._latest
            if latest is not None and latest is not seen:
                seen = latest
                yield latest
                continue
            if self._poller is None or self._poller.done():
                return
            await self._changed.wait()

    async def _until(self, finished: Callable[[dict[str, Any]], bool]) -> None:
        async for status in self._statuses():
            if finished(status):
                return
        raise ServiceError(f"{self.name}: stopped polling the n2i service at {self._address}")

    async def _training_progress(self, scan_id: str) -> AsyncIterator[WatcherUpdate[int]]:
        async for status in self._statuses():
            _check_same_scan(status, scan_id, self._address)
            training = status.get("training") or {}
            iteration = _int(training.get("iteration"), 0)
            iterations = _int(training.get("iterations"), 0)
            eta = training.get("eta_s")
            yield WatcherUpdate(
                name=f"{self.name} training",
                current=iteration,
                initial=0,
                target=max(iterations, iteration),
                unit="iterations",
                time_remaining=float(eta) if isinstance(eta, (int, float)) else None,
            )
            state = training.get("state")
            if state in _TRAINING_FINISHED:
                return
            if state == "failed":
                raise TrainingError(
                    f"n2i service at {self._address}: training of scan {scan_id} failed: "
                    f"{status.get('reason') or training.get('reason') or 'no reason given'}"
                )
            if status.get("state") == "failed":
                _scan_finished(status, scan_id, self._address)  # raises with the reason
            if status.get("state") in TERMINAL_STATES:
                raise TrainingError(
                    f"n2i service at {self._address}: scan {scan_id} ended before training "
                    f"finished (training state {state!r})"
                )
        raise ServiceError(f"{self.name}: stopped polling the n2i service at {self._address}")

    # -- signals -----------------------------------------------------------------------------

    def _apply(self, status: Mapping[str, Any]) -> None:
        self._set_state(str(status.get("state", "")))
        self._set_scan_id(str(status.get("scan_id") or ""))
        self._set_reason(str(status.get("reason") or ""))
        self._set_output(str(status.get("output") or ""))
        if status.get("version"):
            self._set_version(str(status["version"]))
        steps = status.get("steps") or {}
        self._set_steps_total(_int(steps.get("total"), 0))
        self._set_steps_received(_int(steps.get("received"), 0))
        self._set_steps_fbp(_int(steps.get("published_fbp"), 0))
        self._set_steps_denoised(_int(steps.get("published_denoised"), 0))
        self._set_last_published(_int(steps.get("last_published"), -1))
        self._set_backlog(_int(steps.get("backlog"), 0))
        counters = status.get("counters") or {}
        self._set_frames_received(_int(counters.get("received"), 0))
        self._set_frames_bad(_int(counters.get("bad"), 0))
        self._set_frames_dropped(_int(counters.get("dropped"), 0))
        self._set_frames_duplicate(_int(counters.get("duplicate"), 0))
        self._set_frames_late(_int(counters.get("late"), 0))
        latency = status.get("latency_s") or {}
        self._set_latency_last(_float(latency.get("last")))
        self._set_latency_median(_float(latency.get("median")))
        self._set_latency_max(_float(latency.get("max")))
        ingest = status.get("ingest") or {}
        self._set_ingest_rate(_float(ingest.get("frames_per_s"), 0.0))
        self.training._apply(status.get("training") or {})


def _check_scan(value: Any) -> dict[str, Any]:
    """A plain, JSON-ready copy of a scan configuration; ConfigError when it is not one."""
    if not isinstance(value, Mapping):
        raise ConfigError(f"a scan configuration must be a table, got {type(value).__name__}")
    try:
        scan = json.loads(json.dumps(dict(value), allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"the scan configuration is not plain JSON data: {exc}") from None
    if not isinstance(scan.get("scan_id"), str) or not scan["scan_id"]:
        raise ConfigError(f"the scan configuration needs a non-empty 'scan_id', got {scan!r:.80}")
    cls = _scan_config_class()
    if cls is not None:
        from_mapping(cls, scan, source="scan configuration")
    return scan


def _check_same_scan(status: Mapping[str, Any], scan_id: str, address: str) -> None:
    if status.get("scan_id") != scan_id:
        raise ServiceError(
            f"n2i service at {address} now runs scan {status.get('scan_id')!r}, not {scan_id!r}"
        )


def _scan_finished(status: Mapping[str, Any], scan_id: str, address: str) -> bool:
    """Whether the scan has ended with every step published in its final form.

    The service ends a scan by itself (state ``done``, no reason) once all its frames have
    arrived and every step is published, denoised where a model exists; a drained stop (reason
    ``stopped``) also ends it normally. ServiceError when it failed or was aborted.
    """
    _check_same_scan(status, scan_id, address)
    state = status.get("state")
    reason = status.get("reason")
    if state == "failed":
        raise ServiceError(
            f"n2i service at {address}: scan {scan_id} failed: {reason or 'no reason given'}"
        )
    if state != "done":
        return False
    if reason not in (None, "", "stopped"):
        raise ServiceError(f"n2i service at {address}: scan {scan_id} ended: {reason}")
    return True


def _int(value: Any, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _float(value: Any, default: float = math.nan) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return default
