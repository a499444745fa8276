"""The ophyd-async service device and its control client, against the real service on loopback."""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import zmq
from bluesky.run_engine import RunEngine, call_in_bluesky_event_loop
from n2i_plans import (
    ControlClient,
    N2IStream,
    RotationSchedule,
    ServiceBusyError,
    ServiceUnreachableError,
    scan_table,
)
from n2i_plans.client import raise_for_reply
from ophyd_async.core import NotConnectedError, init_devices

from n2i_stream.errors import ConfigError, ModelError, ServiceError, TrainingError
from n2i_stream.service.loopback import Loopback
from n2i_stream.service.pipeline import PipelineOptions
from n2i_stream.sim import DynamicScan, SimConfig
from n2i_stream.wire import frame_message

SIM = SimConfig(
    width=32, rows=4, steps=5, per_step=16, n_darks=2, n_flats=2, dynamics_start=3,
    supersample=1, jitter=0.0, seed=5,
)  # fmt: skip
K = 3
TINY = {"depth": 2, "width": 4, "crop": 16, "batch": 2}


def run(coro) -> Any:
    """Run a coroutine in the RunEngine's event loop (where the devices live)."""
    return call_in_bluesky_event_loop(coro, timeout=120)


def call(factory: Callable[[], Any]) -> Any:
    """Call ``factory`` (returning a status or coroutine) in the event loop and await it."""

    async def go() -> Any:
        return await factory()

    return run(go())


def table(scan_id: str, **fields) -> dict[str, Any]:
    schedule = RotationSchedule(0.0, SIM.step_span / SIM.per_step, SIM.per_step)
    values = {
        "scan_id": scan_id,
        "rows": SIM.rows,
        "cols": SIM.width,
        "time_steps": SIM.steps,
        "frames_per_step": SIM.per_step,
        "train_steps": K,
        "schedule": schedule,
        "first_frame_id": 0,
        "darks": SIM.n_darks,
        "flats": SIM.n_flats,
        "center_offset": 0.0,
        "network": "unet",
        "train_minutes": 1.0,
        "train_iterations": 6,
        "model": None,
        "output": None,
        "publish": None,
        "training": TINY,
    } | fields
    return scan_table(**values)


def stream_scan(endpoint: str, context: zmq.Context) -> int:
    """Send the whole simulated scan (darks, flats, projections) to a PULL endpoint."""
    push = context.socket(zmq.PUSH)
    push.linger = 5000
    try:
        push.connect(endpoint)
        sent = 0
        for f in DynamicScan(SIM).frames():
            push.send_multipart(frame_message("n2i", f.frame, f.data, kind=f.kind), copy=True)
            sent += 1
    finally:
        push.close()
    return sent


def free_address() -> str:
    """A loopback address nothing listens on (a port the system just handed out and freed)."""
    with zmq.Context() as ctx:
        sock = ctx.socket(zmq.PULL)
        sock.bind("tcp://127.0.0.1:*")
        address = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        sock.close(linger=0)
    return address


@pytest.fixture(scope="module")
def RE() -> RunEngine:
    return RunEngine({}, context_managers=[])


@pytest.fixture
def loopback() -> Iterator[Loopback]:
    with Loopback(options=PipelineOptions(infer_threads=1, train_threads=1)) as lb:
        yield lb


@pytest.fixture
def n2i(RE, loopback) -> Iterator[N2IStream]:
    with init_devices():
        n2i = N2IStream(loopback.control_endpoint, poll_period=0.02)
    try:
        yield n2i
    finally:
        run(n2i.stop())
        n2i.close()


# -- the control client ----------------------------------------------------------------------------


class ScriptedServer:
    """A ROUTER on a thread answering REQ clients with ``reply(request)`` (None: no reply)."""

    def __init__(self, reply: Callable[[dict], dict | None]) -> None:
        self._reply = reply
        self.requests: list[dict] = []
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.ROUTER)
        self._sock.linger = 0
        self._sock.bind("tcp://127.0.0.1:*")
        self.address = self._sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._halt.is_set():
            if not self._sock.poll(20):  # a bounded poll, so close() is noticed
                continue
            identity, empty, body = self._sock.recv_multipart()
            request = json.loads(body)
            self.requests.append(request)
            reply = self._reply(request)
            if reply is not None:
                self._sock.send_multipart([identity, empty, json.dumps(reply).encode()])

    def close(self) -> None:
        self._halt.set()
        self._thread.join()
        self._sock.close()
        self._ctx.term()


