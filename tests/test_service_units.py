"""The service's parts on their own: queues, states, scan configuration, sinks."""

from __future__ import annotations

import threading

import h5py
import numpy as np
import pytest
import zmq

from n2i_stream.errors import ConfigError, ServiceError
from n2i_stream.io.zmq_sink import ZmqResultSink, ZmqSinkConfig
from n2i_stream.service.pipeline import PipelineOptions
from n2i_stream.service.queues import StageQueue
from n2i_stream.service.scan_config import ScanConfig
from n2i_stream.service.sinks import MemorySink, QueuedSink, ResultsFileSink, StepResult
from n2i_stream.service.state import StateMachine
from n2i_stream.wire import decode_recon

BASE = {"scan_id": "s", "rows": 4, "cols": 8, "frames_per_step": 6, "steps": 5, "angle_step": 30.0}


def result(step: int, kind: str = "fbp", missing: int = 0, slices=None) -> StepResult:
    volume = np.full((4, 8, 8), step, np.float32) + np.arange(4, dtype=np.float32)[:, None, None]
    return StepResult(step, kind, volume, missing > 0, missing, None, "s", slices)


# -- queues ---------------------------------------------------------------------------------------


def test_drop_oldest_drops_items_never_markers():
    dropped = []
    q = StageQueue(2, "drop_oldest", on_drop=dropped.append)
    q.put(1)
    q.put_marker("m")
    q.put(2)
    q.put(3)
    assert (dropped, q.dropped, len(q)) == ([1], 1, 2)
    assert [q.get(0), q.get(0), q.get(0)] == ["m", 2, 3]
    with pytest.raises(TimeoutError):
        q.get(0.01)


def test_block_waits_for_the_consumer_and_cancel_releases_it():
    q = StageQueue(1, "block")
    q.put("a")
    accepted = []
    producer = threading.Thread(target=lambda: accepted.append(q.put("b")))
    producer.start()
    assert q.get(5) == "a"
    producer.join(5)
    assert accepted == [True]
    assert q.get(0) == "b"
    q.put("c")
    blocked = threading.Thread(target=lambda: accepted.append(q.put("d")))
    blocked.start()
    released = []
    q2 = StageQueue(1, on_drop=released.append)
    q2.put("x")
    q.cancel()
    blocked.join(5)
    assert accepted == [True, False]
    assert q.discarded == 2  # "c" queued and "d" offered after the cancel
    q.put_marker("end")
    assert q.get(0) == "end"
    q2.cancel()
    assert released == ["x"]


def test_stage_queue_rejects_bad_settings():
    with pytest.raises(ConfigError, match="maxsize"):
        StageQueue(0)
    with pytest.raises(ConfigError, match="overload"):
        StageQueue(1, "newest")  # type: ignore[arg-type]


# -- states ---------------------------------------------------------------------------------------


def test_state_machine_allows_only_the_documented_transitions():
    m = StateMachine()
    seen = []
    m.add_listener(lambda state, reason: seen.append((state, reason)))
    with pytest.raises(ServiceError, match="from state 'idle' to 'streaming'"):
        m.move("streaming")
    assert m.move("acquiring")
    assert not m.move("training", only_from={"streaming"})
    assert m.move("streaming", "training failed")
    m.set_reason("still FBP only")
    assert m.snapshot() == ("streaming", "still FBP only")
    assert m.move("done")
    assert m.wait_for({"done"}, timeout=0) == "done"
    with pytest.raises(ServiceError, match=r"after 0\.01 s"):
        m.wait_for({"idle"}, timeout=0.01)
    assert seen == [("acquiring", None), ("streaming", "training failed"), ("done", None)]


# -- scan configuration ---------------------------------------------------------------------------


