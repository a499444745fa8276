"""``n2i-stream serve`` wiring: the settings file with flags over it, and runs driven by Bluesky
start/stop documents through ``--documents``."""

from __future__ import annotations

import argparse
import json
import time

import h5py
import numpy as np
import zmq
from serving import serving

from n2i_stream.cli import serve
from n2i_stream.cli.config import settings_from_args
from n2i_stream.service.control import ControlClient
from n2i_stream.service.documents import encode_message
from n2i_stream.sim.scan import DynamicScan, SimConfig
from n2i_stream.sim.stream import frame_messages, scan_config_for, stream

SETTINGS = """
[data]
endpoint = "tcp://127.0.0.1:*"
buffers = 32

[control]
endpoint = "tcp://127.0.0.1:*"

[results]
endpoint = "tcp://127.0.0.1:*"

[pipeline]
queue_steps = 3

[scan_defaults]
train_steps = 2
train_iterations = 1
"""

SCAN = {"scan_id": "doc-run", "rows": 2, "cols": 16, "frames_per_step": 4, "steps": 3,
        "angle_step": 45.0}  # fmt: skip


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    serve.add_arguments(parser)
    return parser.parse_args(argv)


def test_flags_given_override_the_file_and_the_others_leave_it_alone(tmp_path):
    path = tmp_path / "service.toml"
    path.write_text(SETTINGS)
    args = parse(
        ["--config", str(path), "--queue-steps", "7", "--data", "tcp://det:5555", "--data-connect"]
    )
    settings = settings_from_args(args, serve.flag_overrides(args))
    assert settings.pipeline.queue_steps == 7  # the flag
    assert (settings.data.endpoint, settings.data.bind) == ("tcp://det:5555", False)  # flags
    assert settings.data.buffers == 32  # the file
    assert settings.control.endpoint == "tcp://127.0.0.1:*"  # the file
    assert settings.devices.train_threads == 1  # neither: the settings default


def test_without_a_file_the_flags_defaults_are_the_old_ones():
    args = parse([])
    settings = settings_from_args(args, serve.flag_overrides(args))
    options = settings.pipeline_options()
    assert (settings.data.endpoint, settings.data.bind, settings.data.buffers) == (
        "tcp://127.0.0.1:5555", True, 64)  # fmt: skip
    assert (options.overload, options.queue_steps, options.infer_threads) == ("block", 4, 0)


def _until(predicate, timeout: float = 30.0, every=None) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        if every is not None:
            every()
        time.sleep(0.05)


def test_start_and_stop_documents_drive_a_scan(tmp_path):
    """A msgpack start document with n2i metadata configures a scan (the settings' scan
    defaults applied); the stop document of an aborted run ends it. A control ``configure``
    gets the same defaults and output directory."""
    path = tmp_path / "service.toml"
    path.write_text(SETTINGS + f'\n[output]\ndirectory = "{tmp_path / "out"}"\n')
    (tmp_path / "out").mkdir()
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    try:
        with serving("--config", str(path), "--documents", f"tcp://127.0.0.1:{port}") as server:
            assert server.ready["documents"] == f"tcp://127.0.0.1:{port}"
            start = {"uid": "run-1", "time": 0.0, "n2i": {"control": "documents", "scan": SCAN}}
            with ControlClient(server.ready["control"]) as client:

                def status():
                    return client.call("status")["status"]

                # SUB joins late: repeat the start document until the scan exists (repeats are
                # refused by the running scan and counted by the listener, not acted on).
                _until(
                    lambda: status()["scan_id"] == "doc-run",
                    every=lambda: pub.send(encode_message("start", start)),
                )
                assert status()["state"] not in ("done", "failed")
                pub.send(
                    encode_message(
                        "stop",
                        {"uid": "stop-1", "run_start": "run-1", "exit_status": "abort",
                         "reason": "user"},
                    )
                )  # fmt: skip
                _until(lambda: status()["state"] == "done")
                assert status()["reason"] == "aborted"
                # without [scan_defaults] train_steps = 2 this scan (3 steps) would be refused
                client.call("configure", scan={**SCAN, "scan_id": "ctl-run", "output": "ctl.h5"})
                assert status()["output"] == str(tmp_path / "out" / "ctl.h5")
                assert client.call("abort")["state"] == "done"
                client.call("shutdown")
            assert server.proc.wait(60) == 0
    finally:
        pub.close()
        ctx.term()


def test_serve_runs_a_scan_on_its_slab_workers(tmp_path):
    """``[slabs] workers`` starts the worker processes, waits for them and hands the scan's
    steps to them; ``--scan`` with ``--exit-when-done`` ends the process with the scan."""
    sim = SimConfig(width=32, rows=4, steps=4, per_step=16, n_darks=2, n_flats=2,
                    dynamics_start=3, supersample=1, seed=1)  # fmt: skip
    output = tmp_path / "results.h5"
    scan_file = tmp_path / "scan.json"
    scan_file.write_text(
        json.dumps(scan_config_for(sim, scan_id="slab-run", train_steps=2, output=str(output),
                                   training={"depth": 2, "width": 4, "crop": 16, "batch": 2}))
    )  # fmt: skip
    settings = tmp_path / "service.toml"
    settings.write_text(
        SETTINGS + f'\n[slabs]\nworkers = 1\ntasks = "ipc://{tmp_path}/tasks"\n'
        f'results = "ipc://{tmp_path}/results"\n'
    )
    with serving("--config", str(settings), "--scan", str(scan_file), "--exit-when-done",
                 timeout=120) as server:  # fmt: skip
        assert server.ready["slab_workers"] == 1
        stream(frame_messages(DynamicScan(sim).frames(), "n2i"), server.ready["data"])
        assert server.proc.wait(120) == 0
    with h5py.File(output, "r") as f:
        assert sorted(f["reconstruction/time_step"][()].tolist()) == list(range(sim.steps))
        assert np.isfinite(f["reconstruction/denoised"][()]).all()
