"""Bluesky plans for live Noise2Inverse tomography: dynamic and static continuous-rotation scans.

Both plans check every argument before anything moves (a :class:`~n2i_stream.errors.ConfigError`,
which is a ValueError, says what is wrong), then within one run:

1. configure the service with the scan (``n2i`` prepared and kicked off: the session starts);
2. take darks, then flats (camera acquisitions; frame ids count on);
3. fly the continuous rotation: the stage turns at ``speed + offset``, the camera streams the
   projections (no angles on the wire: the service has the angle schedule from step 1);
4. wait until the service has published the scan's last time step (and, if asked, until
   training is done), then record the service's, stage's and camera's signals in one event.

The start document carries the ``n2i`` metadata (keys without ``.`` or ``/``): the scan table
sent to the service (``n2i.scan``, the ScanConfig keys), scan id, steps, training window, angle
schedule summary, model and output file. With ``n2i=None`` the plan does not talk to the service
at all and marks the run ``control: "documents"``: a service in document-driven mode
(``n2i_stream.service.documents``) configures itself from this start document instead.

On any failure or interruption the camera and stage are stopped and the service's scan (if this
plan started it) is aborted, so the RunEngine and the service stay usable.

Devices: the camera takes ``prepare(CameraAcquisition)`` and has ``frame_rate``, ``rows``,
``cols``, ``next_frame_id`` and ``wire_format`` signals; the stage takes ``prepare(RotationFly)``
and has ``velocity`` and ``speed_offset`` signals (as :mod:`n2i_plans.sim_devices` do; an adapter
for real hardware offers the same).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Generator
from typing import Any, Literal

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
from bluesky.utils import Msg

from n2i_stream.config import from_mapping
from n2i_stream.errors import ConfigError

from .device import N2IStream
from .schedule import RotationSchedule, interlaced_speed
from .sim_devices import CameraAcquisition, RotationFly, SimRotationStage, SimTomoCamera

__all__ = ["dynamic_tomo_scan", "scan_table", "static_tomo_scan"]

log = logging.getLogger(__name__)

MsgGenerator = Generator[Msg, Any, Any]
Network = Literal["unet", "msd", "dncnn"]


def _scan_config_class() -> type | None:
    try:
        from n2i_stream.service.scan_config import ScanConfig
    except ImportError:
        return None
    return ScanConfig


def scan_table(
    *,
    scan_id: str,
    rows: int,
    cols: int,
    time_steps: int,
    frames_per_step: int,
    train_steps: int,
    schedule: RotationSchedule,
    first_frame_id: int,
    darks: int,
    flats: int,
    center_offset: float | str,
    network: str,
    train_minutes: float,
    train_iterations: int | None,
    model: str | None,
    output: str | None,
    publish: list[int] | None,
    training: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The ScanConfig table (plain data) of a scan of darks, flats, then projections.

    Frame ids: darks from ``first_frame_id``, then flats, then ``time_steps × frames_per_step``
    projections, as the camera counts them. Checked against the service's ScanConfig when it is
    importable here (ConfigError listing every problem).
    """
    first_projection = first_frame_id + darks + flats
    table: dict[str, Any] = {
        "scan_id": scan_id,
        "rows": rows,
        "cols": cols,
        "frames_per_step": frames_per_step,
        "steps": time_steps,
        "dtype": "uint16",
        "angle_start": schedule.angle_start,
        "angle_step": schedule.angle_step,
        "projection_ids": [[first_projection, time_steps * frames_per_step]],
        "dark_ids": [[first_frame_id, darks]],
        "flat_ids": [[first_frame_id + darks, flats]],
        "train_steps": train_steps,
        "center_offset": center_offset,
        "network": network,
        "train_minutes": train_minutes,
        "train_iterations": train_iterations,
        "model": model,
        "output": output,
        "publish": "volume" if publish is None else list(publish),
    }
    if training:
        table["training"] = dict(training)
    cls = _scan_config_class()
    if cls is not None:
        from_mapping(cls, table, source=f"scan {scan_id!r}")
    return table


