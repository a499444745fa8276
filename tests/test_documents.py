"""The document-driven mode: Bluesky documents over ZMQ, msgpack only, starts and stops of runs."""

from __future__ import annotations

import pickle
import threading
from collections.abc import Callable, Iterator

import msgpack
import numpy as np
import pytest
import zmq

from n2i_stream.errors import ConfigError
from n2i_stream.service.documents import (
    DocumentError,
    DocumentListener,
    DocumentListenerConfig,
    RunStop,
    ScanStart,
    decode_message,
    encode_message,
    looks_like_pickle,
    packb,
    unpackb,
)
from n2i_stream.service.scan_config import ScanConfig

SCAN = {
    "scan_id": "doc-scan",
    "rows": 4,
    "cols": 32,
    "frames_per_step": 8,
    "steps": 5,
    "angle_start": 0.0,
    "angle_step": 23.2,
    "projection_ids": [[4, 40]],
    "dark_ids": [[0, 2]],
    "flat_ids": [[2, 2]],
    "train_steps": 3,
}


def start_doc(uid: str = "run-1", control: str = "documents", **extra) -> dict:
    return {"uid": uid, "time": 1.5, "n2i": {"scan": dict(SCAN), "control": control}, **extra}


class Recorder:
    """DocumentCallbacks that records what it is given (and can be told to fail)."""

    def __init__(self, fail: bool = False) -> None:
        self.starts: list[ScanStart] = []
        self.stops: list[RunStop] = []
        self.fail = fail
        self.changed = threading.Condition()

    def on_start(self, start: ScanStart) -> None:
        if self.fail:
            raise RuntimeError("the service refused")
        with self.changed:
            self.starts.append(start)
            self.changed.notify_all()

    def on_stop(self, stop: RunStop) -> None:
        with self.changed:
            self.stops.append(stop)
            self.changed.notify_all()

    def wait(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        with self.changed:
            assert self.changed.wait_for(predicate, timeout), "callbacks not called in time"


def listener_for(recorder: Recorder, **config) -> DocumentListener:
    config.setdefault("endpoint", "tcp://127.0.0.1:*")
    config.setdefault("bind", True)
    return DocumentListener(
        DocumentListenerConfig(**config),
        recorder,
        scan_factory=lambda table: ScanConfig.from_mapping(table, source="start document"),
    )


# -- msgpack with NumPy ---------------------------------------------------------------------------


def test_msgpack_round_trip_keeps_numpy_arrays_and_scalars():
    doc = {
        "a": np.arange(12, dtype=">u2").reshape(3, 4),
        "f": np.linspace(0, 1, 5, dtype=np.float32),
        "b": np.array([True, False]),
        "s": np.array(["x", "yz"]),
        "scalar": np.float32(2.5),
        "float64": np.float64(0.25),  # a float subclass: msgpack writes a plain float
        "i": np.int16(-3),
        "c": 1 + 2j,
        "nested": {"list": [1, np.int64(7)], "text": "ok"},
    }
    out = unpackb(packb(doc))
    np.testing.assert_array_equal(out["a"], doc["a"])
    assert out["a"].dtype == np.dtype(">u2")
    np.testing.assert_array_equal(out["f"], doc["f"])
    np.testing.assert_array_equal(out["b"], doc["b"])
    np.testing.assert_array_equal(out["s"], doc["s"])
    assert out["scalar"] == 2.5
    assert out["scalar"].dtype == np.float32
    assert out["float64"] == 0.25
    assert out["i"] == -3
    assert out["c"] == 1 + 2j
    assert out["nested"] == {"list": [1, 7], "text": "ok"}


def test_msgpack_numpy_encoded_documents_decode():
    mpn = pytest.importorskip("msgpack_numpy")
    doc = {"angles": np.linspace(0, 180, 7), "n": np.int32(4)}
    out = unpackb(msgpack.packb(doc, default=mpn.encode))
    np.testing.assert_array_equal(out["angles"], doc["angles"])
    assert out["n"] == 4


def test_an_encoded_object_array_is_refused_as_a_pickle():
    payload = msgpack.packb(
        {"x": {b"nd": True, b"type": "|O", b"kind": b"O", b"shape": [1], b"data": b"\x80\x04."}}
    )
    with pytest.raises(DocumentError, match="pickle") as info:
        unpackb(payload)
    assert info.value.reason == "pickle"


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (
            {b"nd": True, b"type": "<f8", b"kind": b"", b"shape": [3], b"data": b"\0" * 8},
            "bad_numpy",
        ),
        ({b"nd": True, b"type": "not-a-dtype", b"shape": [1], b"data": b"\0"}, "bad_numpy"),
        (
            {b"nd": True, b"type": "V8", b"kind": b"", b"shape": [1], b"data": b"\0" * 8},
            "bad_numpy",
        ),
        ({b"nd": False, b"type": "<f8", b"data": b"\0" * 3}, "bad_numpy"),
    ],
)
def test_bad_encoded_arrays_are_refused(value, reason):
    with pytest.raises(DocumentError) as info:
        unpackb(msgpack.packb({"x": value}))
    assert info.value.reason == reason


