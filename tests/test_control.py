"""The control socket: the protocol of service/control.py, its errors, and a busy service."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator

import pytest
import zmq

from n2i_stream import __version__
from n2i_stream.errors import ConfigError, ModelError, ServiceError
from n2i_stream.service.control import COMMANDS, ControlHandler, parse_request
from n2i_stream.service.loopback import Loopback
from n2i_stream.service.pipeline import PipelineOptions
from n2i_stream.service.sinks import StepResult
from n2i_stream.sim.scan import DynamicScan, SimConfig
from n2i_stream.sim.stream import frame_messages, scan_config_for, stream

SIM = SimConfig(width=16, rows=2, steps=4, per_step=12, n_darks=2, n_flats=2, supersample=1)
TINY = {"depth": 2, "width": 4, "crop": 8, "batch": 2}


def scan(**fields) -> dict:
    fields.setdefault("train_steps", 2)
    fields.setdefault("train_iterations", 2)
    fields.setdefault("training", TINY)
    return scan_config_for(SIM, **fields)


class Gate:
    """A sink that holds the publisher until opened: keeps a scan busy on purpose."""

    def __init__(self) -> None:
        self.open = threading.Event()

    def put(self, result: StepResult) -> None:
        self.open.wait(60)

    def close(self) -> None:
        self.open.set()


@pytest.fixture
def gate() -> Gate:
    return Gate()


@pytest.fixture
def lb(gate) -> Iterator[Loopback]:
    with Loopback(options=PipelineOptions(infer_threads=1), sinks=[gate]) as loopback:
        yield loopback
        gate.open.set()  # a failed test must not leave the publisher waiting


@pytest.fixture
def client(lb):
    return lb.client(timeout=30)


def error_of(reply: dict) -> tuple[str, str]:
    assert reply["ok"] is False
    return reply["error"]["type"], reply["error"]["message"]


def test_ping_and_status_follow_the_contract(client):
    assert client.call("ping") == {"ok": True, "version": __version__, "state": "idle"}
    status = client.call("status")["status"]
    assert set(status) >= {
        "state", "scan_id", "reason", "output", "version", "counters", "steps", "training",
        "latency_s", "ingest",
    }  # fmt: skip
    assert set(status["counters"]) >= {
        "received", "bad", "duplicate", "out_of_order", "wrapped", "dropped", "outside_range",
        "late", "dropped_overload", "bad_reasons",
    }  # fmt: skip
    assert set(status["steps"]) >= {
        "total", "received", "published_fbp", "published_denoised", "last_published", "backlog",
    }  # fmt: skip
    assert set(status["training"]) >= {
        "state", "iteration", "iterations", "loss", "eta_s", "elapsed_s", "losses",
    }  # fmt: skip
    assert set(status["latency_s"]) == {"last", "median", "max"}
    assert set(status["ingest"]) == {"frames_per_s", "bytes_per_s"}


@pytest.mark.parametrize(
    ("request_", "match"),
    [
        ({"command": "launch"}, "unknown command 'launch'"),
        ({}, "unknown command None"),
        ({"command": "ping", "verbose": True}, "unknown key 'verbose'"),
        ({"command": "stop", "wait": "yes"}, "'wait': expected true or false"),
        ({"command": "stop", "timeout": "soon"}, "'timeout'"),
        ({"command": "configure"}, "missing key 'scan'"),
        ({"command": "configure", "scan": {"scan_id": "x"}}, "missing key 'rows'"),
        ({"command": "configure", "scan": {**scan(), "speed": 3}}, "unknown key 'speed'"),
        ({"command": "configure", "scan": scan(train_steps=9)}, "train_steps"),
    ],
)
def test_bad_requests_are_config_errors_and_leave_the_service_alone(client, request_, match):
    kind, message = error_of(_raw(client, request_))
    assert kind == "ConfigError"
    assert match in message
    assert client.call("ping")["state"] == "idle"


def _raw(client, body: dict) -> dict:
    client._sock.send(json.dumps(body).encode())
    return json.loads(client._sock.recv())


@pytest.mark.parametrize(
    ("raw", "match"),
    [(b"{not json", "expected a UTF-8 JSON object"), (b"[1, 2]", "expected a JSON object")],
)
def test_malformed_requests(client, raw, match):
    client._sock.send(raw)
    kind, message = error_of(json.loads(client._sock.recv()))
    assert kind == "ConfigError"
    assert match in message


def test_a_dealer_client_and_a_request_in_two_frames(lb):
    dealer = lb.context.socket(zmq.DEALER)
    dealer.linger = 0
    try:
        dealer.connect(lb.control_endpoint)
        dealer.send_multipart([b"", b'{"command": "ping"}'])
        assert json.loads(dealer.recv_multipart()[-1])["ok"] is True
        dealer.send_multipart([b"", b'{"command":', b'"ping"}'])
        kind, message = error_of(json.loads(dealer.recv_multipart()[-1]))
        assert kind == "ConfigError"
        assert "one JSON frame" in message
    finally:
        dealer.close()


def test_configure_errors_name_their_cause(client, tmp_path):
    kind, message = error_of(client.request("configure", scan=scan(model=str(tmp_path / "no.pt"))))
    assert (kind, "no such model file" in message) == ("ModelError", True)
    (tmp_path / "taken.h5").write_bytes(b"")
    kind, message = error_of(
        client.request("configure", scan=scan(output=str(tmp_path / "taken.h5")))
    )
    assert kind == "DataFileError"
    assert "exists" in message
    with pytest.raises(ModelError):
        client.call("configure", scan=scan(model=str(tmp_path / "no.pt")))
    with pytest.raises(ServiceError, match="DataFileError"):
        client.call("configure", scan=scan(output=str(tmp_path / "taken.h5")))
    assert client.call("status")["status"]["state"] == "idle"


def test_a_busy_service_refuses_configure_and_answers_status_while_a_stop_waits(lb, gate, client):
    frames = list(DynamicScan(SIM).frames())
    reply = client.call("configure", scan=scan(scan_id="first"))
    assert reply == {"ok": True, "scan_id": "first", "state": "acquiring"}
    kind, message = error_of(client.request("configure", scan=scan(scan_id="second")))
    assert kind == "ServiceError"
    assert "busy with scan 'first' in state 'acquiring'" in message
    stream(frame_messages(frames[: len(frames) // 2], "n2i"), lb.data_endpoint, context=lb.context)

    stopper = lb.client()
    stopper._sock.send(b'{"command": "stop"}')  # waits: the gate holds the results back
    assert not stopper._sock.poll(100)
    status = client.call("status")["status"]  # answered meanwhile
    assert status["scan_id"] == "first"
    assert status["state"] in ("acquiring", "training")
    gate.open.set()
    assert stopper._sock.poll(30_000)
    assert json.loads(stopper._sock.recv()) == {"ok": True, "state": "done", "scan_id": "first"}
    status = client.call("status")["status"]
    assert (status["state"], status["reason"]) == ("done", "stopped")
    assert client.call("configure", scan=scan(scan_id="second"))["scan_id"] == "second"
    assert client.call("abort")["state"] == "done"
    assert client.call("status")["status"]["reason"] == "aborted"


def test_stop_without_waiting_and_with_a_timeout(lb, gate, client):
    client.call("configure", scan=scan(scan_id="slow"))
    frames = list(DynamicScan(SIM).frames())
    stream(frame_messages(frames, "n2i"), lb.data_endpoint, context=lb.context)
    kind, message = error_of(client.request("stop", timeout=0.05))
    assert kind == "ServiceError"
    assert "did not finish within 0.05 s" in message
    reply = client.call("stop", wait=False)
    assert reply["scan_id"] == "slow"
    gate.open.set()
    lb.service.wait_for({"done"}, timeout=30)


def test_shutdown_needs_a_serve_process(client):
    with pytest.raises(ServiceError, match="only available in a serve process"):
        client.call("shutdown")
    called = threading.Event()
    handler = ControlHandler(None, on_shutdown=called.set)
    assert handler(b'{"command": "shutdown"}') == {"ok": True}
    assert called.is_set()


def test_parse_request_knows_every_command():
    assert set(COMMANDS) == {"ping", "configure", "status", "stop", "abort", "shutdown"}
    request = parse_request(b'{"command": "stop", "wait": false, "timeout": 2}')
    assert (request.command, request.arguments.wait, request.arguments.timeout) == (
        "stop", False, 2.0,
    )  # fmt: skip
    with pytest.raises(ConfigError, match="unknown command"):
        parse_request(b'{"command": "reboot"}')