def test_client_reports_an_unreachable_service_by_address():
    address = free_address()
    with ControlClient(address, timeout=0.2) as client:
        with pytest.raises(ServiceUnreachableError, match=address) as info:
            client.request("ping")
        assert isinstance(info.value, TimeoutError)
        assert "n2i-stream serve" in str(info.value)
        assert client.resets == 1


def test_client_recovers_after_a_lost_reply():
    answered = []

    def reply(request: dict) -> dict | None:
        if not answered:  # swallow the first request: its reply is "lost"
            answered.append(False)
            return None
        return {"ok": True, "state": "idle", "echo": request["command"]}

    server = ScriptedServer(reply)
    try:
        with ControlClient(server.address, timeout=0.3) as client:
            with pytest.raises(ServiceUnreachableError):
                client.request("status")
            # A REQ socket still waiting for the lost reply could not send: it was replaced.
            assert client.request("ping") == {"state": "idle", "echo": "ping"}
            assert client.resets == 1
    finally:
        server.close()
    assert [r["command"] for r in server.requests] == ["status", "ping"]


@pytest.mark.parametrize(
    ("reply", "error", "match"),
    [
        ({"ok": False, "error": {"type": "ConfigError", "message": "bad key 'x'"}}, ConfigError,
         "configure: bad key 'x'"),
        ({"ok": False, "error": {"type": "ModelError", "message": "no such model"}}, ModelError,
         "no such model"),
        ({"ok": False, "error": {"type": "ServiceError", "message": "busy with scan 'a' in state "
          "'training'"}}, ServiceBusyError, "busy with scan 'a'"),
        ({"ok": False, "error": {"type": "InternalError", "message": "bug"}}, ServiceError, "bug"),
        ({"ok": False}, ServiceError, "without a reason"),
        (["not", "an", "object"], ServiceError, "expected a JSON object"),
    ],
)  # fmt: skip
def test_error_replies_raise_the_error_they_name(reply, error, match):
    with pytest.raises(error, match=match) as info:
        raise_for_reply(reply, address="tcp://h:1", command="configure")
    assert "tcp://h:1" in str(info.value)


def test_client_checks_its_arguments():
    with pytest.raises(ConfigError, match="tcp://"):
        ControlClient("localhost:5560")
    with pytest.raises(ConfigError, match="timeout"):
        ControlClient("tcp://127.0.0.1:5560", timeout=0)


# -- the device against the real service -------------------------------------------------------


def test_connect_fails_clearly_when_the_service_is_unreachable(RE):
    address = free_address()
    with pytest.raises(NotConnectedError, match=address), init_devices():
        n2i = N2IStream(address, timeout=0.2)
    n2i.close()


def test_signals_are_readable_described_and_subscribable(RE, n2i, loopback):
    reading = run(n2i.read())
    description = run(n2i.describe())
    assert set(reading) == set(description)
    for key in (
        "n2i-state", "n2i-last_published", "n2i-steps_denoised", "n2i-frames_received",
        "n2i-latency_median", "n2i-training-iteration", "n2i-training-loss", "n2i-training-eta",
    ):  # fmt: skip
        assert key in reading
    assert reading["n2i-state"]["value"] == "idle"
    assert math.isnan(reading["n2i-training-loss"]["value"])
    assert description["n2i-latency_median"]["units"] == "s"
    config = run(n2i.read_configuration())
    assert config["n2i-address"]["value"] == loopback.control_endpoint
    assert config["n2i-version"]["value"]
    assert "n2i-last_published" in n2i.hints["fields"]
    seen: list[str] = []

    def on_reading(reading: dict) -> None:
        seen.append(reading["n2i-state"]["value"])

    async def watch_state() -> None:
        n2i.state.subscribe(on_reading)
        await n2i.trigger()
        n2i.state.clear_sub(on_reading)

    loopback.service.configure(table("outside"))
    run(watch_state())
    assert seen == ["idle", "acquiring"]
    loopback.service.abort()


def test_kickoff_on_a_busy_service_fails_and_leaves_its_scan_alone(RE, n2i, loopback):
    loopback.service.configure(table("theirs"))

    async def start() -> None:
        await n2i.prepare(table("ours"))
        await n2i.kickoff()

    with pytest.raises(ServiceBusyError, match="busy with scan 'theirs' in state 'acquiring'"):
        run(start())
    status = loopback.service.status()
    assert status["scan_id"] == "theirs"
    assert status["state"] == "acquiring"
    loopback.service.abort()