class _Trap:
    """Unpickling this would set ``_Trap.sprung``: proof that nothing is ever unpickled."""

    sprung = False

    def __reduce__(self):
        return (_spring, ())


def _spring():
    _Trap.sprung = True
    return "sprung"


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_pickled_payloads_are_recognised_and_never_loaded(protocol):
    payload = pickle.dumps({"uid": "x", "trap": _Trap()}, protocol=protocol)
    assert looks_like_pickle(payload)
    with pytest.raises(DocumentError, match="pickle") as info:
        decode_message(b" start " + payload)
    assert info.value.reason == "pickle"
    assert not _Trap.sprung


def test_msgpack_payloads_are_not_taken_for_pickles():
    for doc in ({}, {"uid": "x"}, [1, 2], "text", {"time": 1.0, "data": {"a": 1}}):
        assert not looks_like_pickle(packb(doc))


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (b"start-without-spaces", "malformed_frame"),
        (b" bogus " + packb({}), "not_a_document"),
        (b" start " + packb([1, 2]), "not_a_document"),
        (b" start \xc1", "malformed_msgpack"),
        (b" start " + packb({}) + b"trailing", "malformed_msgpack"),
    ],
)
def test_malformed_messages_are_refused_with_a_reason(message, reason):
    with pytest.raises(DocumentError) as info:
        decode_message(message)
    assert info.value.reason == reason


def test_encode_message_is_the_proxy_frame_format():
    message = encode_message("start", {"uid": "u"}, prefix=b"bl")
    assert message.startswith(b"bl start ")
    assert decode_message(message) == (b"bl", "start", {"uid": "u"})
    assert decode_message(encode_message("stop", {"uid": "v"}))[:2] == (b"", "stop")
    with pytest.raises(ConfigError, match="space"):
        encode_message("start", {}, prefix=b"a b")


# -- the listener's logic, without a socket -------------------------------------------------------


def test_start_and_stop_documents_start_and_end_a_session():
    recorder = Recorder()
    listener = listener_for(recorder)
    listener.handle(encode_message("start", start_doc(angles_extra=np.arange(3))))
    listener.handle(encode_message("descriptor", {"uid": "d", "run_start": "run-1"}))
    listener.handle(
        encode_message(
            "stop", {"uid": "s", "run_start": "run-1", "exit_status": "abort", "reason": "user"}
        )
    )
    (start,) = recorder.starts
    assert isinstance(start.scan, ScanConfig)
    assert start.scan.scan_id == "doc-scan"
    assert start.scan.angle_step == 23.2
    assert start.scan.dark_ids == ((0, 2),)
    assert (start.run_uid, start.scan_id, start.time) == ("run-1", "doc-scan", 1.5)
    assert recorder.stops == [RunStop("run-1", "doc-scan", "abort", "user")]
    c = listener.counters()
    assert (c.received, c.starts, c.stops, c.ignored, c.refused) == (3, 1, 1, 1, 0)
    listener.close()


def test_numpy_values_in_the_scan_table_become_plain_data():
    recorder = Recorder()
    listener = listener_for(recorder)
    doc = start_doc()
    doc["n2i"]["scan"] |= {"angle_step": None, "angle_start": 0.0}
    doc["n2i"]["scan"]["angles"] = np.linspace(0.0, 900.0, 40)
    doc["n2i"]["scan"]["steps"] = np.int64(5)
    listener.handle(encode_message("start", doc))
    (start,) = recorder.starts
    assert start.scan.angles == tuple(np.linspace(0.0, 900.0, 40))
    assert start.scan.steps == 5
    listener.close()


def test_runs_a_device_controls_and_runs_without_n2i_are_ignored():
    recorder = Recorder()
    listener = listener_for(recorder)
    listener.handle(encode_message("start", start_doc("dev", control="device")))
    listener.handle(encode_message("start", {"uid": "plain", "time": 1.0}))
    listener.handle(
        encode_message("stop", {"uid": "s", "run_start": "dev", "exit_status": "success"})
    )
    listener.handle(encode_message("stop", {"uid": "t", "run_start": "never-seen"}))
    assert recorder.starts == []
    assert recorder.stops == []
    assert listener.counters().ignored == 4
    listener.close()
    everything = listener_for(recorder, accept="all")
    everything.handle(encode_message("start", start_doc("dev", control="device")))
    assert [s.run_uid for s in recorder.starts] == ["dev"]
    everything.close()


