"""Structured logs, and the Prometheus exporter scraped over HTTP during a simulated scan on the
real service (loopback), plus its health check and per-scan totals."""

from __future__ import annotations

import io
import json
import logging
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from typing import Any

import pytest

pytest.importorskip("prometheus_client")

from polling import wait_until
from prometheus_client.parser import text_string_to_metric_families

from n2i_stream.observability import setup_logging
from n2i_stream.observability.metrics import MetricsExporter, StatusTotals
from n2i_stream.service.loopback import Loopback
from n2i_stream.service.pipeline import PipelineOptions
from n2i_stream.sim.scan import DynamicScan, SimConfig
from n2i_stream.sim.stream import frame_messages, scan_config_for, stream

SIM = SimConfig(
    width=32, rows=4, steps=6, per_step=24, n_darks=4, n_flats=4, dynamics_start=3,
    supersample=1, seed=3,
)  # fmt: skip
TINY = {"depth": 2, "width": 4, "crop": 16, "batch": 2}


@pytest.fixture
def root_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(False)


def test_json_logs_are_one_object_per_line(root_logging):
    out = io.StringIO()
    setup_logging("info", "json", stream=out)
    log = logging.getLogger("n2i_stream.test")
    log.debug("not shown")
    log.info("scan %s configured", "s1", extra={"scan_id": "s1", "steps": 6})
    try:
        raise ValueError("bad\nvalue")
    except ValueError:
        log.exception("step %d failed", 3)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first["message"] == "scan s1 configured"
    assert (first["level"], first["logger"], first["scan_id"], first["steps"]) == (
        "info", "n2i_stream.test", "s1", 6,
    )  # fmt: skip
    assert first["time"].endswith("Z")
    assert second["level"] == "error"
    assert "ValueError: bad\nvalue" in second["exception"]


def test_text_logs_keep_each_event_on_one_line(root_logging):
    out = io.StringIO()
    setup_logging("warning", "text", stream=out)
    log = logging.getLogger("n2i_stream.test")
    log.info("not shown")
    log.warning("two\nlines", extra={"scan_id": "s2"})
    (line,) = out.getvalue().splitlines()
    assert " WARNING n2i_stream.test: two\\nlines scan_id=s2" in line


def status(scan_id: str | None, state: str, received: int, fbp: int = 0) -> dict[str, Any]:
    return {
        "scan_id": scan_id, "state": state, "version": "t",
        "counters": {"received": received, "bad": 1, "bad_reasons": {"truncated": 1}},
        "steps": {"published_fbp": fbp, "published_denoised": 0},
    }  # fmt: skip


def test_totals_add_up_over_scans_even_with_the_same_scan_id():
    totals = StatusTotals()
    sequence = [
        status(None, "idle", 0),
        status("a", "acquiring", 0),  # configured
        status("a", "streaming", 50, 2),
        status("a", "done", 80, 3),
        status("a", "acquiring", 80, 3),  # the next scan, seen before it replaced the last
        status("a", "streaming", 10, 1),  # same id, new scan
        status("b", "streaming", 5),  # a scan change the exporter only saw later
    ]
    for s in sequence:
        totals.update(s)
    t = totals.totals()
    assert t["frames", "received"] == 80 + 10 + 5
    assert t["steps", "published_fbp"] == 3 + 1
    assert t["frames", "bad"] == 3
    assert t["bad_reason", "truncated"] == 3
    assert totals.scans == 3


