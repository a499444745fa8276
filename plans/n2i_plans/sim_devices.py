"""Simulated beamline hardware: a continuously rotating stage and a camera that streams frames.

:class:`SimRotationStage` rotates at ``velocity + speed_offset`` degrees per second once kicked
off, updating its ``position`` readback while it turns; ``speed_offset`` is what interlaces the
time steps (:mod:`n2i_plans.schedule`).

:class:`SimTomoCamera` stands in for a detector with a ZMQ live stream. It owns a PUSH (or PUB)
socket, opened when the device connects: connected to the service's data socket, or bound
(``data_address`` then names the actual endpoint, e.g. the port chosen for
``tcp://127.0.0.1:*``) for a service that connects to the detector. Each acquisition
(:class:`CameraAcquisition`: darks, flats or projections) is flown with ``prepare`` →
``kickoff`` → ``complete``: a thread computes the simulated foam phantom's frames
(:class:`n2i_stream.sim.DynamicScan`: its phantom, growing bubble and detector noise) and sends
them at ``frame_rate`` in the chosen wire format, with frame ids that count on from acquisition to
acquisition and **no angle** in any header. Projections are taken as if triggered by the stage's
encoder: projection ``g`` shows the sample at the stage's schedule angle ``start + g ·
(velocity + speed_offset) / frame_rate`` (the schedule the plan sends to the service) and at
time step ``g // frames_per_step``.

``close()`` stops a running acquisition and closes the socket; call it when done with the camera.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
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

from n2i_stream.core.geometry import ParallelGeometry
from n2i_stream.errors import ConfigError, ServiceError
from n2i_stream.sim import DynamicScan, SimConfig
from n2i_stream.wire import FORMATS, frame_message

from .schedule import RotationSchedule

__all__ = ["CameraAcquisition", "RotationFly", "SimRotationStage", "SimTomoCamera"]

FrameKind = Literal["dark", "flat", "projection"]
_KINDS: tuple[str, ...] = ("dark", "flat", "projection")
_NOISE_STREAM = 7  # the camera's own random stream for frame noise, keyed by frame id


class _FlyerCollect:
    """Empty collect: these flyers record nothing per frame (the service records the frames).

    A RunEngine collects every kicked-off flyer when the run closes; an empty description makes
    that a no-op instead of a logged error.
    """

    def describe_collect(self) -> dict:
        return {}

    def collect(self) -> Iterator:
        return iter(())


# -- stage ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RotationFly:
    """One continuous rotation: move to ``start`` (degrees), then turn ``distance`` degrees."""

    start: float
    distance: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.start) and math.isfinite(self.distance) and self.distance > 0):
            raise ConfigError(
                f"RotationFly: expected a finite start and a distance > 0 degrees, got "
                f"start={self.start!r}, distance={self.distance!r}"
            )


class SimRotationStage(StandardReadable, _FlyerCollect):
    """A rotation stage that turns continuously at ``velocity + speed_offset`` deg/s when flown.

    Movable (``set`` jumps to an angle while at rest), Preparable (:class:`RotationFly`),
    Flyable (``kickoff`` starts turning, ``complete`` finishes after the fly's distance, with
    progress updates) and Stoppable.
    """

    def __init__(
        self,
        name: str = "",
        *,
        velocity: float = 180.0,
        speed_offset: float = 0.0,
        update_period: float = 0.05,
    ) -> None:
        if not update_period > 0:
            raise ConfigError(f"update_period: expected > 0 s, got {update_period!r}")
        with self.add_children_as_readables(Format.HINTED_SIGNAL):
            self.position, self._set_position = soft_signal_r_and_setter(
                float, 0.0, units="deg", precision=3
            )
        with self.add_children_as_readables(Format.UNCACHED_SIGNAL):
            self.rotating, self._set_rotating = soft_signal_r_and_setter(bool, False)
        with self.add_children_as_readables(Format.CONFIG_SIGNAL):
            self.velocity = soft_signal_rw(float, velocity, units="deg/s")
            self.speed_offset = soft_signal_rw(float, speed_offset, units="deg/s")
        self._update_period = float(update_period)
        self._fly: RotationFly | None = None
        self._turning: asyncio.Task | None = None
        self._halted = False
        super().__init__(name=name)

    async def speed(self) -> float:
        """The rotation speed when flown: velocity + speed_offset, deg/s."""
        velocity, offset = await asyncio.gather(
            self.velocity.get_value(), self.speed_offset.get_value()
        )
        return velocity + offset

    async def schedule(self, frame_rate: float, frames_per_step: int) -> RotationSchedule:
        """The angles a camera at ``frame_rate`` sees during the prepared fly."""
        if self._fly is None:
            raise ServiceError(f"{self.name}: prepare(RotationFly(...)) before asking for angles")
        velocity, offset = await asyncio.gather(
            self.velocity.get_value(), self.speed_offset.get_value()
        )
        return RotationSchedule.from_motion(
            speed=velocity,
            speed_offset=offset,
            frame_rate=frame_rate,
            frames_per_step=frames_per_step,
            angle_start=self._fly.start,
        )

    def _check_at_rest(self, action: str) -> None:
        if self._turning is not None and not self._turning.done():
            raise ServiceError(f"{self.name}: cannot {action} while rotating; stop() first")

    @AsyncStatus.wrap
    async def set(self, value: float) -> None:
        """Jump to ``value`` degrees (only at rest)."""
        self._check_at_rest("move")
        self._set_position(float(value))

    @AsyncStatus.wrap
    async def prepare(self, value: RotationFly) -> None:
        """Move to the fly's start and arm it."""
        if not isinstance(value, RotationFly):
            raise ConfigError(f"{self.name}: prepare expects a RotationFly, got {value!r}")
        self._check_at_rest("prepare")
        speed = await self.speed()
        if not (math.isfinite(speed) and speed > 0):
            raise ConfigError(
                f"{self.name}: velocity + speed_offset must be > 0 deg/s to fly, got {speed}"
            )
        self._set_position(value.start)
        self._fly = value

    @AsyncStatus.wrap
    async def kickoff(self) -> None:
        """Start turning from the prepared start angle."""
        if self._fly is None:
            raise ServiceError(f"{self.name}: prepare(RotationFly(...)) before kickoff()")
        self._check_at_rest("kick off")
        speed = await self.speed()
        self._halted = False
        self._turning = asyncio.create_task(self._turn(self._fly, speed))

    def complete(self) -> WatchableAsyncStatus:
        """Done when the fly's distance is covered; progress in degrees."""
        if self._turning is None:
            raise ServiceError(f"{self.name}: kickoff() before complete()")
        return WatchableAsyncStatus(self._progress(self._turning), name=self.name)

    async def _progress(self, turning: asyncio.Task) -> AsyncIterator[WatcherUpdate[float]]:
        fly = self._fly
        assert fly is not None
        while not turning.done():
            yield WatcherUpdate(
                name=self.name,
                current=await self.position.get_value(),
                initial=fly.start,
                target=fly.start + fly.distance,
                unit="deg",
            )
            await asyncio.wait({turning}, timeout=self._update_period)
        await turning  # raise if the rotation was stopped or failed

    async def _turn(self, fly: RotationFly, speed: float) -> None:
        self._set_rotating(True)
        t0 = time.monotonic()
        duration = fly.distance / speed
        try:
            while True:
                elapsed = time.monotonic() - t0
                position = fly.start + speed * min(elapsed, duration)
                self._set_position(position)
                if self._halted:
                    raise ServiceError(f"{self.name}: rotation stopped at {position:.3f} deg")
                if elapsed >= duration:
                    return
                # Pacing of the simulated motion, not synchronisation.
                await asyncio.sleep(min(self._update_period, duration - elapsed))
        finally:
            self._set_rotating(False)

    async def stop(self, success: bool = True) -> None:
        """Stop turning where the stage is (a fly in progress then fails)."""
        turning = self._turning
        if turning is not None and not turning.done():
            self._halted = True  # seen at the next update even if the cancellation is not
            turning.cancel()
            await asyncio.wait({turning}, timeout=10 * self._update_period + 1.0)
        self._fly = None