def test_prepare_rejects_an_invalid_scan_before_sending_it(RE, n2i, loopback):
    bad = table("bad")
    bad["train_steps"] = SIM.steps
    with pytest.raises(ConfigError, match="train_steps"):
        call(lambda: n2i.prepare(bad))
    with pytest.raises(ConfigError, match="scan_id"):
        call(lambda: n2i.prepare({"rows": 4}))
    with pytest.raises(ServiceError, match="prepare"):
        call(n2i.kickoff)
    assert loopback.service.status()["state"] == "idle"


def test_training_done_reports_progress_and_complete_waits_for_the_last_step(RE, n2i, loopback):
    updates: list[dict] = []
    sub = loopback.subscribe()

    async def scan() -> tuple[Any, Any]:
        await n2i.prepare(table("live"))
        await n2i.kickoff()
        training = n2i.training.trigger()
        training.watch(lambda **update: updates.append(update))
        complete = n2i.complete()
        return training, complete

    training, complete = run(scan())
    assert run(n2i.state.get_value()) == "acquiring"
    assert stream_scan(loopback.data_endpoint, loopback.context) == SIM.n_frames
    call(lambda: training)
    call(lambda: complete)
    assert training.success
    assert complete.success
    assert updates, "no progress updates"
    assert updates[-1]["current"] == updates[-1]["target"] == 6
    assert updates[-1]["unit"] == "iterations"
    assert [u["current"] for u in updates] == sorted(u["current"] for u in updates)
    reading = run(n2i.read())
    assert reading["n2i-state"]["value"] == "done"
    assert reading["n2i-steps_denoised"]["value"] == SIM.steps
    assert reading["n2i-training-state"]["value"] == "done"
    assert reading["n2i-training-iteration"]["value"] == 6
    assert reading["n2i-frames_received"]["value"] == SIM.n_frames
    assert math.isfinite(reading["n2i-training-loss"]["value"])
    assert set(sub.of_kind("denoised")) == set(range(SIM.steps))


def test_an_aborted_scan_fails_complete_and_training_with_the_reason(RE, n2i, loopback):
    async def start() -> tuple[Any, Any]:
        await n2i.prepare(table("doomed"))
        await n2i.kickoff()
        return n2i.complete(), n2i.training_done()

    complete, training = run(start())
    loopback.service.abort()
    with pytest.raises(ServiceError, match="doomed ended: aborted"):
        call(lambda: complete)
    with pytest.raises((TrainingError, ServiceError), match="doomed"):
        call(lambda: training)


def test_stop_without_success_aborts_the_scan_this_device_started(RE, n2i, loopback):
    async def start() -> None:
        await n2i.prepare(table("mine"))
        await n2i.kickoff()

    run(start())
    run(n2i.stop(success=False))
    status = loopback.service.status()
    assert (status["scan_id"], status["state"], status["reason"]) == ("mine", "done", "aborted")


def test_a_service_that_goes_away_fails_waiting_statuses_by_address(RE, loopback):
    with init_devices():
        n2i = N2IStream(loopback.control_endpoint, poll_period=0.01, timeout=0.2, poll_failures=2)

    async def start() -> Any:
        await n2i.prepare(table("orphan"))
        await n2i.kickoff()
        return n2i.complete()

    try:
        complete = run(start())
        loopback.control.close()  # the control socket goes away mid-scan
        with pytest.raises(ServiceUnreachableError, match=loopback.control_endpoint):
            call(lambda: complete)
    finally:
        n2i.close()


def test_a_curve_protected_service_takes_a_device_with_keys_only(RE, tmp_path):
    from n2i_stream.io.curve import CurveServer, generate_keys

    keys = generate_keys(tmp_path / "keys", clients=("beamline",))
    server = CurveServer(keys.server_secret, authorized_keys=keys.authorized)
    try:
        with Loopback(context=server.context) as lb:
            with init_devices():
                n2i = N2IStream(
                    lb.control_endpoint,
                    server_key=str(keys.server_public),
                    client_key=str(keys.clients["beamline"]),
                )
            try:
                assert run(n2i.fetch_status())["state"] == "idle"
            finally:
                n2i.close()
            with pytest.raises(NotConnectedError, match="no reply"), init_devices():
                stranger = N2IStream(lb.control_endpoint, timeout=0.3)
            stranger.close()
    finally:
        server.close()
    with pytest.raises(ConfigError, match="both server_key and client_key"):
        N2IStream("tcp://127.0.0.1:5560", server_key=str(keys.server_public))