def test_scan_config_builds_the_assembly_and_reports_every_problem_at_once():
    scan = ScanConfig.from_mapping({**BASE, "train_steps": 2, "publish": [0, 3], "n": 6})
    assert scan.assembly.n_projections == 30
    assert scan.volume_shape == (4, 6, 6)
    assert scan.slices == (0, 3)
    with pytest.raises(ConfigError) as info:
        ScanConfig.from_mapping(
            {**BASE, "train_steps": 5, "publish": [4], "filter": "box", "train_minutes": 0,
             "oversample": 0, "keep_low": -1.0, "end_after_idle_s": 0}
        )  # fmt: skip
    message = str(info.value)
    for part in ("train_steps", "publish", "filter", "train_minutes"):
        assert part in message
    assert "oversample: expected 1, 2, 3 or 4, got 0" in message
    assert "keep_low: expected >= 0 pixels (0: off), got -1.0" in message
    assert "end_after_idle_s: expected > 0 seconds or null, got 0" in message
    with pytest.raises(ConfigError, match="'center_offset': expected a number"):
        ScanConfig.from_mapping({**BASE, "center_offset": "left"})
    with pytest.raises(ConfigError, match="unknown key 'angle'"):
        ScanConfig.from_mapping({**BASE, "angle": 1.0})
    with pytest.raises(ConfigError, match="angles: expected one per projection"):
        ScanConfig.from_mapping({**{k: v for k, v in BASE.items() if k != "angle_step"},
                                 "angles": [0.0, 1.0]})  # fmt: skip
    with pytest.raises(ConfigError, match="lr"):
        ScanConfig.from_mapping({**BASE, "training": {"lr": -1}})
    assert ScanConfig.from_mapping({**BASE, "center_offset": "auto"}).center_offset == "auto"


def test_pipeline_options_are_checked():
    with pytest.raises(ConfigError, match="overload"):
        PipelineOptions(overload="never")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="queue_steps"):
        PipelineOptions(queue_steps=0)


# -- sinks ----------------------------------------------------------------------------------------


def test_memory_sink_waits_for_results():
    sink = MemorySink()
    sink.put(result(0))
    assert sink.wait_for(lambda r: len(r) == 1, timeout=0)[0].time_step == 0
    with pytest.raises(ServiceError, match="1 results so far"):
        sink.wait_for(lambda r: len(r) == 2, timeout=0.01)


def test_queued_sink_drops_the_oldest_when_the_wrapped_sink_is_slow():
    gate = threading.Event()

    class Slow(MemorySink):
        def put(self, r: StepResult) -> None:
            gate.wait(10)
            super().put(r)

    slow = Slow()
    sink = QueuedSink(slow, maxsize=2)
    for s in range(6):
        sink.put(result(s))
    gate.set()
    sink.close()
    kept = [r.time_step for r in slow.results]
    assert kept[-1] == 5
    assert sink.dropped == 6 - len(kept)
    assert sink.dropped > 0
    assert slow.closed


def test_results_file_is_readable_while_written_and_flags_missing_frames(tmp_path):
    path = tmp_path / "r.h5"
    sink = ResultsFileSink(path, rows=4, n=8, config={"scan_id": "s"}, attrs={"scan_id": "s"})
    sink.put(result(3))
    sink.put(result(4, missing=2))
    sink.put(result(3, "denoised"))
    sink.put_losses([0.5, 0.25])
    sink.put_center(1.5)
    with h5py.File(path, "r", libver="latest", swmr=True) as f:  # another reader, mid-scan
        assert f["/reconstruction/time_step"][()].tolist() == [3, 4]
        assert f["/reconstruction/missing_frames"][()].tolist() == [0, 2]
        assert f["/reconstruction/center_offset"][()] == 1.5
        assert f["/training/loss"][()].tolist() == [0.5, 0.25]
        assert np.isnan(f["/reconstruction/denoised"][1]).all()
        np.testing.assert_array_equal(f["/reconstruction/denoised"][0], result(3).volume)
    sink.close()
    assert sink.closed


def test_zmq_sink_publishes_volumes_or_requested_slices():
    ctx = zmq.Context()
    sink = ZmqResultSink(ZmqSinkConfig(endpoint="tcp://127.0.0.1:*"), context=ctx)
    sub = ctx.socket(zmq.SUB)
    sub.linger = 0
    try:
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(sink.endpoint)
        sink.wait_for_subscribers(1, timeout=10)
        sink.put(result(2, missing=1))
        sink.put(result(2, "denoised", slices=(1, 3)))
        messages = [decode_recon(sub.recv_multipart()) for _ in range(3)]
        (h0, v0), (h1, _), (h2, v2) = messages
        assert (h0.kind, h0.slice_axis, h0.complete, h0.missing_frames) == ("fbp", None, False, 1)
        np.testing.assert_array_equal(v0, result(2).volume)
        assert [(h.slice_axis, h.slice_index) for h in (h1, h2)] == [("z", 1), ("z", 3)]
        np.testing.assert_array_equal(v2, result(2).volume[3])
        assert sink.sent == 3
    finally:
        sub.close()
        sink.close()
        ctx.term()
    lonely = ZmqResultSink(ZmqSinkConfig(endpoint="tcp://127.0.0.1:*"))
    try:
        with pytest.raises(ServiceError, match="0 of 1 subscribers"):
            lonely.wait_for_subscribers(1, timeout=0.05)
    finally:
        lonely.close()