def test_bad_starts_and_failing_callbacks_are_counted_and_the_listener_goes_on():
    recorder = Recorder()
    listener = listener_for(recorder)
    listener.handle(encode_message("start", {"uid": "a", "n2i": "not a table"}))
    listener.handle(encode_message("start", {"uid": "b", "n2i": {"control": "documents"}}))
    bad_scan = start_doc("c")
    bad_scan["n2i"]["scan"]["train_steps"] = 9  # not fewer than the 5 steps
    listener.handle(encode_message("start", bad_scan))
    listener.handle(b" start " + pickle.dumps(start_doc("d")))
    c = listener.counters()
    assert c.refused_reasons == {"bad_n2i": 2, "pickle": 1}
    assert c.rejected_starts == 1
    assert "train_steps" in (listener.last_error or "") or "pickle" in (listener.last_error or "")
    assert recorder.starts == []
    # A stop for the refused start is not a stop of a session.
    listener.handle(encode_message("stop", {"uid": "s", "run_start": "c"}))
    assert recorder.stops == []
    listener.handle(encode_message("start", start_doc("e")))
    assert [s.run_uid for s in recorder.starts] == ["e"]
    listener.close()

    failing = Recorder(fail=True)
    listener = listener_for(failing)
    listener.handle(encode_message("start", start_doc("f")))
    assert listener.counters().callback_errors == 1
    assert "the service refused" in (listener.last_error or "")
    listener.close()


def test_prefix_selects_one_publisher():
    recorder = Recorder()
    listener = listener_for(recorder, prefix="bl7")
    listener.handle(encode_message("start", start_doc("other"), prefix=b"bl8"))
    listener.handle(encode_message("start", start_doc("ours"), prefix=b"bl7"))
    assert [s.run_uid for s in recorder.starts] == ["ours"]
    listener.close()


def test_config_is_checked():
    with pytest.raises(ConfigError, match="endpoint"):
        DocumentListenerConfig(endpoint="localhost:5578")
    with pytest.raises(ConfigError, match="prefix"):
        DocumentListenerConfig(endpoint="tcp://h:1", prefix="a b")
    with pytest.raises(ConfigError, match="accept"):
        DocumentListenerConfig(endpoint="tcp://h:1", accept="some")  # type: ignore[arg-type]


# -- over ZMQ, from a RunEngine -------------------------------------------------------------------


@pytest.fixture
def listening() -> Iterator[tuple[DocumentListener, Recorder]]:
    recorder = Recorder()
    listener = listener_for(recorder)
    listener.start()
    try:
        yield listener, recorder
    finally:
        listener.close()
    assert listener.error is None


def _until_subscribed(listener: DocumentListener, publish: Callable[[], None]) -> None:
    """PUB drops messages until the subscription has arrived: probe until one is received."""
    pause = threading.Event()
    for _ in range(1000):
        publish()
        if listener.counters().received:
            return
        pause.wait(0.01)
    raise AssertionError("the listener never received a probe")


def test_a_runengine_publishing_msgpack_starts_and_stops_a_session(listening):
    bluesky = pytest.importorskip("bluesky")
    from bluesky.callbacks.zmq import Publisher
    from bluesky.plans import count

    listener, recorder = listening
    publisher = Publisher(listener.endpoint.replace("tcp://", ""), prefix=b"", serializer=packb)
    try:
        _until_subscribed(listener, lambda: publisher("descriptor", {"uid": "probe"}))
        RE = bluesky.RunEngine({})
        RE.subscribe(publisher)
        md = {"n2i": {"scan": dict(SCAN), "control": "documents"}}
        (uid,) = RE(count([], num=1, md=md))
        recorder.wait(lambda: len(recorder.stops) == 1)
    finally:
        publisher.close()
    (start,) = recorder.starts
    assert start.run_uid == uid
    assert start.scan.scan_id == "doc-scan"
    assert recorder.stops == [RunStop(uid, "doc-scan", "success", "")]
    assert listener.counters().refused == 0


def test_a_pickling_publisher_is_refused_and_counted(listening):
    pytest.importorskip("bluesky")
    from bluesky.callbacks.zmq import Publisher

    listener, recorder = listening
    publisher = Publisher(listener.endpoint.replace("tcp://", ""))  # the default: pickle
    try:
        _until_subscribed(listener, lambda: publisher("start", start_doc()))
    finally:
        publisher.close()
    c = listener.counters()
    assert c.refused_reasons["pickle"] == c.received >= 1
    assert recorder.starts == []
    assert "msgpack" in (listener.last_error or "")


def test_start_reports_a_socket_that_cannot_bind():
    with zmq.Context() as ctx:
        taken = ctx.socket(zmq.PULL)
        try:
            taken.bind("tcp://127.0.0.1:*")
            listener = listener_for(Recorder(), endpoint=taken.getsockopt_string(zmq.LAST_ENDPOINT))
            with pytest.raises(Exception, match="cannot bind"):
                listener.start()
            listener.close()
        finally:
            taken.close(linger=0)