def _check_counts(
    *, time_steps: int, frames_per_step: int, train_steps: int, darks: int, flats: int
) -> None:
    problems = []
    if time_steps < 3:
        problems.append(
            f"time_steps: expected >= 3 (training steps and later ones), got {time_steps}"
        )
    if frames_per_step < 2:
        problems.append(f"frames_per_step: expected >= 2 frames, got {frames_per_step}")
    if train_steps < 2:
        problems.append(f"train_steps: expected >= 2 (Noise2Inverse pairs), got {train_steps}")
    elif train_steps >= time_steps:
        problems.append(
            f"train_steps: expected fewer than time_steps ({time_steps}) so that later steps are "
            f"denoised, got {train_steps}"
        )
    if darks < 1:
        problems.append(f"darks: expected >= 1 frame, got {darks}")
    if flats < 1:
        problems.append(f"flats: expected >= 1 frame, got {flats}")
    if problems:
        raise ConfigError("invalid scan: " + "; ".join(problems))


def _call(factory: Callable[[], Any]) -> MsgGenerator:
    """Await ``factory()`` in the RunEngine's loop; re-raise its exception in the plan."""
    (future,) = yield from bps.wait_for([factory])
    error = future.exception()
    if error is not None:
        raise error
    return future.result()


def _acquire(camera: SimTomoCamera, acquisition: CameraAcquisition) -> MsgGenerator:
    yield from bps.prepare(camera, acquisition, wait=True)
    yield from bps.kickoff(camera, wait=True)
    yield from bps.complete(camera, wait=True)


