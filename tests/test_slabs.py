"""Slab workers: a time step's FBP and denoising split into slabs over workers fed by ZMQ
PUSH/PULL on loopback give the whole-volume result; 2 workers give what 1 worker gives."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator

import numpy as np
import pytest
import zmq

from n2i_stream import ServiceError
from n2i_stream.core.fbp import fbp
from n2i_stream.core.geometry import ParallelGeometry
from n2i_stream.learn import (
    Denoiser,
    NetworkSpec,
    TrainConfig,
    build_network,
    denoise_volume,
    load_checkpoint,
    save_checkpoint,
)
from n2i_stream.learn.patches import Normalisation
from n2i_stream.service.loopback import Loopback
from n2i_stream.service.pipeline import PipelineOptions
from n2i_stream.service.sinks import StepResult
from n2i_stream.service.slabs import HELLO, SlabPool, SlabTask, slab_bounds
from n2i_stream.sim.scan import DynamicScan, SimConfig
from n2i_stream.sim.stream import frame_messages, scan_config_for, stream

ROWS, COLS, ANGLES, CONTEXT = 9, 32, 24, 2
TOL = {"rtol": 1e-5, "atol": 1e-6}


@pytest.fixture(scope="module")
def step() -> tuple[np.ndarray, ParallelGeometry]:
    rng = np.random.default_rng(1)
    geometry = ParallelGeometry.from_degrees(
        np.linspace(0.0, 180.0, ANGLES, endpoint=False) + 0.3, rows=ROWS, cols=COLS,
        center_offset=0.5,
    )  # fmt: skip
    smooth = np.cumsum(rng.normal(size=(ANGLES, ROWS, COLS)), axis=2).astype(np.float32)
    return smooth / 10.0, geometry


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> str:
    import torch

    torch.manual_seed(2)
    spec = NetworkSpec.for_data("unet", context=CONTEXT, depth=2, width=4)
    denoiser = Denoiser(
        network=build_network(spec).eval(), spec=spec, normalisation=Normalisation(0.1, 0.5),
        context=CONTEXT, strategy="dynamic", geometry={}, config=TrainConfig(),
    )  # fmt: skip
    return str(save_checkpoint(denoiser, tmp_path_factory.mktemp("model") / "m.pt"))


@pytest.fixture(scope="module")
def whole(step, model) -> tuple[np.ndarray, np.ndarray]:
    """FBP and denoised volume of the whole step, in this process."""
    projections, geometry = step
    volume = np.asarray(fbp(projections, geometry, n=COLS))
    return volume, np.asarray(denoise_volume(load_checkpoint(model), volume))


@pytest.fixture
def pools() -> Iterator:
    started: list[SlabPool] = []

    def start(workers: int, spawn: str = "thread", slabs: int = 1) -> SlabPool:
        pool = SlabPool(workers, spawn=spawn, slabs=slabs, threads=1)  # type: ignore[arg-type]
        started.append(pool.start())
        return started[-1]

    yield start
    for pool in started:
        pool.close()


def test_slab_bounds_cover_the_rows_in_nearly_equal_parts():
    assert slab_bounds(9, 2) in ([(0, 4), (4, 9)], [(0, 5), (5, 9)])
    assert slab_bounds(3, 5) == [(0, 1), (1, 2), (2, 3)]
    for rows, slabs in ((100, 7), (16, 4), (1, 1)):
        bounds = slab_bounds(rows, slabs)
        assert bounds[0][0] == 0
        assert bounds[-1][1] == rows
        assert all(b == c for (_, b), (c, _) in itertools.pairwise(bounds))
        sizes = [b - a for a, b in bounds]
        assert max(sizes) - min(sizes) <= 1


def test_two_workers_give_what_one_worker_and_the_whole_volume_give(step, model, whole, pools):
    projections, geometry = step
    task = SlabTask("both", projections, geometry, n=COLS, model=model, context=CONTEXT)
    one = pools(1).run(task)
    two = pools(2, slabs=2).run(task)  # four slabs: every slab has a halo inside the volume
    for kind in range(2):
        np.testing.assert_allclose(two[kind], one[kind], **TOL)
        np.testing.assert_allclose(two[kind], whole[kind], **TOL)


def test_fbp_and_denoise_run_separately_and_come_back_in_order(step, model, whole, pools):
    projections, geometry = step
    pool = pools(2)
    scaled = [projections * (k + 1) for k in range(4)]
    results = list(pool.imap((SlabTask("fbp", p, geometry, n=COLS) for p in scaled), depth=3))
    for k, (volume,) in enumerate(results):
        np.testing.assert_allclose(volume, whole[0] * (k + 1), rtol=1e-5, atol=1e-5)
    (denoised,) = pool.run(SlabTask("denoise", whole[0], model=model, context=CONTEXT))
    np.testing.assert_allclose(denoised, whole[1], **TOL)


def test_a_failed_task_is_reported_and_the_workers_go_on(step, model, whole, pools, tmp_path):
    pool = pools(1)
    missing = str(tmp_path / "no-such-model.pt")
    with pytest.raises(ServiceError, match="no such model file"):
        pool.run(SlabTask("denoise", whole[0], model=missing, context=CONTEXT))
    (denoised,) = pool.run(SlabTask("denoise", whole[0], model=model, context=CONTEXT))
    np.testing.assert_allclose(denoised, whole[1], **TOL)


def test_worker_processes(step, model, whole, pools):
    projections, geometry = step
    pool = pools(2, spawn="process")
    fbp_volume, denoised = pool.run(
        SlabTask("both", projections, geometry, n=COLS, model=model, context=CONTEXT)
    )
    np.testing.assert_allclose(fbp_volume, whole[0], **TOL)
    np.testing.assert_allclose(denoised, whole[1], **TOL)


def test_a_pool_without_workers_says_so():
    pool = SlabPool(1, spawn="none")
    try:
        with pytest.raises(ServiceError, match="only 0 of 1 slab workers"):
            pool.start(timeout=0.2)
    finally:
        pool.close()


def test_bench_scale_reports_steps_per_second(capsys):
    import json

    from n2i_stream.cli import main

    args = ["--rows=4", "--size=16", "--angles=8", "--steps=1", "--repeat=1", "--workers=1"]
    assert main(["bench", "scale", *args, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [r["mode"] for r in report["results"]] == ["in-process", "1 worker"]
    assert all(r["steps_per_s"] > 0 for r in report["results"])


# -- the live service on a pool ------------------------------------------------------------------

SIM = SimConfig(
    width=32, rows=4, steps=5, per_step=24, n_darks=4, n_flats=4, dynamics_start=3,
    supersample=1, seed=4,
)  # fmt: skip
TINY = {"depth": 2, "width": 4, "crop": 16, "batch": 2}


def live_scan(pool: SlabPool, tmp_path) -> tuple[dict, list[StepResult]]:
    """Run the simulated scan through the service on ``pool``: its status and results."""
    config = scan_config_for(
        SIM, scan_id="slabs", train_steps=2, train_iterations=2, training=TINY,
        output=str(tmp_path / "results.h5"),
    )  # fmt: skip
    with Loopback(options=PipelineOptions(infer_threads=1), slab_pool=pool) as lb:
        lb.service.configure(config)
        stream(frame_messages(DynamicScan(SIM).frames(), "n2i"), lb.data_endpoint,
               context=lb.context)  # fmt: skip
        assert lb.service.wait_for({"done", "failed"}, timeout=60) == "done"
        return lb.service.status(), list(lb.memory.results)


def test_a_live_scan_runs_its_fbp_and_denoising_on_the_slab_workers(pools, tmp_path):
    pool = pools(2)
    status, results = live_scan(pool, tmp_path)
    assert status["steps"]["published_denoised"] == SIM.steps
    assert status["steps"]["slab_failures"] == 0
    assert pool.completed == 2 * SIM.steps  # every step's FBP and denoising came from the pool
    model = load_checkpoint(status["training"]["model"])  # trained, saved, loaded by the workers
    fbp_of = {r.time_step: r.volume for r in results if r.kind == "fbp"}
    for r in (r for r in results if r.kind == "denoised"):
        expected = denoise_volume(model, fbp_of[r.time_step])
        np.testing.assert_allclose(r.volume, expected, rtol=1e-4, atol=1e-5)


def test_a_pool_whose_workers_never_answer_leaves_the_scan_to_the_service(tmp_path):
    """A worker that said hello and then hangs (or died): after the pool's timeout the scan
    goes on in the service process and loses nothing."""
    pool = SlabPool(1, spawn="none", timeout=0.5)
    ctx = zmq.Context()
    tasks, results = ctx.socket(zmq.PULL), ctx.socket(zmq.PUSH)
    try:
        tasks.connect(pool.tasks_endpoint)
        results.connect(pool.results_endpoint)
        results.send(json.dumps({"htype": HELLO, "worker": "hung"}).encode())
        pool.start(timeout=30)
        status, results_seen = live_scan(pool, tmp_path)
    finally:
        pool.close()
        tasks.close(linger=0)
        results.close(linger=0)
        ctx.term()
    assert status["steps"]["slab_failures"] == 1
    assert pool.completed == 0
    assert status["steps"]["published_fbp"] == status["steps"]["published_denoised"] == SIM.steps
    assert sorted(r.time_step for r in results_seen if r.kind == "denoised") == list(
        range(SIM.steps)
    )
