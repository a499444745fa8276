"""The plans: as message generators (no RunEngine), and run against simulated hardware and the real
service on loopback."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator
from typing import Any

import pytest
from bluesky.run_engine import RunEngine, WaitForTimeoutError, call_in_bluesky_event_loop
from bluesky.utils import FailedStatus, Msg
from n2i_plans import (
    CameraAcquisition,
    N2IStream,
    RotationFly,
    RotationSchedule,
    ServiceBusyError,
    SimRotationStage,
    SimTomoCamera,
    dynamic_tomo_scan,
    interlaced_speed,
    static_tomo_scan,
)
from ophyd_async.core import init_devices

from n2i_stream.errors import ConfigError
from n2i_stream.service.loopback import Loopback
from n2i_stream.service.pipeline import PipelineOptions
from n2i_stream.sim import SimConfig

SIM = SimConfig(width=32, rows=4, steps=6, per_step=16, dynamics_start=3, supersample=1, seed=3)
T, P, K = 6, 16, 3
TINY = {"depth": 2, "width": 4, "crop": 16, "batch": 2}
ITERATIONS = 6


# -- the angle schedule ----------------------------------------------------------------------------


def test_interlaced_schedule_matches_the_simulated_scan():
    rate = 250.0
    speed, offset = interlaced_speed(rate, P, 4)
    schedule = RotationSchedule.from_motion(
        speed=speed, speed_offset=offset, frame_rate=rate, frames_per_step=P
    )
    sim = SimConfig(per_step=P, interlace=4, jitter=0.0)
    assert speed == pytest.approx(180.0 * rate / P)
    assert schedule.step_span == pytest.approx(sim.step_span)
    assert schedule.interlace_shift == pytest.approx(sim.increment / 4)
    assert schedule.covers_half_turn()
    angles = schedule.angles(3 * P)
    assert angles[P] - angles[0] == pytest.approx(180.0 + sim.increment / 4)


def test_a_schedule_short_of_a_half_turn_is_refused():
    schedule = RotationSchedule.from_motion(
        speed=100.0, speed_offset=0.0, frame_rate=10.0, frames_per_step=16
    )
    assert not schedule.covers_half_turn()
    with pytest.raises(ConfigError, match="do not cover 180°"):
        schedule.check()
    with pytest.raises(ConfigError, match="frame_rate"):
        interlaced_speed(0.0, 16, 4)
    with pytest.raises(ConfigError, match="speed"):
        RotationSchedule.from_motion(speed=0, speed_offset=0, frame_rate=1, frames_per_step=4)


# -- plans as generators -------------------------------------------------------------------------


@pytest.fixture
def offline_devices() -> tuple[SimTomoCamera, SimRotationStage, N2IStream]:
    """Named, never connected devices: enough for plans driven without a RunEngine."""
    stage = SimRotationStage(name="stage")
    camera = SimTomoCamera(stage, sim=SIM, frame_rate=400.0, name="camera")
    n2i = N2IStream("tcp://127.0.0.1:5560", name="n2i")
    return camera, stage, n2i


READ_VALUES = {
    "camera-frame_rate": 400.0,
    "camera-rows": SIM.rows,
    "camera-cols": SIM.width,
    "camera-next_frame_id": 100,
    "camera-wire_format": "array-1.0",
    "n2i-address": "tcp://127.0.0.1:5560",
}


def drive(plan, fail_at: str | None = None) -> tuple[list[Msg], BaseException | None]:
    """Run ``plan`` by hand: answer reads from READ_VALUES, everything else with None.

    ``fail_at``: "command:object" at which to throw a RuntimeError into the plan (as a
    RunEngine does when a status fails). Returns the messages and what the plan raised.
    """
    msgs: list[Msg] = []
    response: Any = None
    throw: BaseException | None = None
    while True:
        try:
            msg = plan.throw(throw) if throw is not None else plan.send(response)
        except StopIteration:
            return msgs, None
        except Exception as exc:
            return msgs, exc
        throw = None
        msgs.append(msg)
        name = getattr(msg.obj, "name", None)
        response = None
        if fail_at == f"{msg.command}:{name}":
            fail_at = None
            throw = RuntimeError("the camera broke")
        elif msg.command == "read" and name in READ_VALUES:
            response = {name: {"value": READ_VALUES[name], "timestamp": 0.0}}
        elif msg.command == "locate" and name in READ_VALUES:  # read-write signals
            response = {"setpoint": READ_VALUES[name], "readback": READ_VALUES[name]}
        elif msg.command == "wait_for":
            response = [_done_future()]


def _done_future() -> asyncio.Future:
    loop = asyncio.new_event_loop()
    future = loop.create_future()
    future.set_result(None)
    loop.close()
    return future


def summary(msgs: list[Msg]) -> list[tuple[str, str | None]]:
    return [
        (m.command, getattr(m.obj, "name", None))
        for m in msgs
        if m.command not in ("read", "locate")
    ]


def test_dynamic_scan_message_sequence(offline_devices):
    camera, stage, n2i = offline_devices
    plan = dynamic_tomo_scan(
        camera, stage, n2i, time_steps=T, frames_per_step=P, train_steps=K, darks=3, flats=5,
        interlace=4, center_offset=0.0, scan_id="gen", output="/data/out.h5",
    )  # fmt: skip
    msgs, error = drive(plan)
    assert error is None
    steps = summary(msgs)
    flown = [s for s in steps if s[0] in ("prepare", "kickoff", "complete", "set", "open_run",
                                             "close_run")]  # fmt: skip
    assert flown == [
        ("open_run", None),
        ("prepare", "n2i"), ("kickoff", "n2i"),
        ("set", "stage-velocity"), ("set", "stage-speed_offset"),
        ("prepare", "camera"), ("kickoff", "camera"), ("complete", "camera"),
        ("prepare", "camera"), ("kickoff", "camera"), ("complete", "camera"),
        ("prepare", "stage"), ("prepare", "camera"),
        ("kickoff", "stage"), ("kickoff", "camera"),
        ("complete", "camera"), ("complete", "stage"),
        ("complete", "n2i"),
        ("close_run", None),
    ]  # fmt: skip
    prepared = [m.args[0] for m in msgs if m.command == "prepare"]
    table = prepared[0]
    assert prepared[1:3] == [CameraAcquisition("dark", 3, T, P), CameraAcquisition("flat", 5, T, P)]
    speed, offset = interlaced_speed(400.0, P, 4)
    assert prepared[3] == RotationFly(0.0, T * P * (speed + offset) / 400.0)
    assert prepared[4] == CameraAcquisition("projection", T * P, T, P)
    # Frame ids continue from the camera's counter: darks, flats, then projections.
    assert table["dark_ids"] == [[100, 3]]
    assert table["flat_ids"] == [[103, 5]]
    assert table["projection_ids"] == [[108, T * P]]
    assert table["angle_start"] == 0.0
    assert table["angle_step"] == pytest.approx((speed + offset) / 400.0)
    assert (table["steps"], table["frames_per_step"], table["train_steps"]) == (T, P, K)
    assert (table["rows"], table["cols"], table["output"]) == (SIM.rows, SIM.width, "/data/out.h5")
    (open_run,) = [m for m in msgs if m.command == "open_run"]
    md = open_run.kwargs["n2i"]
    assert md["scan"] == table
    assert md["scan_id"] == "gen"
    assert md["control"] == "device"
    assert md["training_window"] == [0, K]
    assert md["angles"]["count"] == T * P
    assert md["angles"]["interlace_shift"] == pytest.approx(180.0 / P / 4)
    assert md["wire_format"] == "array-1.0"
    assert open_run.kwargs["plan_name"] == "dynamic_tomo_scan"
    assert not any("." in k or "/" in k for k in _all_keys(open_run.kwargs))
    # The scan's end is awaited (with the timeout), then one event records the signals.
    after = steps[steps.index(("complete", "n2i")) :]
    assert after == [
        ("complete", "n2i"), ("wait", None), ("trigger", "n2i"), ("wait", None),
        ("create", None), ("save", None), ("close_run", None),
    ]  # fmt: skip
    reads = [m.obj.name for m in msgs[msgs.index(_first(msgs, "create")) :] if m.command == "read"]
    assert reads == ["n2i", "stage", "camera"]
    assert not any(s[0] == "stop" for s in steps)


def _first(msgs: list[Msg], command: str) -> Msg:
    return next(m for m in msgs if m.command == command)


def _all_keys(tree: Any) -> Iterator[str]:
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield key
            yield from _all_keys(value)


def test_without_a_device_the_run_asks_for_document_control(offline_devices):
    camera, stage, _ = offline_devices
    msgs, error = drive(
        dynamic_tomo_scan(camera, stage, None, time_steps=T, frames_per_step=P, train_steps=K)
    )
    assert error is None
    (open_run,) = [m for m in msgs if m.command == "open_run"]
    assert open_run.kwargs["n2i"]["control"] == "documents"
    assert open_run.kwargs["n2i"]["service"] is None
    assert not any(getattr(m.obj, "name", "").startswith("n2i") for m in msgs if m.obj)


def test_static_scan_trains_on_interlaced_half_turns(offline_devices):
    camera, stage, n2i = offline_devices
    msgs, error = drive(
        static_tomo_scan(camera, stage, n2i, frames_per_turn=P, sections=4, repeats=2)
    )
    assert error is None
    (open_run,) = [m for m in msgs if m.command == "open_run"]
    md = open_run.kwargs["n2i"]
    assert md["strategy"] == "static"
    assert (md["time_steps"], md["train_steps"], md["interlace"]) == (6, 4, 4)
    assert md["angles"]["interlace_shift"] == pytest.approx(180.0 / P / 4)
    projections = [m.args[0] for m in msgs if m.command == "prepare"][-1]
    assert projections == CameraAcquisition("projection", 6 * P, 6, P, static=True)
    assert ("trigger", "n2i-training") in summary(msgs)


def test_a_failure_stops_the_hardware_and_aborts_the_service_scan(offline_devices):
    camera, stage, n2i = offline_devices
    plan = dynamic_tomo_scan(camera, stage, n2i, time_steps=T, frames_per_step=P, train_steps=K)
    msgs, error = drive(plan, fail_at="complete:camera")
    assert isinstance(error, RuntimeError)
    assert str(error) == "the camera broke"
    steps = summary(msgs)
    assert steps[-4:] == [
        ("close_run", None), ("stop", "camera"), ("stop", "stage"), ("wait_for", None)
    ]  # fmt: skip
    assert _first(msgs, "close_run").kwargs["exit_status"] == "fail"


def test_a_failure_before_the_service_started_leaves_the_service_alone(offline_devices):
    camera, stage, n2i = offline_devices
    plan = dynamic_tomo_scan(camera, stage, n2i, time_steps=T, frames_per_step=P, train_steps=K)
    msgs, error = drive(plan, fail_at="kickoff:n2i")
    assert isinstance(error, RuntimeError)
    assert summary(msgs)[-3:] == [("close_run", None), ("stop", "camera"), ("stop", "stage")]


@pytest.mark.parametrize(
    ("arguments", "match"),
    [
        ({"train_steps": T}, "train_steps: expected fewer than time_steps"),
        ({"train_steps": T + 3}, "train_steps"),
        ({"train_steps": 1}, "train_steps: expected >= 2"),
        ({"darks": 0}, "darks: expected >= 1"),
        ({"flats": 0}, "flats: expected >= 1"),
        ({"frames_per_step": 0}, "frames_per_step"),
        ({"time_steps": 0}, "time_steps"),
        ({"md": {"sample.name": "x"}}, "may not contain"),
        ({"complete_timeout": 0}, "complete_timeout"),
    ],
)
def test_bad_arguments_are_refused_before_any_message(offline_devices, arguments, match):
    camera, stage, n2i = offline_devices
    kwargs = {"time_steps": T, "frames_per_step": P, "train_steps": K} | arguments
    plan = dynamic_tomo_scan(camera, stage, n2i, **kwargs)
    with pytest.raises(ConfigError, match=match):
        next(plan)


def test_angles_that_miss_a_half_turn_are_refused_before_anything_moves(offline_devices):
    camera, stage, n2i = offline_devices
    plan = dynamic_tomo_scan(
        camera, stage, n2i, time_steps=T, frames_per_step=P, train_steps=K, rotation_speed=1000.0
    )  # 1000 deg/s at 400 frames/s: 16 frames span 40°
    msgs, error = drive(plan)
    assert isinstance(error, ConfigError)
    assert isinstance(error, ValueError)
    assert "do not cover 180°" in str(error)
    assert {m.command for m in msgs} <= {"read", "locate"}
    with pytest.raises(ConfigError, match="sections"):
        next(static_tomo_scan(camera, stage, n2i, frames_per_turn=P, sections=1))


def test_a_scan_the_service_would_refuse_is_refused_before_anything_moves(offline_devices):
    camera, stage, n2i = offline_devices
    plan = dynamic_tomo_scan(
        camera, stage, n2i, time_steps=T, frames_per_step=P, train_steps=K, network="resnet"
    )  # type: ignore[arg-type]
    msgs, error = drive(plan)
    assert isinstance(error, ConfigError)
    assert "network" in str(error)
    assert {m.command for m in msgs} <= {"read", "locate"}


# -- with a RunEngine, simulated hardware and the real service ------------------------------------


@pytest.fixture(scope="module")
def RE() -> RunEngine:
    return RunEngine({}, context_managers=[])


@pytest.fixture
def beamline(RE) -> Iterator[dict[str, Any]]:
    """The service on loopback, a stage, a camera streaming to it and the service device."""
    with Loopback(options=PipelineOptions(infer_threads=1, train_threads=1)) as lb:
        with init_devices():
            stage = SimRotationStage(update_period=0.02)
            camera = SimTomoCamera(
                stage, endpoint=lb.data_endpoint, bind=False, frame_rate=800.0, sim=SIM,
                wire_format="gigafrost", first_frame_id=7,
            )  # fmt: skip
            n2i = N2IStream(lb.control_endpoint, poll_period=0.02)
        try:
            yield {"lb": lb, "stage": stage, "camera": camera, "n2i": n2i}
        finally:
            call_in_bluesky_event_loop(n2i.stop())
            n2i.close()
            camera.close()


def test_dynamic_scan_against_the_real_service(RE, beamline):
    lb, stage, camera, n2i = (beamline[k] for k in ("lb", "stage", "camera", "n2i"))
    sub = lb.subscribe()
    docs: list[tuple[str, dict]] = []
    progress: list[dict] = []

    def watch_progress(statuses) -> None:  # what a progress bar does with the statuses
        for status in statuses or ():
            if hasattr(status, "watch"):
                status.watch(lambda **update: progress.append(update))

    RE.waiting_hook = watch_progress
    try:
        (uid,) = RE(
            dynamic_tomo_scan(
                camera, stage, n2i, time_steps=T, frames_per_step=P, train_steps=K, darks=3,
                flats=3, center_offset=0.0, network="unet", train_iterations=ITERATIONS,
                training=TINY, scan_id="bluesky-dynamic", wait_for_training=True,
                md={"sample": "foam"},
            ),
            lambda name, doc: docs.append((name, doc)),
        )  # fmt: skip
    finally:
        RE.waiting_hook = None

    names = [name for name, _ in docs]
    assert names[0] == "start"
    assert names[-1] == "stop"
    start, stop = docs[0][1], docs[-1][1]
    assert stop["exit_status"] == "success"
    assert start["uid"] == uid
    assert start["sample"] == "foam"
    md = start["n2i"]
    assert md["scan_id"] == "bluesky-dynamic"
    assert md["control"] == "device"
    assert md["service"] == lb.control_endpoint
    assert md["training_window"] == [0, K]
    assert md["scan"]["projection_ids"] == [[7 + 6, T * P]]
    assert md["wire_format"] == "gigafrost"

    # Training: progress updates up to the iteration budget.
    progress = [u for u in progress if u.get("unit") == "iterations"]
    assert progress, "no training progress was reported"
    assert progress[-1]["current"] == progress[-1]["target"] == ITERATIONS
    assert [u["current"] for u in progress] == sorted(u["current"] for u in progress)

    # Every step after the training window arrived denoised (and every step as FBP first).
    denoised = sub.of_kind("denoised")
    assert set(range(K, T)) <= set(denoised)
    assert set(sub.of_kind("fbp")) == set(range(T))
    assert all(v.shape == (SIM.rows, SIM.width, SIM.width) for v in denoised.values())
    assert all(math.isfinite(float(v.mean())) for v in denoised.values())

    # The service, stage and camera signals were read into the run.
    (event,) = [doc for name, doc in docs if name == "event"]
    data = event["data"]
    assert data["n2i-state"] == "done"
    assert data["n2i-scan_id"] == "bluesky-dynamic"
    assert data["n2i-steps_denoised"] == T
    assert data["n2i-last_published"] in range(T)
    assert data["n2i-training-iteration"] == ITERATIONS
    assert data["n2i-frames_received"] == 3 + 3 + T * P
    assert data["n2i-frames_bad"] == 0
    assert data["camera-frames_sent"] == 3 + 3 + T * P
    assert data["camera-next_frame_id"] == 7 + 3 + 3 + T * P
    speed, offset = interlaced_speed(800.0, P, 4)
    assert data["stage-position"] == pytest.approx(T * P * (speed + offset) / 800.0)
    assert data["stage-rotating"] is False
    (descriptor,) = [doc for name, doc in docs if name == "descriptor"]
    assert descriptor["name"] == "n2i_summary"
    assert descriptor["configuration"]["n2i"]["data"]["n2i-address"] == lb.control_endpoint
    assert lb.service.status()["reason"] is None


def test_a_busy_service_fails_the_plan_before_the_hardware_moves(RE, beamline):
    lb, stage, camera, n2i = (beamline[k] for k in ("lb", "stage", "camera", "n2i"))
    other = _plain_scan("someone-else")
    lb.service.configure(other)
    docs: list[tuple[str, dict]] = []
    with pytest.raises(FailedStatus) as info:
        RE(
            dynamic_tomo_scan(camera, stage, n2i, time_steps=T, frames_per_step=P, train_steps=K),
            lambda name, doc: docs.append((name, doc)),
        )
    assert isinstance(info.value.__cause__, ServiceBusyError)
    assert "busy with scan 'someone-else'" in str(info.value.__cause__)
    assert docs[-1][1]["exit_status"] == "fail"
    assert call_in_bluesky_event_loop(camera.frames_sent.get_value()) == 0
    assert call_in_bluesky_event_loop(stage.position.get_value()) == 0.0
    status = lb.service.status()
    assert (status["scan_id"], status["state"]) == ("someone-else", "acquiring")
    lb.service.abort()
    # The RunEngine is usable afterwards.
    assert RE.state == "idle"


def test_an_interrupted_plan_aborts_its_service_scan(RE, beamline):
    lb, stage, camera, n2i = (beamline[k] for k in ("lb", "stage", "camera", "n2i"))
    # The rotation ends long before the service could train and finish: the wait times out.
    with pytest.raises(WaitForTimeoutError) as info:
        RE(
            dynamic_tomo_scan(
                camera, stage, n2i, time_steps=T, frames_per_step=P, train_steps=K, darks=2,
                flats=2, center_offset=0.0, train_minutes=5.0, training=TINY,
                scan_id="impatient", complete_timeout=0.001,
            )
        )  # fmt: skip
    assert "failed to complete" in str(info.value)
    status = lb.service.status()
    assert (status["scan_id"], status["state"], status["reason"]) == (
        "impatient",
        "done",
        "aborted",
    )
    assert RE.state == "idle"
    assert call_in_bluesky_event_loop(stage.rotating.get_value()) is False


def _plain_scan(scan_id: str) -> dict[str, Any]:
    return {
        "scan_id": scan_id, "rows": SIM.rows, "cols": SIM.width, "frames_per_step": P,
        "steps": T, "angle_step": 11.25, "train_steps": K, "training": TINY,
    }  # fmt: skip


@pytest.mark.slow
def test_demo_drives_a_served_service_through_the_plan(capsys):
    from n2i_plans.demo import main

    status = main(
        [
            "--steps", "5", "--frames-per-step", "32", "--train-steps", "3", "--width", "32",
            "--rows", "4", "--train-iterations", "6", "--frame-rate", "800",
        ]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert status == 0
    assert "published denoised steps [0, 1, 2, 3, 4]" in out
    assert "n2i-state                done" in out