def _tomo_scan(
    camera: SimTomoCamera,
    stage: SimRotationStage,
    n2i: N2IStream | None,
    *,
    strategy: Literal["dynamic", "static"],
    time_steps: int,
    frames_per_step: int,
    train_steps: int,
    darks: int,
    flats: int,
    frame_rate: float | None,
    rotation_speed: float | None,
    interlace: int,
    start_angle: float,
    center_offset: float | str,
    network: str,
    train_minutes: float,
    train_iterations: int | None,
    model: str | None,
    output: str | None,
    publish: list[int] | None,
    training: dict[str, Any] | None,
    scan_id: str | None,
    wait_for_training: bool,
    complete_timeout: float | None,
    md: dict[str, Any] | None,
    plan_name: str,
) -> MsgGenerator:
    # -- everything is checked before anything moves ---------------------------------------------
    _check_counts(
        time_steps=time_steps,
        frames_per_step=frames_per_step,
        train_steps=train_steps,
        darks=darks,
        flats=flats,
    )
    if complete_timeout is not None and not complete_timeout > 0:
        raise ConfigError(f"complete_timeout: expected > 0 s or None, got {complete_timeout!r}")
    if md is not None and any("." in k or "/" in k for k in md):
        raise ConfigError(f"md: metadata keys may not contain '.' or '/', got {sorted(md)}")
    rate = float(frame_rate) if frame_rate is not None else (yield from bps.rd(camera.frame_rate))
    speed, offset = interlaced_speed(rate, frames_per_step, interlace)
    if rotation_speed is not None:
        speed = float(rotation_speed)
        offset = speed / (interlace * frames_per_step) if interlace > 1 else 0.0
    schedule = RotationSchedule.from_motion(
        speed=speed,
        speed_offset=offset,
        frame_rate=rate,
        frames_per_step=frames_per_step,
        angle_start=start_angle,
    )
    schedule.check()
    rows = yield from bps.rd(camera.rows)
    cols = yield from bps.rd(camera.cols)
    first_id = yield from bps.rd(camera.next_frame_id)
    wire_format = yield from bps.rd(camera.wire_format)
    scan_id = scan_id or f"{strategy}-{uuid.uuid4().hex[:12]}"
    table = scan_table(
        scan_id=scan_id,
        rows=rows,
        cols=cols,
        time_steps=time_steps,
        frames_per_step=frames_per_step,
        train_steps=train_steps,
        schedule=schedule,
        first_frame_id=first_id,
        darks=darks,
        flats=flats,
        center_offset=center_offset,
        network=network,
        train_minutes=train_minutes,
        train_iterations=train_iterations,
        model=model,
        output=output,
        publish=publish,
        training=training,
    )
    projections = time_steps * frames_per_step
    n2i_md = {
        "scan": table,
        "scan_id": scan_id,
        "control": "device" if n2i is not None else "documents",
        "service": (yield from bps.rd(n2i.address)) if n2i is not None else None,
        "strategy": strategy,
        "time_steps": time_steps,
        "frames_per_step": frames_per_step,
        "train_steps": train_steps,
        "training_window": [0, train_steps],
        "angles": schedule.summary(time_steps),
        "interlace": interlace,
        "rotation_speed": speed,
        "speed_offset": offset,
        "frame_rate": rate,
        "darks": darks,
        "flats": flats,
        "wire_format": wire_format,
        "network": network,
        "model": model,
        "output": output,
    }
    run_md = {
        "plan_name": plan_name,
        "detectors": [camera.name],
        "motors": [stage.name],
        "num_points": projections,
        "n2i": n2i_md,
        **(md or {}),
    }
    fly = RotationFly(start=start_angle, distance=projections * schedule.angle_step)
    static = strategy == "static"
    acquisition = {
        kind: CameraAcquisition(kind, count, time_steps, frames_per_step, static=static)
        for kind, count in (("dark", darks), ("flat", flats), ("projection", projections))
    }
    finished = False
    started_service = False

    def body() -> MsgGenerator:
        nonlocal finished, started_service
        if n2i is not None:
            yield from bps.prepare(n2i, table, wait=True)
            yield from bps.kickoff(n2i, wait=True)
            started_service = True
        yield from bps.mv(stage.velocity, speed, stage.speed_offset, offset)
        yield from _acquire(camera, acquisition["dark"])
        yield from _acquire(camera, acquisition["flat"])
        yield from bps.prepare(stage, fly, wait=True)
        yield from bps.prepare(camera, acquisition["projection"], wait=True)
        yield from bps.kickoff(stage, wait=True)
        yield from bps.kickoff(camera, wait=True)
        yield from bps.complete_all(camera, stage, wait=True)
        readers: list[Any] = [stage, camera]
        if n2i is not None:
            if wait_for_training:
                yield from bps.trigger(n2i.training, wait=True)
            group = f"n2i-complete-{scan_id}"
            yield from bps.complete(n2i, group=group)
            yield from bps.wait(group=group, timeout=complete_timeout)
            readers.insert(0, n2i)
        yield from bps.trigger_and_read(readers, name="n2i_summary")
        finished = True
        return scan_id

    def cleanup() -> MsgGenerator:
        if finished:
            return
        for device in (camera, stage):
            try:
                yield from bps.stop(device)
            except Exception:
                log.exception("could not stop %s after the scan failed", device.name)
        if n2i is not None and started_service:
            try:
                yield from _call(lambda: n2i.stop(success=False))
            except Exception:
                log.exception("could not abort the n2i scan %s", scan_id)

    return (yield from bpp.finalize_wrapper(bpp.run_wrapper(body(), md=run_md), cleanup))