def fetch(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample of a scrape."""
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    raise AssertionError(f"no sample {name} {labels} in the scrape")


class FakeStatus:
    """A status provider that can fail or report a fatal error."""

    def __init__(self) -> None:
        self.fail = False
        self.value: dict[str, Any] = status(None, "idle", 0)

    def __call__(self) -> Mapping[str, Any]:
        if self.fail:
            raise RuntimeError("service gone")
        return self.value


def test_healthz_follows_the_status_reads():
    provider = FakeStatus()
    with MetricsExporter(provider, port=0, interval_s=60.0) as exporter:
        code, body = fetch(exporter.url + "/healthz")
        assert code == 200
        assert json.loads(body)["status"] == "ok"
        assert json.loads(body)["state"] == "idle"
        provider.fail = True
        exporter.poll()
        code, body = fetch(exporter.url + "/healthz")
        assert code == 503
        assert "service gone" in json.loads(body)["reason"]
        assert sample(fetch(exporter.url + "/metrics")[1], "n2i_up") == 0.0
        provider.fail = False
        provider.value = {**status(None, "failed", 0), "fatal": "the frame source failed"}
        exporter.poll()
        code, body = fetch(exporter.url + "/healthz")
        assert code == 503
        assert json.loads(body)["reason"] == "the frame source failed"
        assert fetch(exporter.url + "/nothing")[0] == 404


def test_metrics_move_while_a_simulated_scan_runs(tmp_path):
    frames = list(DynamicScan(SIM).frames())
    references = SIM.n_darks + SIM.n_flats
    first = frames[: references + 3 * SIM.per_step]  # darks, flats, three time steps
    exporter = MetricsExporter(lambda: lb.service.status(), port=0, interval_s=0.05)
    with Loopback(options=PipelineOptions(infer_threads=1), sinks=[exporter.sink]) as lb:
        lb.service.add_state_listener(lambda state, reason: exporter.poll())
        exporter.start()
        try:
            before = fetch(exporter.url + "/metrics")[1]
            assert sample(before, "n2i_frames_received_total") == 0
            assert sample(before, "n2i_state", state="idle") == 1
            scan = scan_config_for(
                SIM, scan_id="m1", train_steps=3, train_iterations=4, training=TINY,
                output=str(tmp_path / "m1.h5"),
            )  # fmt: skip
            lb.service.configure(scan)
            stream(frame_messages(first, "n2i"), lb.data_endpoint, context=lb.context)
            wait_until(lambda: lb.service.status()["steps"]["published_fbp"] >= 3, timeout=60.0)
            exporter.poll()
            during = fetch(exporter.url + "/metrics")[1]
            stream(
                frame_messages(frames[len(first) :], "n2i"), lb.data_endpoint, context=lb.context
            )
            assert lb.service.wait_for({"done", "failed"}, timeout=60) == "done"
            after = fetch(exporter.url + "/metrics")[1]
            assert fetch(exporter.url + "/healthz")[0] == 200
        finally:
            exporter.close()

    assert sample(during, "n2i_frames_received_total") == len(first)
    assert sample(during, "n2i_steps_published_total", kind="fbp") >= 3
    assert sample(during, "n2i_state", state="idle") == 0
    assert sample(after, "n2i_frames_received_total") == len(frames)
    assert sample(after, "n2i_steps_published_total", kind="fbp") == SIM.steps
    assert sample(after, "n2i_steps_published_total", kind="denoised") == SIM.steps
    assert sample(after, "n2i_state", state="done") == 1
    assert sample(after, "n2i_training_iteration") == 4
    assert sample(after, "n2i_training_state", state="done") == 1
    assert sample(after, "n2i_frames_bad_total") == sample(after, "n2i_frames_dropped_total") == 0
    latency_count = sample(after, "n2i_step_latency_seconds_count", kind="fbp")
    assert latency_count == SIM.steps
    assert sample(after, "n2i_step_latency_seconds_count", kind="denoised") == SIM.steps
    assert sample(after, "n2i_step_latency_seconds_bucket", kind="fbp", le="+Inf") == SIM.steps
    assert sample(after, "process_resident_memory_bytes") > 0
    assert sample(after, "n2i_scans_total") == 1


def test_operations_wire_the_settings_into_a_running_service(tmp_path):
    import zmq

    from n2i_stream.io.curve import client_context, generate_keys
    from n2i_stream.io.zmq_sink import ZmqResultSink
    from n2i_stream.io.zmq_source import ZmqFrameSource
    from n2i_stream.learn.registry import ModelRegistry
    from n2i_stream.service.control import ControlClient, ControlHandler, ControlServer
    from n2i_stream.service.operations import Operations
    from n2i_stream.service.resume import ScanJournal
    from n2i_stream.service.service import N2IService
    from n2i_stream.settings import load_settings

    keys = generate_keys(tmp_path / "keys", clients=("bluesky",))
    settings = load_settings(
        env={},
        overrides={
            "data.endpoint": "tcp://127.0.0.1:*", "control.endpoint": "tcp://127.0.0.1:*",
            "results.endpoint": "tcp://127.0.0.1:*", "control.curve": True,
            "security.server_secret_key": str(keys.server_secret),
            "security.authorized_keys": str(keys.authorized),
            "metrics.enabled": True, "metrics.port": 0, "metrics.interval_s": 0.05,
            "state.directory": str(tmp_path / "state"),
            "registry.directory": str(tmp_path / "models"), "registry.detector": "sim",
            "output.directory": str(tmp_path), "output.write_by_default": True,
            "devices.infer_threads": 1,
        },
    )  # fmt: skip
    ops = Operations(settings, logging_setup=False)
    ctx = zmq.Context()
    source = ZmqFrameSource(settings.data, context=ops.context("data", ctx))
    service = N2IService(source, options=settings.pipeline_options(), journal=ops.journal)
    results = ZmqResultSink(settings.results, context=ops.context("results", ctx))
    service.add_sink(results)
    ops.attach(service)
    service.start()
    control = ControlServer(
        settings.control.endpoint, ControlHandler(service), context=ops.context("control", ctx)
    )
    control.start()
    client_ctx = client_context(keys.server_public, keys.clients["bluesky"])
    try:
        ops.start()
        assert ops.resume(service) is None
        client = ControlClient(str(control.endpoint), context=client_ctx, timeout=30)
        scan = scan_config_for(SIM, scan_id="ops", train_steps=3, train_iterations=3, training=TINY)
        client.call("configure", scan=settings.scan(scan))
        frames = list(DynamicScan(SIM).frames())
        stream(frame_messages(frames, "n2i"), source.endpoint, context=ctx)
        assert service.wait_for({"done", "failed"}, timeout=60) == "done"
        exporter = ops.exporter
        exporter.poll()
        scrape = fetch(exporter.url + "/metrics")[1]
        assert sample(scrape, "n2i_frames_received_total") == len(frames)
        assert fetch(exporter.url + "/healthz")[0] == 200
        client.close()
    finally:
        service.close()
        control.close()
        results.close()
        client_ctx.term()
        ops.close()
        ctx.term()
    assert (tmp_path / "ops.h5").exists()  # the output directory's default name
    (record,) = ScanJournal(tmp_path / "state").records()
    assert (record.state, record.reason, record.model) == (
        "finished", "done", str(tmp_path / "ops.model.pt"),
    )  # fmt: skip
    (entry,) = ModelRegistry(tmp_path / "models").entries()
    assert (entry.scan_id, entry.key.detector) == ("ops", "sim")
