"""Restart safety: the scan journal, recovery of a results file, and a real service process
killed with SIGKILL mid-scan, restarted on the same state directory, resuming the scan."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pytest

from n2i_stream.io.dxchange import DataExchangeFile
from n2i_stream.io.dxchange_writer import DataExchangeWriter
from n2i_stream.io.live_results import LiveResultsWriter
from n2i_stream.learn import denoise_volume, load_checkpoint
from n2i_stream.learn.registry import ModelRegistry
from n2i_stream.offline import ReconstructConfig, ScanSteps, fbp_step
from n2i_stream.service.control import ControlClient
from n2i_stream.service.resume import (
    ResumedFileSink,
    ScanJournal,
    ScanRecord,
    plan_resume,
    read_results,
    register_resumed_model,
    resume_unfinished,
)
from n2i_stream.service.scan_config import ScanConfig
from n2i_stream.service.sinks import StepResult
from n2i_stream.sim.scan import DynamicScan, SimConfig
from n2i_stream.sim.stream import frame_messages, scan_config_for, stream

SIM = SimConfig(
    width=32, rows=4, steps=6, per_step=24, n_darks=4, n_flats=4, dynamics_start=3,
    supersample=1, seed=3,
)  # fmt: skip
TINY = {"depth": 2, "width": 4, "crop": 16, "batch": 2}
SHAPE = (SIM.rows, SIM.width, SIM.width)


def scan(tmp_path: Path, **fields) -> ScanConfig:
    fields.setdefault("output", str(tmp_path / "results.h5"))
    return ScanConfig.from_mapping(scan_config_for(SIM, scan_id="r1", train_steps=3, **fields))


def test_the_journal_keeps_one_record_per_scan_and_finds_the_unfinished_one(tmp_path):
    journal = ScanJournal(tmp_path / "state", max_resumes=2)
    assert journal.unfinished() is None
    old = journal.begin(scan(tmp_path))
    record = journal.begin(scan(tmp_path))  # same scan id, same second: its own directory
    assert record.directory != old.directory
    record = journal.model_saved(record, str(tmp_path / "m.pt"))
    assert ScanRecord.read(record.directory) == record
    assert list(record.directory.iterdir()) == [record.directory / "scan.json"]  # no leftovers

    found = journal.unfinished()
    assert found == record
    assert ScanRecord.read(old.directory).state == "finished"  # older running one abandoned
    assert "abandoned" in str(ScanRecord.read(old.directory).reason)

    journal.resumed(found)
    journal.resumed(found)
    assert journal.unfinished() is None  # crashed in it twice: given up, not a crash loop
    assert "given up" in str(ScanRecord.read(record.directory).reason)

    done = journal.begin(scan(tmp_path))
    journal.finish(done, "stopped")
    assert journal.unfinished() is None


def volume(step: int, kind: str) -> np.ndarray:
    return np.full(SHAPE, step + (0.5 if kind == "denoised" else 0.0), dtype=np.float32)


def test_recovery_keeps_whole_steps_and_writes_each_step_once(tmp_path):
    config = scan(tmp_path)
    with LiveResultsWriter(
        config.output, rows=SIM.rows, n=SIM.width, kinds=("fbp", "denoised"),
        config={"scan_id": "r1"}, attrs={"scan_id": "r1"},
    ) as writer:  # fmt: skip
        for step in range(3):
            writer.write_result("fbp", step, volume(step, "fbp"), missing_frames=step)
        writer.write_step("denoised", 0, volume(0, "denoised"))
        torn = volume(3, "fbp")
        torn[1:] = np.nan  # chunks a killed writer never wrote read as the fill value
        writer.write_result("fbp", 3, torn, missing_frames=0)
        writer.append_loss([0.5, 0.25])
        writer.write_center(1.5)

    journal = ScanJournal(tmp_path / "state")
    record = journal.model_saved(journal.begin(config), __file__)  # any existing file
    plan = plan_resume(journal.resumed(record))
    assert plan.skip_steps == {0, 1, 2}
    assert plan.done["denoised"] == {0}
    assert plan.backfill == (1, 2)
    assert plan.scan.model == __file__

    sink = plan.open_results()  # no model given: nothing denoised from the file
    assert isinstance(sink, ResumedFileSink)
    np.testing.assert_array_equal(sink.read_fbp(2), volume(2, "fbp"))
    for step in (1, 3):  # step 1 was there (not written twice), step 3 is new
        sink.put(StepResult(step, "fbp", volume(step, "fbp") + 100))
    sink.put(StepResult(1, "denoised", volume(1, "denoised")))
    sink.close()
    assert sink.skipped == 1

    content = read_results(config.output)
    assert content.order == (0, 1, 2, 3)
    assert content.whole == {"fbp": {0, 1, 2, 3}, "denoised": {0, 1}}
    assert content.missing_frames == {0: 0, 1: 1, 2: 2, 3: 0}
    assert content.center_offset == 1.5
    np.testing.assert_array_equal(content.losses, [0.5, 0.25])
    assert content.attrs["resumed"] == 1
    assert content.attrs["scan_id"] == "r1"
    with h5py.File(config.output, "r") as f:  # closed cleanly: opens without SWMR
        np.testing.assert_array_equal(f["reconstruction/fbp"][1], volume(1, "fbp"))
        np.testing.assert_array_equal(f["reconstruction/fbp"][3], volume(3, "fbp") + 100)
    assert not list(tmp_path.glob(".*recovering"))


def tiny_denoiser(seed: int = 0, center_offset: float = 0.0):
    import torch

    from n2i_stream.learn import Denoiser, NetworkSpec, TrainConfig, build_network
    from n2i_stream.learn.patches import Normalisation

    torch.manual_seed(seed)
    spec = NetworkSpec.for_data("dncnn", context=1, depth=2, width=4)
    geometry = {"rows": SIM.rows, "cols": SIM.width, "n": SIM.width, "angles": SIM.per_step,
                "center_offset": center_offset}  # fmt: skip
    return Denoiser(
        network=build_network(spec).eval(), spec=spec, normalisation=Normalisation(1.0, 2.0),
        context=1, strategy="dynamic", geometry=geometry, config=TrainConfig(), iteration=5,
        loss_history=[(5, 0.125)],
    )  # fmt: skip


def test_the_model_registry_finds_models_by_geometry_detector_and_energy(tmp_path):
    from n2i_stream import ModelError
    from n2i_stream.learn import load_checkpoint, save_checkpoint
    from n2i_stream.learn.registry import ModelKey, ModelRegistry

    registry = ModelRegistry(tmp_path / "models")
    first = save_checkpoint(tiny_denoiser(0), tmp_path / "a.model.pt")
    second = save_checkpoint(tiny_denoiser(1, center_offset=0.3), tmp_path / "b.model.pt")
    a = registry.register(first, detector="pco", energy_kev=20.0, scan_id="s1")
    b = registry.register(second, detector="pco", energy_kev=20.3, scan_id="s2")
    registry.register(first, detector="eiger", energy_kev=20.0)
    assert (a.iterations, a.final_loss, a.key.angles) == (5, 0.125, SIM.per_step)
    # the same checkpoint under the same key again (a restart): the entry it has, no copy
    assert registry.register(first, detector="pco", energy_kev=20.0, scan_id="s1") == a
    assert len(registry.entries()) == 3
    assert len(list(registry.models.glob("*.pt"))) == 3

    wanted = ModelKey(cols=SIM.width, n=SIM.width, angles=SIM.per_step, center_offset=0.1,
                      network="dncnn", detector="pco", energy_kev=20.1)  # fmt: skip
    assert [e.id for e in ModelRegistry(tmp_path / "models").find(wanted)] == [b.id, a.id]
    assert registry.latest(wanted, energy_tolerance_kev=0.15) == a
    assert registry.find(replace(wanted, energy_kev=30.0)) == []
    assert registry.find(replace(wanted, angles=SIM.per_step * 2)) == []
    assert registry.find(replace(wanted, energy_kev=None)) == []
    reused = load_checkpoint(registry.latest(wanted).path)  # type: ignore[union-attr]
    assert reused.geometry["center_offset"] == 0.3

    registry.remove(b.id)
    assert registry.latest(wanted) == a
    assert not b.path.exists()
    with pytest.raises(ModelError, match="not a readable n2i-stream model"):
        registry.register(tmp_path / "models" / "index.json")


def test_a_resumed_scan_registers_its_model_once(tmp_path):
    """A kill between saving the model and registering it: the restart registers it."""
    from n2i_stream.learn import save_checkpoint

    checkpoint = str(save_checkpoint(tiny_denoiser(), tmp_path / "results.model.pt"))
    journal = ScanJournal(tmp_path / "state")
    plan = plan_resume(
        journal.resumed(journal.model_saved(journal.begin(scan(tmp_path)), checkpoint))
    )
    registry = ModelRegistry(tmp_path / "models")
    register_resumed_model(plan, registry, detector="sim")
    register_resumed_model(plan, registry, detector="sim")  # registered already: not again
    (entry,) = registry.entries()
    assert (entry.scan_id, entry.key.detector) == (plan.scan.scan_id, "sim")
    given = plan_resume(journal.resumed(journal.begin(scan(tmp_path, model=checkpoint))))
    register_resumed_model(given, registry)  # a model the scan was given, not one it trained
    assert len(registry.entries()) == 1


def test_steps_without_a_denoised_volume_are_denoised_from_the_file(tmp_path):
    config = scan(tmp_path)
    with LiveResultsWriter(
        config.output, rows=SIM.rows, n=SIM.width, kinds=("fbp", "denoised")
    ) as writer:
        rng = np.random.default_rng(0)
        fbp = {s: rng.normal(size=SHAPE).astype(np.float32) for s in range(3)}
        for step, data in fbp.items():
            writer.write_result("fbp", step, data, missing_frames=0)
        writer.write_step("denoised", 0, volume(0, "denoised"))
    journal = ScanJournal(tmp_path / "state")
    plan = plan_resume(journal.resumed(journal.model_saved(journal.begin(config), __file__)))
    assert plan.backfill == (1, 2)
    model = tiny_denoiser()
    sink = plan.open_results(model)
    assert sink is not None
    sink.put(StepResult(2, "denoised", volume(2, "denoised")))  # made already: not again
    sink.close()
    content = read_results(config.output)
    assert content.whole["denoised"] == {0, 1, 2}
    with h5py.File(config.output, "r") as f:
        denoised = f["reconstruction/denoised"]
        np.testing.assert_array_equal(denoised[0], volume(0, "denoised"))
        for step in (1, 2):
            np.testing.assert_allclose(denoised[step], denoise_volume(model, fbp[step]), rtol=1e-6)


# -- a real process, killed -----------------------------------------------------------------------

DRIVER = """
import json, signal, sys, threading
from n2i_stream.io.zmq_source import ZmqFrameSource, ZmqSourceConfig
from n2i_stream.service.control import ControlHandler, ControlServer
from n2i_stream.service.pipeline import PipelineOptions
from n2i_stream.learn.registry import ModelRegistry
from n2i_stream.service.resume import (
    ScanJournal, register_resumed_model, register_trained_models, resume_unfinished)