def dynamic_tomo_scan(
    camera: SimTomoCamera,
    stage: SimRotationStage,
    n2i: N2IStream | None,
    *,
    time_steps: int,
    frames_per_step: int,
    train_steps: int,
    darks: int = 20,
    flats: int = 20,
    frame_rate: float | None = None,
    rotation_speed: float | None = None,
    interlace: int = 4,
    start_angle: float = 0.0,
    center_offset: float | str = "auto",
    network: Network = "unet",
    train_minutes: float = 5.0,
    train_iterations: int | None = None,
    model: str | None = None,
    output: str | None = None,
    publish: list[int] | None = None,
    training: dict[str, Any] | None = None,
    scan_id: str | None = None,
    wait_for_training: bool = False,
    complete_timeout: float | None = None,
    md: dict[str, Any] | None = None,
) -> MsgGenerator:
    """A dynamic scan denoised live: the first ``train_steps`` time steps train the network.

    ``time_steps`` half turns of ``frames_per_step`` projections each, interlaced by
    ``interlace`` (the stage's speed offset); ``frame_rate`` (frames/s; default: the camera's)
    and ``rotation_speed`` (deg/s; default: half a turn per time step) set the angle schedule,
    which must cover 180° per step. ``center_offset``: pixels or ``"auto"``. ``model``: a
    checkpoint to use instead of training. ``output``: the service's results file. ``publish``:
    z-slices to publish (default: whole volumes). ``wait_for_training``: also wait until training
    is done. ``complete_timeout``: seconds to wait for the last step after the rotation ends.
    Returns the run uid; the scan id is in the start document's ``n2i`` table.
    """
    return (
        yield from _tomo_scan(
            camera,
            stage,
            n2i,
            strategy="dynamic",
            time_steps=time_steps,
            frames_per_step=frames_per_step,
            train_steps=train_steps,
            darks=darks,
            flats=flats,
            frame_rate=frame_rate,
            rotation_speed=rotation_speed,
            interlace=interlace,
            start_angle=start_angle,
            center_offset=center_offset,
            network=network,
            train_minutes=train_minutes,
            train_iterations=train_iterations,
            model=model,
            output=output,
            publish=publish,
            training=training,
            scan_id=scan_id,
            wait_for_training=wait_for_training,
            complete_timeout=complete_timeout,
            md=md,
            plan_name="dynamic_tomo_scan",
        )
    )


def static_tomo_scan(
    camera: SimTomoCamera,
    stage: SimRotationStage,
    n2i: N2IStream | None,
    *,
    frames_per_turn: int,
    sections: int = 4,
    repeats: int = 1,
    darks: int = 20,
    flats: int = 20,
    frame_rate: float | None = None,
    rotation_speed: float | None = None,
    start_angle: float = 0.0,
    center_offset: float | str = "auto",
    network: Network = "unet",
    train_minutes: float = 5.0,
    train_iterations: int | None = None,
    model: str | None = None,
    output: str | None = None,
    publish: list[int] | None = None,
    training: dict[str, Any] | None = None,
    scan_id: str | None = None,
    wait_for_training: bool = True,
    complete_timeout: float | None = None,
    md: dict[str, Any] | None = None,
) -> MsgGenerator:
    """A static sample: ``sections`` interlaced half turns train the network, then denoise.

    The Noise2Inverse static strategy splits one scan's angles into sections; here each section
    is one half turn of ``frames_per_turn`` projections, shifted by 1/``sections`` of the angular
    increment against the previous one, so the ``sections`` half turns together sample the half
    circle ``sections`` times more densely. The service trains on those sections (its training
    window) and then reconstructs and denoises each of the ``repeats`` half turns that follow.
    Other arguments as :func:`dynamic_tomo_scan`; by default the plan waits for training.
    """
    if sections < 2:
        raise ConfigError(f"sections: expected >= 2 (Noise2Inverse pairs), got {sections}")
    if repeats < 1:
        raise ConfigError(f"repeats: expected >= 1 denoised half turn, got {repeats}")
    return (
        yield from _tomo_scan(
            camera,
            stage,
            n2i,
            strategy="static",
            time_steps=sections + repeats,
            frames_per_step=frames_per_turn,
            train_steps=sections,
            darks=darks,
            flats=flats,
            frame_rate=frame_rate,
            rotation_speed=rotation_speed,
            interlace=sections,
            start_angle=start_angle,
            center_offset=center_offset,
            network=network,
            train_minutes=train_minutes,
            train_iterations=train_iterations,
            model=model,
            output=output,
            publish=publish,
            training=training,
            scan_id=scan_id,
            wait_for_training=wait_for_training,
            complete_timeout=complete_timeout,
            md=md,
            plan_name="static_tomo_scan",
        )
    )
