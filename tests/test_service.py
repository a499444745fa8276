"""The live service end to end on loopback: a simulated detector streams, results arrive on a SUB
socket and in the HDF5 file, and equal what the offline path computes from the same frames."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
import pytest
from polling import wait_until

from n2i_stream.core.fbp import fbp
from n2i_stream.io.dxchange import DataExchangeFile
from n2i_stream.io.dxchange_writer import DataExchangeWriter
from n2i_stream.learn import TrainConfig, save_checkpoint, train_dynamic
from n2i_stream.offline import N2IConfig, ReconstructConfig, ScanSteps, reconstruct_file
from n2i_stream.service.loopback import Loopback
from n2i_stream.service.pipeline import PipelineOptions
from n2i_stream.sim.scan import DynamicScan, SimConfig, SimFrame
from n2i_stream.sim.stream import StreamFaults, StreamStats, frame_messages, scan_config_for, stream

SIM = SimConfig(
    width=32, rows=4, steps=6, per_step=24, n_darks=4, n_flats=4, dynamics_start=3,
    supersample=1, seed=3,
)  # fmt: skip
K = 3
TINY = {"depth": 2, "width": 4, "crop": 16, "batch": 2}
TOL = {"rtol": 1e-4, "atol": 1e-5}


@pytest.fixture(scope="module")
def frames() -> list[SimFrame]:
    return list(DynamicScan(SIM).frames())


@pytest.fixture(scope="module")
def offline(frames, tmp_path_factory) -> dict:
    """``n2i-stream reconstruct --method n2i --model`` on the same frames (a Data Exchange file),
    with a tiny model trained on the first steps; its FBP and denoised steps."""
    root = tmp_path_factory.mktemp("offline")
    scan_path = root / "scan.h5"
    with DataExchangeWriter(
        scan_path, rows=SIM.rows, cols=SIM.width, frames_per_step=SIM.per_step
    ) as writer:
        for f in frames:
            writer.write_frame(f)
    config = ReconstructConfig(input=str(scan_path), output=str(root / "unused.h5"))
    with DataExchangeFile(scan_path) as scan:
        steps = ScanSteps(scan, config)
        line_integrals = [steps.projections(s)[0] for s in range(SIM.steps)]
        geometries = [steps.geometry(s, 0.0) for s in range(SIM.steps)]
    model = train_dynamic(
        line_integrals[:K],
        geometries[:K],
        TrainConfig(**TINY, iterations=8, minutes=None, threads=1),
        n=SIM.width,
    )
    model_path = save_checkpoint(model, root / "tiny.model.pt")
    output = root / "offline.h5"
    reconstruct_file(
        ReconstructConfig(
            input=str(scan_path),
            output=str(output),
            method="n2i",
            n2i=N2IConfig(model=str(model_path)),
        )
    )
    with h5py.File(output, "r") as f:
        assert f["/reconstruction/time_step"][()].tolist() == list(range(SIM.steps))
        fbps, denoised = f["/reconstruction/fbp"][()], f["/reconstruction/denoised"][()]
    return {
        "fbp": list(fbps),
        "denoised": list(denoised),
        "model": str(model_path),
        "line_integrals": line_integrals,
        "geometries": geometries,
    }


@pytest.fixture
def loopback() -> Iterator[Loopback]:
    with Loopback(options=PipelineOptions(infer_threads=1)) as lb:
        yield lb


def send(lb: Loopback, frames, fmt: str = "n2i", faults: StreamFaults | None = None):
    stats = StreamStats()
    stream(frame_messages(frames, fmt, faults, stats=stats), lb.data_endpoint, context=lb.context,
           stats=stats)  # fmt: skip
    return stats


def scan(tmp_path: Path, **fields) -> dict:
    fields.setdefault("train_steps", K)
    fields.setdefault("output", str(tmp_path / "results.h5"))
    fields.setdefault("training", TINY)
    return scan_config_for(SIM, **fields)


def read_results(path: str | Path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r", libver="latest", swmr=True) as f:
        return {
            "time_step": f["/reconstruction/time_step"][()],
            "fbp": f["/reconstruction/fbp"][()],
            "denoised": f["/reconstruction/denoised"][()],
            "missing_frames": f["/reconstruction/missing_frames"][()],
            "loss": f["/training/loss"][()],
            "center_offset": f["/reconstruction/center_offset"][()],
        }


def by_step(results: dict[str, np.ndarray], kind: str) -> dict[int, np.ndarray]:
    return {int(s): results[kind][i] for i, s in enumerate(results["time_step"])}


def test_end_to_end_trains_in_the_background_and_publishes_every_step(loopback, frames, tmp_path):
    sub = loopback.subscribe()
    service = loopback.service
    service.configure(scan(tmp_path, train_iterations=6, scan_id="e2e"))
    send(loopback, frames, "array-1.0")
    assert service.wait_for({"done", "failed"}, timeout=60) == "done"
    status = service.status()
    assert status["reason"] is None
    expected = {
        "total": SIM.steps, "received": SIM.steps, "incomplete": 0,
        "published_fbp": SIM.steps, "published_denoised": SIM.steps,
        "backlog": 0, "dropped_overload": 0, "backlog_dropped": 0, "failed": 0,
    }  # fmt: skip
    assert {k: status["steps"][k] for k in expected} == expected
    assert status["training"]["state"] == "done"
    assert status["training"]["iteration"] == 6
    assert Path(status["training"]["model"]).exists()
    assert status["counters"]["received"] == len(frames)
    assert status["latency_s"]["median"] is not None

    all_steps = set(range(SIM.steps))
    sub.wait_for(lambda r: len(r) == 2 * SIM.steps, timeout=30)
    assert set(sub.of_kind("fbp")) == set(sub.of_kind("denoised")) == all_steps
    assert all(h.scan_id == "e2e" and h.complete for h in sub.headers())
    file = read_results(tmp_path / "results.h5")
    assert set(file["time_step"].tolist()) == all_steps
    assert np.all(file["missing_frames"] == 0)
    assert file["loss"].size == 6
    assert np.isfinite(file["loss"]).all()
    assert file["center_offset"] == 0.0
    for s, volume in sub.of_kind("denoised").items():
        np.testing.assert_array_equal(by_step(file, "denoised")[s], volume)
    # the FBP of the steps trained on was published before training ended, as FBP only
    first = [(h.time_step, h.kind) for h in sub.headers()][:K]
    assert first == [(s, "fbp") for s in range(K)]


@pytest.mark.parametrize("fmt", ["n2i", "array-1.0", "gigafrost"])
def test_denoised_steps_equal_the_offline_path_with_the_same_model(
    loopback, frames, offline, tmp_path, fmt
):
    sub = loopback.subscribe()
    service = loopback.service
    service.configure(scan(tmp_path, model=offline["model"], scan_id=fmt))
    assert service.state == "streaming"
    send(loopback, frames, fmt)
    assert service.wait_for({"done", "failed"}, timeout=60) == "done"
    assert service.status()["training"]["state"] == "skipped"
    sub.wait_for(lambda r: len(r) == 2 * SIM.steps, timeout=30)
    file = read_results(tmp_path / "results.h5")
    for s in range(SIM.steps):
        np.testing.assert_allclose(sub.of_kind("fbp")[s], offline["fbp"][s], **TOL)
        np.testing.assert_allclose(sub.of_kind("denoised")[s], offline["denoised"][s], **TOL)
        np.testing.assert_allclose(by_step(file, "denoised")[s], offline["denoised"][s], **TOL)
    # every step was denoised live: its latency ends at the denoised result
    assert len(loopback.service.run.latencies()) == SIM.steps


def test_oversample_and_keep_low_reach_the_live_results(loopback, frames, offline, tmp_path):
    from n2i_stream.learn import denoise_volume, load_checkpoint

    sub = loopback.subscribe()
    service = loopback.service
    service.configure(
        scan(tmp_path, model=offline["model"], scan_id="sharp", oversample=2, keep_low=3.0)
    )
    send(loopback, frames, "n2i")
    assert service.wait_for({"done", "failed"}, timeout=60) == "done"
    sub.wait_for(lambda r: len(r) == 2 * SIM.steps, timeout=30)
    model = load_checkpoint(offline["model"])
    for s in (0, SIM.steps - 1):
        volume = fbp(offline["line_integrals"][s], offline["geometries"][s], oversample=2)
        np.testing.assert_allclose(sub.of_kind("fbp")[s], volume, **TOL)
        expected = denoise_volume(model, volume, keep_low=3.0)
        np.testing.assert_allclose(sub.of_kind("denoised")[s], expected, **TOL)
    assert not np.allclose(sub.of_kind("fbp")[0], offline["fbp"][0], **TOL)  # it did change


FAULTS = {
    "bad messages": StreamFaults(bad_messages=10, seed=1),
    "duplicates": StreamFaults(duplicate=0.1, seed=2),
    "shuffled": StreamFaults(shuffle=8, seed=3),
    "16-bit id wrap": StreamFaults(id_offset=(1 << 16) - 60, id_bits=16),
    "5% dropped": StreamFaults(drop=0.05, seed=5),
}


@pytest.mark.parametrize("name", list(FAULTS))
def test_faults_are_counted_nothing_received_is_lost_and_the_service_lives_on(
    loopback, frames, offline, tmp_path, name
):
    faults = FAULTS[name]
    service = loopback.service
    sub = loopback.subscribe()
    service.configure(scan(tmp_path, model=offline["model"], faults=faults, scan_id=name))
    stats = send(loopback, frames, "array-1.0", faults)
    # the last step may lack frames: the plan's stop ends the scan once all was received
    sent = stats.frames + stats.bad
    wait_until(lambda: (c := loopback.source.counters()).received + c.bad == sent)
    service.stop(timeout=60)
    status = service.status()
    c = status["counters"]
    assert status["state"] == "done"
    # bad messages after the scan's last frame arrive when no scan is running any more
    assert c["bad"] + status["frames_without_scan"] == stats.bad == faults.bad_messages
    assert c["duplicate"] == stats.duplicated
    assert c["dropped"] == len(stats.dropped_ids)
    assert (c["wrapped"] >= 1) == (faults.id_bits is not None)
    assert (c["out_of_order"] > 0) == (faults.shuffle > 1)
    assert c["late"] == c["outside_range"] == 0

    dropped = (
        np.asarray(stats.dropped_ids, dtype=np.int64) - faults.id_offset - SIM.n_darks - SIM.n_flats
    )
    missing = np.bincount(dropped // SIM.per_step, minlength=SIM.steps)
    file = read_results(tmp_path / "results.h5")
    assert sorted(file["time_step"].tolist()) == list(range(SIM.steps))
    assert dict(zip(file["time_step"].tolist(), file["missing_frames"].tolist(), strict=True)) == {
        s: int(missing[s]) for s in range(SIM.steps)
    }
    sub.wait_for(lambda r: len(r) == 2 * SIM.steps, timeout=30)
    for h in sub.headers():
        assert h.missing_frames == missing[h.time_step]
        assert h.complete == (missing[h.time_step] == 0)
    for s in range(SIM.steps):
        expected = offline["fbp"][s]
        if missing[s]:  # reconstructed from the angles that arrived
            lost = dropped[dropped // SIM.per_step == s] % SIM.per_step
            keep = np.setdiff1d(np.arange(SIM.per_step), lost)
            g = offline["geometries"][s][keep]
            expected = fbp(offline["line_integrals"][s][keep], g, n=SIM.width)
        np.testing.assert_allclose(by_step(file, "fbp")[s], expected, **TOL)

    # alive: the next scan runs normally
    (tmp_path / "next").mkdir()
    service.configure(scan(tmp_path / "next", model=offline["model"], scan_id="next"))
    send(loopback, frames)
    assert service.wait_for({"done", "failed"}, timeout=60) == "done"
    assert service.status()["steps"]["published_denoised"] == SIM.steps