from n2i_stream.service.service import N2IService

journal = ScanJournal(sys.argv[1])
registry = ModelRegistry(sys.argv[2])
source = ZmqFrameSource(ZmqSourceConfig(
    endpoint="tcp://127.0.0.1:*", bind=True, buffers=64, buffer_bytes=1 << 22))
service = N2IService(source, options=PipelineOptions(infer_threads=1), journal=journal)
register_trained_models(service, registry, detector="sim")
service.start()
control = ControlServer("tcp://127.0.0.1:*", ControlHandler(service))
control.start()
plan = resume_unfinished(journal)
if plan is not None:  # as Operations.resume in serve
    service.configure(plan.scan, resume=plan)
    register_resumed_model(plan, registry, detector="sim")
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
print(json.dumps({"data": source.endpoint, "control": control.endpoint,
                  "resumed": None if plan is None else plan.describe()}), flush=True)
stop.wait()
service.close()
control.close()
"""


class ServiceProcess:
    """The service in a child process (the driver above), with a control client."""

    def __init__(self, tmp_path: Path) -> None:
        driver = tmp_path / "driver.py"
        driver.write_text(DRIVER)
        self.proc = subprocess.Popen(
            [sys.executable, str(driver), str(tmp_path / "state"), str(tmp_path / "models")],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, f"the service process ended (exit {self.proc.wait()})"
        self.ready = json.loads(line)
        self.client = ControlClient(self.ready["control"], timeout=30.0)

    def status(self) -> dict:
        return self.client.call("status")["status"]

    def wait_until(self, predicate: Callable[[dict], bool], timeout: float = 60.0) -> dict:
        pause = threading.Event()
        for _ in range(int(timeout / 0.05)):
            status = self.status()
            if predicate(status):
                return status
            pause.wait(0.05)
        raise AssertionError(f"condition not reached within {timeout} s: {status}")

    def close(self) -> None:
        self.client.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(60)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture
def processes(tmp_path) -> Iterator[Callable[[], ServiceProcess]]:
    started: list[ServiceProcess] = []

    def start() -> ServiceProcess:
        started.append(ServiceProcess(tmp_path))
        return started[-1]

    yield start
    for p in started:
        p.close()


def expected_fbp(frames, tmp_path: Path) -> list[np.ndarray]:
    """The offline path's FBP of every step of the same frames."""
    path = tmp_path / "scan.h5"
    with DataExchangeWriter(path, rows=SIM.rows, cols=SIM.width, frames_per_step=SIM.per_step) as w:
        for f in frames:
            w.write_frame(f)
    with DataExchangeFile(path) as data:
        steps = ScanSteps(data, ReconstructConfig(input=str(path), output=str(tmp_path / "x.h5")))
        return [fbp_step(steps, s, center_offset=0.0)[0] for s in range(SIM.steps)]


