"""The service's lifecycle under trouble: stop, abort, SIGTERM, diverging training, crashing
sinks, overload, disconnecting subscribers, frames with no scan. Nothing received is lost."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
import pytest
from polling import wait_until
from serving import serving

from n2i_stream.errors import ServiceError
from n2i_stream.io.memory_source import MemoryFrameSource
from n2i_stream.learn import TrainConfig, save_checkpoint, train_dynamic
from n2i_stream.service.control import ControlClient
from n2i_stream.service.loopback import Loopback
from n2i_stream.service.pipeline import PipelineOptions
from n2i_stream.service.service import N2IService
from n2i_stream.service.sinks import StepResult
from n2i_stream.sim.scan import DynamicScan, SimConfig, SimFrame
from n2i_stream.sim.stream import StreamStats, frame_messages, scan_config_for, stream

SIM = SimConfig(
    width=32, rows=4, steps=6, per_step=24, n_darks=4, n_flats=4, dynamics_start=3,
    supersample=1, seed=4,
)  # fmt: skip
K = 3
TINY = {"depth": 2, "width": 4, "crop": 16, "batch": 2}
PREFIX = SIM.n_darks + SIM.n_flats  # frames before the first projection


@pytest.fixture(scope="module")
def frames() -> list[SimFrame]:
    return list(DynamicScan(SIM).frames())


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> str:
    """A tiny model for this geometry, trained on the noiseless first steps."""
    scan = DynamicScan(SIM)
    steps = range(K)
    denoiser = train_dynamic(
        [scan.line_integrals(s).astype(np.float32) for s in steps],
        [scan.step_geometry(s) for s in steps],
        TrainConfig(**TINY, iterations=4, minutes=None, threads=1),
    )
    return str(save_checkpoint(denoiser, tmp_path_factory.mktemp("model") / "tiny.model.pt"))


class GatedSink:
    """A sink that waits at ``gate`` before taking results (a slow consumer), or fails once."""

    def __init__(self, *, fail_at: int | None = None) -> None:
        self.gate = threading.Event()
        self.gate.set()
        self.fail_at = fail_at
        self.seen: list[StepResult] = []

    def put(self, result: StepResult) -> None:
        if not self.gate.wait(60):
            raise AssertionError("the gate was never opened")
        if self.fail_at is not None and result.time_step == self.fail_at:
            self.fail_at = None
            raise OSError("disk full (injected)")
        self.seen.append(result)

    def close(self) -> None:
        self.gate.set()


@pytest.fixture
def gated(request) -> GatedSink:
    return GatedSink(**getattr(request, "param", {}))


@pytest.fixture
def loopback(request, gated) -> Iterator[Loopback]:
    options = getattr(request, "param", {})
    with Loopback(options=PipelineOptions(infer_threads=1, **options), sinks=[gated]) as lb:
        yield lb


def send(lb: Loopback, frames, fmt: str = "n2i") -> StreamStats:
    stats = StreamStats()
    stream(frame_messages(frames, fmt, stats=stats), lb.data_endpoint, context=lb.context,
           stats=stats)  # fmt: skip
    return stats


def received_all(lb: Loopback, count: int) -> None:
    wait_until(lambda: (c := lb.source.counters()).received + c.bad >= count)


def scan(tmp_path: Path, **fields) -> dict:
    fields.setdefault("train_steps", K)
    fields.setdefault("output", str(tmp_path / "results.h5"))
    fields.setdefault("training", TINY)
    return scan_config_for(SIM, **fields)


def results_file(path: Path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as f:  # not SWMR: only opens once the writer has closed it
        return {name: f[f"/reconstruction/{name}"][()] for name in
                ("time_step", "fbp", "denoised", "missing_frames")}  # fmt: skip


def test_stop_mid_scan_drains_everything_received(loopback, frames, model, tmp_path):
    service = loopback.service
    service.configure(scan(tmp_path, model=model))
    part = frames[: PREFIX + 3 * SIM.per_step + SIM.per_step // 2]  # 3.5 steps
    send(loopback, part)
    received_all(loopback, len(part))
    assert service.stop(timeout=60) == "done"
    status = service.status()
    assert status["reason"] == "stopped"
    assert status["steps"]["received"] == 4
    assert status["steps"]["incomplete"] == 1
    f = results_file(tmp_path / "results.h5")
    assert sorted(f["time_step"].tolist()) == [0, 1, 2, 3]
    missing = dict(zip(f["time_step"].tolist(), f["missing_frames"].tolist(), strict=True))
    assert missing == {0: 0, 1: 0, 2: 0, 3: SIM.per_step // 2}
    assert np.isfinite(f["denoised"]).all()


def test_a_scan_whose_last_frames_never_come_ends_after_its_idle_time(loopback, frames, tmp_path):
    service = loopback.service
    service.configure(scan(tmp_path, train_iterations=4, end_after_idle_s=0.5))
    assert frames[-1].kind == "projection"
    send(loopback, frames[:-3])  # the detector lost the last three projections
    assert service.wait_for({"done", "failed"}, timeout=60) == "done"
    status = service.status()
    assert status["reason"] == "no frames for 0.5 s"
    assert (status["steps"]["received"], status["steps"]["incomplete"]) == (SIM.steps, 1)
    assert status["training"]["state"] == "done"  # ended like a complete scan, not stopped
    f = results_file(tmp_path / "results.h5")
    missing = dict(zip(f["time_step"].tolist(), f["missing_frames"].tolist(), strict=True))
    assert missing == {s: 3 if s == SIM.steps - 1 else 0 for s in range(SIM.steps)}
    assert np.isfinite(f["denoised"]).all()


def test_stop_during_training_interrupts_it_and_publishes_fbp(loopback, frames, tmp_path):
    service = loopback.service
    service.configure(scan(tmp_path, train_minutes=10.0))
    send(loopback, frames[: PREFIX + K * SIM.per_step])
    service.wait_for({"training"}, timeout=30)
    assert service.stop(timeout=30) == "done"
    status = service.status()
    assert status["training"]["state"] == "failed"
    assert "interrupted" in status["training"]["reason"]
    assert status["steps"]["published_fbp"] == K
    assert status["steps"]["published_denoised"] == 0
    f = results_file(tmp_path / "results.h5")
    assert np.isfinite(f["fbp"]).all()
    assert np.isnan(f["denoised"]).all()


def test_diverging_training_leaves_the_scan_streaming_fbp_with_the_reason(
    loopback, frames, tmp_path
):
    service = loopback.service
    changes: list[tuple[str, str | None]] = []
    service.add_state_listener(lambda state, reason: changes.append((state, reason)))
    service.configure(scan(tmp_path, training={**TINY, "lr": 1e9}, train_iterations=50))
    send(loopback, frames)
    assert service.wait_for({"done", "failed"}, timeout=60) == "done"
    status = service.status()
    assert status["training"]["state"] == "failed"
    assert "diverged" in status["training"]["reason"]
    streaming = [reason for state, reason in changes if state == "streaming"]
    assert len(streaming) == 1
    assert "training failed" in streaming[0]
    assert "FBP only" in streaming[0]
    assert status["steps"]["published_fbp"] == SIM.steps
    assert status["steps"]["published_denoised"] == 0


def test_abort_drops_queued_work_and_leaves_a_valid_file(loopback, gated, frames, model, tmp_path):
    service = loopback.service
    gated.gate.clear()  # results pile up behind a slow sink
    service.configure(scan(tmp_path, model=model))
    sender = threading.Thread(target=send, args=(loopback, frames))
    sender.start()
    wait_until(lambda: service.status()["steps"]["received"] >= 2)
    service.abort(wait=False)
    gated.gate.set()  # the sink call in progress finishes; nothing queued follows it
    assert service.wait_for({"done", "failed"}, timeout=30) == "done"
    assert service.status()["reason"] == "aborted"
    sender.join(60)
    f = results_file(tmp_path / "results.h5")  # readable: closed properly
    assert len(f["time_step"]) < SIM.steps
    (tmp_path / "next").mkdir()
    service.configure(scan(tmp_path / "next", model=model, scan_id="after-abort"))
    send(loopback, frames)
    assert service.wait_for({"done", "failed"}, timeout=60) == "done"


@pytest.mark.parametrize("gated", [{"fail_at": 2}], indirect=True)
def test_a_crashing_sink_fails_the_scan_with_the_reason_and_the_next_scan_runs(
    loopback, frames, model, tmp_path
):
    service = loopback.service
    service.configure(scan(tmp_path, model=model))
    send(loopback, frames)
    assert service.wait_for({"done", "failed"}, timeout=60) == "failed"
    assert "result sink failed" in service.status()["reason"]
    assert "disk full" in service.status()["reason"]
    results_file(tmp_path / "results.h5")  # closed and readable
    (tmp_path / "next").mkdir()
    service.configure(scan(tmp_path / "next", model=model, scan_id="after-failure"))
    send(loopback, frames)
    assert service.wait_for({"done", "failed"}, timeout=60) == "done"


@pytest.mark.parametrize(
    "loopback", [{"overload": "drop_oldest", "queue_steps": 1, "publish_queue": 1}], indirect=True
)
def test_drop_oldest_drops_unprocessed_steps_and_counts_them(
    loopback, gated, frames, model, tmp_path
):
    service = loopback.service
    gated.gate.clear()
    service.configure(scan(tmp_path, model=model))
    send(loopback, frames)
    received_all(loopback, len(frames))
    wait_until(lambda: service.status()["steps"]["received"] == SIM.steps)
    gated.gate.set()
    assert service.wait_for({"done", "failed"}, timeout=60) == "done"
    steps = service.status()["steps"]
    assert steps["dropped_overload"] > 0
    assert steps["published_fbp"] == SIM.steps - steps["dropped_overload"]
    published = {r.time_step for r in gated.seen if r.kind == "fbp"}
    assert max(published) == SIM.steps - 1  # the newest steps survive, the oldest went


@pytest.mark.parametrize("loopback", [{"queue_steps": 1, "publish_queue": 1}], indirect=True)
def test_block_holds_the_stream_back_and_loses_nothing(loopback, gated, frames, model, tmp_path):
    service = loopback.service
    gated.gate.clear()
    service.configure(scan(tmp_path, model=model))
    sender = threading.Thread(target=send, args=(loopback, frames))
    sender.start()
    wait_until(lambda: service.run.assembler.counters().steps_emitted >= 3)
    gated.gate.set()
    sender.join(60)
    assert service.wait_for({"done", "failed"}, timeout=60) == "done"
    steps = service.status()["steps"]
    assert steps["dropped_overload"] == 0
    assert steps["published_fbp"] == steps["published_denoised"] == SIM.steps


def test_a_subscriber_that_disconnects_does_not_disturb_the_others(
    loopback, frames, model, tmp_path
):
    leaving, staying = loopback.subscribe(), loopback.subscribe()
    loopback.service.configure(scan(tmp_path, model=model, publish=[1, 3]))
    sender = threading.Thread(target=send, args=(loopback, frames))
    sender.start()
    leaving.wait_for(lambda r: len(r) >= 1, timeout=30)
    leaving.close()
    sender.join(60)
    assert loopback.service.wait_for({"done", "failed"}, timeout=60) == "done"
    # two slices per step and kind
    staying.wait_for(lambda r: len(r) == 2 * 2 * SIM.steps, timeout=30)
    assert {(h.time_step, h.kind, h.slice_axis, h.slice_index) for h in staying.headers()} == {
        (s, k, "z", z) for s in range(SIM.steps) for k in ("fbp", "denoised") for z in (1, 3)
    }
    volumes = {r.time_step: r.volume for r in loopback.memory.results if r.kind == "denoised"}
    for h, array in staying.results:
        if h.kind == "denoised":
            np.testing.assert_array_equal(array, volumes[h.time_step][h.slice_index])


def test_frames_without_a_scan_are_counted_and_dropped(loopback, frames):
    send(loopback, frames[:10])
    wait_until(lambda: loopback.service.status()["frames_without_scan"] == 10)
    assert loopback.service.state == "idle"


def test_step_buffers_stay_bounded(loopback, frames, model, tmp_path):
    loopback.service.configure(scan(tmp_path, model=model, output=None))
    send(loopback, frames)
    assert loopback.service.wait_for({"done", "failed"}, timeout=60) == "done"
    c = loopback.service.run.assembler.counters()
    assert c.step_buffers_in_use == 0  # every step gave its buffer back
    # Beyond the pool, at most the steps queue plus the one step the worker is correcting can
    # hold a buffer (the worker releases it right after correction); how many of those are
    # needed depends on how far the worker falls behind, which is timing, not design.
    options, assembly = loopback.service.options, loopback.service.run.scan.assembly
    assert c.step_buffers_allocated <= options.queue_steps + 1 - assembly.spare_buffers
    steps = loopback.service.status()["steps"]
    assert (steps["buffers_in_use"], steps["buffers_allocated"]) == (0, c.step_buffers_allocated)


def test_sigterm_mid_scan_closes_the_file_with_every_received_step(frames, tmp_path):
    """``n2i-stream serve`` as a process: SIGTERM while training runs drains and exits 0."""
    output = tmp_path / "results.h5"
    with serving(
        "--data", "tcp://127.0.0.1:*", "--control", "tcp://127.0.0.1:*",
        "--results", "tcp://127.0.0.1:*",
    ) as server:  # fmt: skip
        with ControlClient(server.ready["control"]) as client:
            client.call("configure", scan=scan(tmp_path, train_minutes=10.0, output=str(output)))
            part = frames[: PREFIX + K * SIM.per_step + 5]
            stream(frame_messages(part, "n2i"), server.ready["data"])
            wait_until(lambda: client.call("status")["status"]["counters"]["received"] == len(part))
            wait_until(lambda: client.call("status")["status"]["state"] == "training")
            wait_until(lambda: client.call("status")["status"]["steps"]["published_fbp"] == K)
            # the file is readable from this process while the service process writes it
            with h5py.File(output, "r", libver="latest", swmr=True) as live:
                assert sorted(live["/reconstruction/time_step"][()].tolist()) == list(range(K))
                assert np.isfinite(live["/reconstruction/fbp"][()]).all()
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(60) == 0
    f = results_file(output)
    assert sorted(f["time_step"].tolist()) == [0, 1, 2, 3]
    missing = dict(zip(f["time_step"].tolist(), f["missing_frames"].tolist(), strict=True))
    assert missing[3] == SIM.per_step - 5
    assert np.isfinite(f["fbp"]).all()


class DyingSource(MemoryFrameSource):
    """An in-memory source whose receive thread 'dies' when ``die`` is set."""

    def __init__(self) -> None:
        super().__init__(buffers=8, buffer_bytes=1 << 12)
        self.die = threading.Event()

    def recv(self, timeout: float | None = None):
        if self.die.is_set():
            raise ServiceError("the frame receive thread failed: injected")
        return super().recv(timeout)


def test_a_dead_frame_source_fails_the_scan_with_the_reason(frames, tmp_path):
    source = DyingSource()
    service = N2IService(source, options=PipelineOptions(infer_threads=1))
    with service:
        service.configure(scan(tmp_path, train_minutes=10.0))
        for f in frames[: PREFIX + 30]:
            assert source.push(f.data, frame_id=f.frame, kind=f.kind, angle=f.angle, timeout=10)
        wait_until(lambda: service.status()["steps"]["published_fbp"] == 1)
        source.die.set()
        assert service.wait_for({"failed"}, timeout=30) == "failed"
        assert "frame source failed" in service.status()["reason"]
        with pytest.raises(ServiceError, match="cannot take scans"):
            service.configure(scan(tmp_path, scan_id="again", output=None))
    f = results_file(tmp_path / "results.h5")
    assert f["time_step"].tolist() == [0]  # the complete step, written before the failure
