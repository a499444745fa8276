"""The simulated detector on the wire, its injected faults, and replay of Data Exchange files."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import numpy as np
import pytest
import zmq

from n2i_stream.cli import main
from n2i_stream.cli.replay import plan_replay
from n2i_stream.io.dxchange_writer import DataExchangeWriter
from n2i_stream.offline import ReconstructConfig, reconstruct_file
from n2i_stream.service.loopback import Loopback
from n2i_stream.service.scan_config import ScanConfig
from n2i_stream.sim.scan import DynamicScan, SimConfig
from n2i_stream.sim.stream import (
    StreamFaults,
    StreamStats,
    frame_messages,
    scan_config_for,
    send_messages,
)
from n2i_stream.wire import FrameFormatError, parse_frame_header

SIM = SimConfig(width=16, rows=2, steps=4, per_step=12, n_darks=2, n_flats=2, n_flats_end=2,
                supersample=1, dynamics_start=2)  # fmt: skip


@pytest.fixture(scope="module")
def frames():
    return list(DynamicScan(SIM).frames())


@pytest.fixture
def ctx() -> Iterator[zmq.Context]:
    context = zmq.Context()
    yield context
    context.term()  # hangs (the test times out) if a socket was left open


@pytest.fixture
def pull(ctx) -> Iterator[tuple[zmq.Socket, str]]:
    sock = ctx.socket(zmq.PULL)
    sock.linger = 0
    sock.bind("tcp://127.0.0.1:*")
    yield sock, sock.getsockopt_string(zmq.LAST_ENDPOINT)
    sock.close()


def drain(sock: zmq.Socket, count: int) -> list[list[bytes]]:
    out = []
    while len(out) < count and sock.poll(10_000):
        out.append(sock.recv_multipart())
    return out


def headers(messages):
    return [parse_frame_header(m[0]) for m, _ in messages]


def test_each_format_carries_what_its_detector_carries(frames):
    n2i = headers(frame_messages(frames, "n2i"))
    array = headers(frame_messages(frames, "array-1.0"))
    giga = headers(frame_messages(frames, "gigafrost"))
    assert [h.frame_id for h in n2i] == list(range(SIM.n_frames))
    assert [h.kind for h in n2i] == [f.kind for f in frames] == [h.kind for h in giga]
    assert [h.angle for h in n2i] == [f.angle for f in frames]
    assert all(h.kind is None and h.angle is None for h in array)
    assert all(h.angle is None for h in giga)


def test_faults_drop_only_projections_and_report_them(frames):
    stats = StreamStats()
    hs = headers(frame_messages(frames, "n2i", StreamFaults(drop=0.2, seed=1), stats=stats))
    sent = {h.frame_id for h in hs}
    assert stats.dropped_ids
    assert sent.isdisjoint(stats.dropped_ids)
    assert sent | set(stats.dropped_ids) == set(range(SIM.n_frames))
    assert all(frames[i].kind == "projection" for i in stats.dropped_ids)


def test_faults_duplicate_shuffle_and_wrap_ids(frames):
    stats = StreamStats()
    faults = StreamFaults(duplicate=0.2, shuffle=6, id_offset=65530, id_bits=16, seed=2)
    hs = headers(frame_messages(frames, "array-1.0", faults, stats=stats))
    ids = [h.frame_id for h in hs]
    assert len(ids) == SIM.n_frames + stats.duplicated
    assert stats.duplicated > 0
    assert max(ids) < 1 << 16
    unwrapped = sorted({(i - 65530) % (1 << 16) for i in ids})
    assert unwrapped == list(range(SIM.n_frames))
    assert ids != sorted(ids)  # shuffled (and wrapped)


def test_bad_messages_are_rejected_by_the_parser(frames):
    stats = StreamStats()
    out = list(frame_messages(frames, "n2i", StreamFaults(bad_messages=5, seed=3), stats=stats))
    bad = [m for m, is_frame in out if not is_frame]
    assert len(bad) == stats.bad == 5
    rejected = 0
    for m in bad:
        try:
            h = parse_frame_header(m[0])
            if len(m) != 2 or len(m[1]) != h.nbytes or h.shape != (SIM.rows, SIM.width):
                rejected += 1
        except FrameFormatError:
            rejected += 1
    assert rejected == 5


@pytest.mark.parametrize("fmt", ["n2i", "array-1.0", "gigafrost"])
def test_scan_config_for_a_simulation_is_a_valid_service_scan(fmt):
    config = ScanConfig.from_mapping(
        scan_config_for(SIM, faults=StreamFaults(id_offset=100, id_bits=16), train_steps=2)
    )
    assert config.dark_ids == ((100, 2),)
    assert config.flat_ids == ((102, 2), (104 + SIM.n_projections, 2))
    assert config.projection_ids == ((104, SIM.n_projections),)
    assert len(config.angles) == SIM.n_projections


def test_send_messages_keeps_the_frame_rate(frames, pull):
    sock, endpoint = pull
    push = sock.context.socket(zmq.PUSH)
    push.linger = 1000
    push.connect(endpoint)
    try:
        t0 = time.monotonic()
        stats = send_messages(push, frame_messages(frames[:21], "n2i"), rate=200.0)
        elapsed = time.monotonic() - t0
    finally:
        push.close()
    assert stats.frames == 21
    assert elapsed >= 20 / 200.0
    assert len(drain(sock, 21)) == 21


def test_simulate_streams_and_writes_the_scan_configuration(pull, tmp_path):
    sock, endpoint = pull
    config_path = tmp_path / "scan.json"
    argv = ["simulate", "--stream", endpoint, "--format", "array-1.0", "--rate", "0",
            "--width", "16", "--rows", "2", "--steps", "3", "--per-step", "8", "--darks", "2",
            "--flats", "2", "--dynamics-start", "2", "--scan-config", str(config_path),
            "--scan-extra", '{"train_steps": 2, "output": "x.h5"}']  # fmt: skip
    assert main(argv) == 0
    messages = drain(sock, 2 + 2 + 24)
    assert len(messages) == 28
    config = ScanConfig.from_mapping(json.loads(config_path.read_text()))
    assert (config.steps, config.frames_per_step, config.output) == (3, 8, "x.h5")


def test_simulate_needs_out_or_stream(capsys):
    assert main(["simulate"]) == 2
    assert "--out FILE" in capsys.readouterr().err


def write_scan(path, frames) -> None:
    with DataExchangeWriter(path, rows=SIM.rows, cols=SIM.width, frames_per_step=SIM.per_step) as w:
        for f in frames:
            w.write_frame(f)


def test_replay_sends_frames_in_acquisition_order(frames, tmp_path):
    write_scan(tmp_path / "scan.h5", frames)
    plan = plan_replay(tmp_path / "scan.h5")
    assert [fid for _, _, fid in plan.order] == list(range(SIM.n_frames))
    assert [f.kind for f in plan.frames()] == [f.kind for f in frames]
    config = ScanConfig.from_mapping(plan.scan_config(train_steps=2))
    assert config.flat_ids == ((2, 2), (4 + SIM.n_projections, 2))


def test_replay_feeds_the_service_the_same_scan_the_file_holds(frames, tmp_path):
    # Without flats after the scan: live, a projection is corrected with the references taken
    # before it; offline, references taken later are interpolated in too.
    frames = [f for f in frames if not (f.kind == "flat" and f.frame >= 4)]
    scan_path = tmp_path / "scan.h5"
    write_scan(scan_path, frames)

    offline = tmp_path / "offline.h5"
    reconstruct_file(ReconstructConfig(input=str(scan_path), output=str(offline)))
    live = tmp_path / "live.h5"
    extra = json.dumps({"train_steps": 2, "output": str(live), "train_iterations": 1,
                        "training": {"depth": 2, "width": 4, "crop": 8, "batch": 2}})  # fmt: skip
    with Loopback() as lb:
        argv = ["replay", str(scan_path), "--stream", lb.data_endpoint, "--format", "gigafrost",
                "--rate", "0", "--control", lb.control_endpoint, "--scan-extra", extra]  # fmt: skip
        assert main(argv) == 0
        assert lb.service.wait_for({"done", "failed"}, timeout=60) == "done"
    import h5py

    with h5py.File(offline, "r") as a, h5py.File(live, "r") as b:
        order = np.argsort(b["/reconstruction/time_step"][()])
        np.testing.assert_allclose(
            b["/reconstruction/fbp"][()][order], a["/reconstruction/fbp"][()], rtol=1e-4, atol=1e-5
        )