def test_a_killed_service_resumes_its_scan_from_disk(tmp_path, processes):
    frames = list(DynamicScan(SIM).frames())
    references = frames[: SIM.n_darks + SIM.n_flats]
    projections = frames[len(references) :]
    per_step = SIM.per_step
    output = tmp_path / "results.h5"
    config = scan_config_for(
        SIM, scan_id="r1", train_steps=3, train_iterations=4, training=TINY, output=str(output)
    )

    first = processes()
    assert first.ready["resumed"] is None
    first.client.call("configure", scan=config)
    stream(frame_messages(references + projections[: 4 * per_step], "n2i"), first.ready["data"])
    before = first.wait_until(
        lambda s: s["steps"]["published_denoised"] >= 3 and s["training"]["model"] is not None
    )
    first.proc.send_signal(signal.SIGKILL)
    assert first.proc.wait(30) == -signal.SIGKILL

    with pytest.raises(OSError, match="already open for write"):
        h5py.File(output, "r")  # the killed writer's SWMR file: readable only as SWMR
    on_disk = read_results(output)
    assert {0, 1, 2} <= on_disk.whole["denoised"] <= on_disk.whole["fbp"]
    with h5py.File(output, "r", libver="latest", swmr=True) as f:
        kept = {
            kind: {s: f["reconstruction"][kind][i] for i, s in enumerate(on_disk.order)}
            for kind in ("fbp", "denoised")
        }

    second = processes()  # same configuration, same state directory
    assert second.ready["resumed"].startswith("scan 'r1':")
    assert second.ready["resumed"].endswith("kept dark and flat means")
    status = second.status()
    assert (status["scan_id"], status["state"]) == ("r1", "streaming")
    assert status["training"]["state"] == "skipped"  # the saved model, not trained again
    assert status["training"]["model"] == before["training"]["model"]
    # the detector goes on with the steps the first process never saw, without sending its
    # darks and flats again: the ones kept in the scan state correct them
    stream(frame_messages(projections[4 * per_step :], "n2i"), second.ready["data"])
    done = second.wait_until(lambda s: s["state"] in ("done", "failed"))
    assert done["state"] == "done", done["reason"]

    with h5py.File(output, "r") as f:  # closed cleanly this time
        order = [int(s) for s in f["reconstruction/time_step"][()]]
        results = {k: dict(zip(order, f["reconstruction"][k][()], strict=True))
                   for k in ("fbp", "denoised")}  # fmt: skip
        assert f.attrs["resumed"] == 1
        assert f["training/loss"].shape == (4,)
    assert sorted(order) == list(range(SIM.steps))  # complete, every step once
    for kind in ("fbp", "denoised"):
        for step, data in kept[kind].items():
            if step in on_disk.whole[kind]:
                np.testing.assert_array_equal(results[kind][step], data)
        assert all(np.isfinite(v).all() for v in results[kind].values())
    model = load_checkpoint(before["training"]["model"])
    reference = expected_fbp(frames, tmp_path)
    for step in range(SIM.steps):
        np.testing.assert_allclose(results["fbp"][step], reference[step], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(
            results["denoised"][step], denoise_volume(model, results["fbp"][step]),
            rtol=1e-4, atol=1e-5,
        )  # fmt: skip
    records = ScanJournal(tmp_path / "state").records()
    assert [(r.state, r.resumed, r.reason) for r in records] == [("finished", 1, "done")]
    assert resume_unfinished(ScanJournal(tmp_path / "state")) is None
    (entry,) = ModelRegistry(tmp_path / "models").entries()  # trained once, registered once
    assert (entry.scan_id, entry.key.detector, entry.iterations) == ("r1", "sim", 4)


def test_a_resumed_scan_does_not_redo_the_steps_on_disk(tmp_path):
    from n2i_stream.learn import save_checkpoint
    from n2i_stream.service.loopback import Loopback
    from n2i_stream.service.pipeline import PipelineOptions

    model = save_checkpoint(tiny_denoiser(), tmp_path / "r1.model.pt")
    config = scan(tmp_path, model=str(model))
    marker = {s: np.full(SHAPE, -s - 1.0, dtype=np.float32) for s in range(3)}
    with LiveResultsWriter(
        config.output, rows=SIM.rows, n=SIM.width, kinds=("fbp", "denoised")
    ) as writer:  # what a killed run had written: steps 0-2, step 2 not denoised yet
        for step, data in marker.items():
            writer.write_result("fbp", step, data, missing_frames=0)
            if step < 2:
                writer.write_step("denoised", step, data)
    journal = ScanJournal(tmp_path / "state")
    journal.begin(config)
    plan = resume_unfinished(journal)
    assert plan is not None
    assert plan.skip_steps == {0, 1, 2}
    frames = list(DynamicScan(SIM).frames())
    with Loopback(options=PipelineOptions(infer_threads=1)) as lb:
        lb.service.configure(plan.scan, resume=plan)
        stream(frame_messages(frames, "n2i"), lb.data_endpoint, context=lb.context)  # a replay
        assert lb.service.wait_for({"done", "failed"}, timeout=60) == "done"
        steps = lb.service.status()["steps"]
    assert steps["on_disk"] == 3
    assert (steps["published_fbp"], steps["published_denoised"]) == (3, 3)
    content = read_results(config.output)
    assert content.order == (0, 1, 2, 3, 4, 5)
    assert content.whole == {"fbp": set(range(6)), "denoised": set(range(6))}
    with h5py.File(config.output, "r") as f:
        for step, data in marker.items():
            np.testing.assert_array_equal(f["reconstruction/fbp"][step], data)  # kept as it was
        backfilled = f["reconstruction/denoised"][2]
    np.testing.assert_allclose(
        backfilled, denoise_volume(load_checkpoint(model), marker[2]), rtol=1e-5, atol=1e-6
    )