# -- camera --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CameraAcquisition:
    """One block of frames: ``frames`` darks, flats or projections of a simulated scan.

    ``time_steps`` and ``frames_per_step`` describe the scan they belong to (projection ``g``
    shows time step ``g // frames_per_step`` of the phantom, or always the first when
    ``static``); all acquisitions of one scan give the same values, so they see the same phantom.
    """

    kind: FrameKind
    frames: int
    time_steps: int
    frames_per_step: int
    static: bool = False

    def __post_init__(self) -> None:
        problems = []
        if self.kind not in _KINDS:
            problems.append(f"kind: expected one of {list(_KINDS)}, got {self.kind!r}")
        if self.frames < 1:
            problems.append(f"frames: expected >= 1, got {self.frames}")
        if self.time_steps < 1:
            problems.append(f"time_steps: expected >= 1, got {self.time_steps}")
        if self.frames_per_step < 2:
            problems.append(f"frames_per_step: expected >= 2, got {self.frames_per_step}")
        if self.kind == "projection" and self.frames > self.time_steps * self.frames_per_step:
            problems.append(
                f"frames: {self.frames} projections exceed time_steps × frames_per_step = "
                f"{self.time_steps * self.frames_per_step}"
            )
        if problems:
            raise ConfigError("CameraAcquisition: " + "; ".join(problems))


class _CameraConnector(DeviceConnector):
    """Binds (or connects) the camera's data socket when the device connects for real."""

    async def connect_real(self, device, timeout: float, force_reconnect: bool) -> None:  # type: ignore[override]
        device._open_socket()
        await super().connect_real(device, timeout, force_reconnect)


class SimTomoCamera(StandardReadable, _FlyerCollect):
    """A simulated tomography camera streaming the dynamic foam phantom over ZMQ.

    ``stage``: the rotation stage whose encoder triggers the projections. ``endpoint``: where the
    data socket connects (the default is ``n2i-stream serve``'s data socket) or, with ``bind``,
    binds (the detector's usual role, e.g. ``tcp://127.0.0.1:*``; the service then connects with
    ``--data-connect``). ``wire_format``:
    ``n2i``, ``array-1.0`` or ``gigafrost``. ``sim``: the phantom and detector (its ``steps``,
    ``per_step``, ``n_darks`` and ``n_flats`` are replaced by each acquisition's).
    ``first_frame_id``: the detector counter's value at the first frame.
    """

    def __init__(
        self,
        stage: SimRotationStage,
        *,
        endpoint: str = "tcp://127.0.0.1:5555",
        wire_format: str = "n2i",
        socket_type: Literal["push", "pub"] = "push",
        bind: bool = False,
        frame_rate: float = 100.0,
        sim: SimConfig | None = None,
        first_frame_id: int = 0,
        sndhwm: int = 1000,
        name: str = "",
    ) -> None:
        problems = []
        if wire_format not in FORMATS:
            problems.append(f"wire_format: expected one of {list(FORMATS)}, got {wire_format!r}")
        if socket_type not in ("push", "pub"):
            problems.append(f"socket_type: expected 'push' or 'pub', got {socket_type!r}")
        if "://" not in endpoint:
            problems.append(f"endpoint: expected 'transport://address', got {endpoint!r}")
        if not (math.isfinite(frame_rate) and frame_rate > 0):
            problems.append(f"frame_rate: expected > 0 frames/s, got {frame_rate!r}")
        if first_frame_id < 0:
            problems.append(f"first_frame_id: expected >= 0, got {first_frame_id}")
        if problems:
            raise ConfigError("SimTomoCamera: " + "; ".join(problems))
        # A bound method, not the stage itself: a Device attribute would become a child device.
        self._stage_schedule = stage.schedule
        self._sim = sim or SimConfig(width=64, rows=4, steps=8, per_step=32, supersample=2)
        self._endpoint = endpoint
        self._socket_type = socket_type
        self._bind = bind
        self._sndhwm = sndhwm
        with self.add_children_as_readables(Format.HINTED_SIGNAL):
            self.frames_sent, self._set_frames_sent = soft_signal_r_and_setter(int, 0)
        with self.add_children_as_readables(Format.UNCACHED_SIGNAL):
            self.next_frame_id, self._set_next_frame_id = soft_signal_r_and_setter(
                int, first_frame_id
            )
            self.acquiring, self._set_acquiring = soft_signal_r_and_setter(bool, False)
        with self.add_children_as_readables(Format.CONFIG_SIGNAL):
            self.frame_rate = soft_signal_rw(float, frame_rate, units="frames/s")
            self.wire_format, _ = soft_signal_r_and_setter(str, wire_format)
            self.data_address, self._set_data_address = soft_signal_r_and_setter(str, "")
            self.rows, _ = soft_signal_r_and_setter(int, self._sim.rows)
            self.cols, _ = soft_signal_r_and_setter(int, self._sim.width)
        self._format = wire_format
        self._ctx: zmq.Context | None = None
        self._sock: zmq.Socket | None = None
        self._scans: dict[tuple[int, int], DynamicScan] = {}
        self._prepared: CameraAcquisition | None = None
        self._thread: threading.Thread | None = None
        self._halt = threading.Event()
        self._done: asyncio.Future | None = None
        self._frames_total = 0
        super().__init__(name=name, connector=_CameraConnector())

    # -- socket ----------------------------------------------------------------------------------

    @property
    def sim(self) -> SimConfig:
        """The phantom and detector template."""
        return self._sim

    def _open_socket(self) -> None:
        if self._sock is not None:
            return
        self._ctx = zmq.Context()
        sock = self._ctx.socket(zmq.PUSH if self._socket_type == "push" else zmq.PUB)
        try:
            sock.linger = 0
            sock.sndhwm = self._sndhwm
            if self._bind:
                sock.bind(self._endpoint)
            else:
                sock.connect(self._endpoint)
        except zmq.ZMQError as exc:
            sock.close()
            self._ctx.term()
            self._ctx = None
            verb = "bind" if self._bind else "connect"
            raise ServiceError(
                f"{self.name}: cannot {verb} the data socket to {self._endpoint}: {exc}"
            ) from exc
        self._sock = sock
        self._set_data_address(sock.getsockopt_string(zmq.LAST_ENDPOINT))

    def close(self) -> None:
        """Stop a running acquisition, then close the data socket (idempotent)."""
        self._halt.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None

    # -- flying ----------------------------------------------------------------------------------

    def _scan(self, acq: CameraAcquisition) -> DynamicScan:
        key = (acq.time_steps, acq.frames_per_step)
        if key not in self._scans:
            sim = self._sim
            self._scans = {
                key: DynamicScan(
                    replace(
                        sim,
                        steps=acq.time_steps,
                        per_step=acq.frames_per_step,
                        dynamics_start=min(sim.dynamics_start, acq.time_steps),
                    )
                )
            }
        return self._scans[key]

    @AsyncStatus.wrap
    async def prepare(self, value: CameraAcquisition) -> None:
        """Arm the next acquisition (and build its phantom the first time)."""
        if not isinstance(value, CameraAcquisition):
            raise ConfigError(f"{self.name}: prepare expects a CameraAcquisition, got {value!r}")
        await self._check_idle("prepare")
        # Building a phantom is CPU work: keep it off the event loop.
        await asyncio.to_thread(self._scan, value)
        self._prepared = value

    @AsyncStatus.wrap
    async def kickoff(self) -> None:
        """Start streaming the prepared acquisition on a thread."""
        acq = self._prepared
        if acq is None:
            raise ServiceError(f"{self.name}: prepare(CameraAcquisition(...)) before kickoff()")
        if self._sock is None:
            raise ServiceError(f"{self.name}: connect the camera before kickoff()")
        await self._check_idle("kick off")
        rate = await self.frame_rate.get_value()
        schedule = None
        if acq.kind == "projection":
            schedule = await self._stage_schedule(rate, acq.frames_per_step)
        first = await self.next_frame_id.get_value()
        frames = self._frames(self._scan(acq), acq, first, schedule)
        loop = asyncio.get_running_loop()
        self._done = loop.create_future()
        self._halt.clear()
        self._prepared = None
        self._set_acquiring(True)
        self._thread = threading.Thread(
            target=self._stream,
            args=(frames, acq, rate, loop, self._done),
            name=f"{self.name or 'camera'}-stream",
            daemon=True,
        )
        self._thread.start()

    async def _check_idle(self, action: str) -> None:
        if self._done is not None and not self._done.done():
            raise ServiceError(f"{self.name}: cannot {action} while acquiring; stop() first")
        thread, self._thread = self._thread, None
        if thread is not None:  # it has reported its end and is returning: join it
            await asyncio.to_thread(thread.join)

    def complete(self) -> AsyncStatus:
        """Done when every frame of the acquisition is sent; fails if it was stopped."""
        if self._done is None:
            raise ServiceError(f"{self.name}: kickoff() before complete()")
        return AsyncStatus(self._finished(self._done), name=self.name)

    async def _finished(self, done: asyncio.Future) -> None:
        await asyncio.shield(done)

    async def stop(self, success: bool = True) -> None:
        """Stop streaming (the acquisition then fails) and wait for the thread."""
        self._halt.set()
        thread = self._thread
        if thread is not None:
            await asyncio.to_thread(thread.join)
            self._thread = None
        self._prepared = None

    # -- the streaming thread --------------------------------------------------------------------

    def _frames(
        self,
        scan: DynamicScan,
        acq: CameraAcquisition,
        first_id: int,
        schedule: RotationSchedule | None,
    ) -> Iterator[tuple[int, FrameKind, np.ndarray]]:
        """(frame id, kind, counts) of the acquisition, computed lazily (on the thread)."""
        sim = scan.config
        ids = itertools.count(first_id)

        def noise(fid: int) -> np.random.Generator:
            return np.random.default_rng([sim.seed, _NOISE_STREAM, fid])

        if acq.kind == "dark":
            for _ in range(acq.frames):
                fid = next(ids)
                yield fid, "dark", scan.detector.dark_frame(noise(fid))
            return
        if acq.kind == "flat":
            for _ in range(acq.frames):
                fid = next(ids)
                yield fid, "flat", scan.detector.counts(None, noise(fid))
            return
        assert schedule is not None
        angles = schedule.angles(acq.frames)
        per = acq.frames_per_step
        for start in range(0, acq.frames, per):
            block = angles[start : start + per]
            geometry = ParallelGeometry.from_degrees(
                block, rows=sim.rows, cols=sim.width, center_offset=sim.center_offset
            )
            step = 0 if acq.static else start // per
            p = scan.phantom.project(geometry, step, supersample=sim.supersample)
            for k in range(len(block)):
                fid = next(ids)
                yield fid, "projection", scan.detector.counts(p[k], noise(fid))

    def _stream(
        self,
        frames: Iterator[tuple[int, FrameKind, np.ndarray]],
        acq: CameraAcquisition,
        rate: float,
        loop: asyncio.AbstractEventLoop,
        done: asyncio.Future,
    ) -> None:
        sock = self._sock
        assert sock is not None
        kind_in_header = self._format != "array-1.0"
        error: BaseException | None = None
        sent = 0
        t0 = time.monotonic()
        try:
            for i, (fid, kind, data) in enumerate(frames):
                # Pacing at the frame rate (the halt event ends the wait early on stop()).
                if self._halt.wait(max(0.0, t0 + i / rate - time.monotonic())):
                    raise ServiceError(
                        f"{self.name}: {acq.kind} acquisition stopped after {sent} of "
                        f"{acq.frames} frames"
                    )
                parts = frame_message(
                    self._format,  # type: ignore[arg-type]
                    fid,
                    data,
                    kind=kind if kind_in_header else None,
                    timestamp=None if self._format == "gigafrost" else time.time(),
                )
                self._send(sock, parts, acq, sent)
                sent += 1
                self._report(loop, next_id=fid + 1)
        except BaseException as exc:  # report any failure through complete()
            error = exc
        self._report(loop, done=done, error=error)

    def _send(self, sock: zmq.Socket, parts: list, acq: CameraAcquisition, sent: int) -> None:
        # PUSH blocks while no receiver takes frames: wait in slices so stop() stays prompt.
        while not sock.poll(50, zmq.POLLOUT):
            if self._halt.is_set():
                raise ServiceError(
                    f"{self.name}: {acq.kind} acquisition stopped after {sent} of "
                    f"{acq.frames} frames (no receiver was taking frames)"
                )
        sock.send_multipart(parts, copy=False)

    def _report(
        self,
        loop: asyncio.AbstractEventLoop,
        *,
        next_id: int | None = None,
        done: asyncio.Future | None = None,
        error: BaseException | None = None,
    ) -> None:
        # Signals belong to the event loop: update them there, never from this thread.
        def apply() -> None:
            if next_id is not None:
                self._frames_total += 1
                self._set_frames_sent(self._frames_total)
                self._set_next_frame_id(next_id)
            if done is not None:
                self._set_acquiring(False)
                if not done.done():
                    if error is None:
                        done.set_result(None)
                    else:
                        done.set_exception(error)

        # A closed event loop means nobody is waiting any more.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(apply)
