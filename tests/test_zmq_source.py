"""Frame sources: the ZMQ receive thread on loopback, and the in-memory twin."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator

import numpy as np
import pytest
import zmq
from polling import wait_until

from n2i_stream.config import from_mapping
from n2i_stream.errors import ConfigError, ServiceError
from n2i_stream.io.memory_source import MemoryFrameSource
from n2i_stream.io.zmq_source import ZmqFrameSource, ZmqSourceConfig
from n2i_stream.wire import FrameSource, frame_message

SHAPE = (6, 8)


def _frame(i: int) -> np.ndarray:
    return np.full(SHAPE, i, dtype=np.uint16) + np.arange(SHAPE[1], dtype=np.uint16)


@pytest.fixture
def ctx() -> Iterator[zmq.Context]:
    context = zmq.Context()
    yield context
    context.term()  # hangs (and the test times out) if any socket was left open


@pytest.fixture
def sockets(ctx) -> Iterator[Callable[[int], zmq.Socket]]:
    made: list[zmq.Socket] = []

    def make(kind: int) -> zmq.Socket:
        s = ctx.socket(kind)
        s.linger = 1000
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


@pytest.fixture(params=["zero_copy", "pool"])
def sources(ctx, request) -> Iterator[Callable[..., ZmqFrameSource]]:
    """Started sources (each test runs with both payload modes), closed and checked at the end."""
    made: list[ZmqFrameSource] = []

    def make(**fields) -> ZmqFrameSource:
        fields.setdefault("payload", request.param)
        fields.setdefault("buffer_bytes", 4096)
        fields.setdefault("buffers", 8)
        src = ZmqFrameSource(ZmqSourceConfig(**fields), context=ctx)
        made.append(src)
        src.start()
        return src

    yield make
    for src in made:
        src.close()
        assert not src.running


def test_pull_source_receives_every_dialect_and_counts_bad_messages(sources, sockets):
    src = sources(endpoint="tcp://127.0.0.1:*", bind=True, buffer_bytes=_frame(0).nbytes)
    assert isinstance(src, FrameSource)
    push = sockets(zmq.PUSH)
    push.connect(src.endpoint)
    good = {0: "n2i", 3: "array-1.0", 6: "gigafrost"}
    header = json.loads(frame_message("n2i", 9, _frame(9), kind="projection")[0])
    for i in range(8):
        if i in good:
            push.send_multipart(frame_message(good[i], i, _frame(i), kind="flat"), copy=False)
    push.send_multipart([b"not json", b"x"])
    push.send_multipart([json.dumps(header).encode()])  # no payload
    push.send_multipart([json.dumps(header).encode(), b"\x00" * 5])
    push.send_multipart([json.dumps(header).encode(), _frame(9).tobytes(), b"extra"])
    big = np.zeros((64, 64), np.uint16)
    push.send_multipart(frame_message("n2i", 10, big, kind="projection"))
    push.send_multipart([json.dumps({**header, "htype": "other"}).encode(), b""])
    push.send_multipart(frame_message("n2i", 11, _frame(11), kind="dark"), copy=False)

    got = []
    for _ in range(4):
        frame = src.recv(timeout=10)
        assert frame is not None
        with frame:
            got.append((frame.header.frame_id, frame.header.kind, frame.data.copy()))
    assert [g[:2] for g in got] == [(0, "flat"), (3, None), (6, "flat"), (11, "dark")]
    for fid, _, data in got:
        np.testing.assert_array_equal(data, _frame(fid))
    counters = src.counters()
    assert counters.received == 4
    assert counters.bytes == 4 * _frame(0).nbytes
    assert counters.bad_reasons == {
        "malformed_json": 1,
        "missing_payload": 1,
        "size_mismatch": 1,
        "extra_parts": 1,
        "too_large": 1,
        "unknown_htype": 1,
    }
    assert counters.bad == 6
    assert src.error is None


def test_sub_source_connects_to_a_publisher(sources, sockets):
    pub = sockets(zmq.PUB)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    src = sources(endpoint=f"tcp://127.0.0.1:{port}", socket_type="sub")
    # PUB drops everything until the subscription has travelled: publish probes until one lands.
    probe = None
    for _ in range(5000):
        pub.send_multipart(frame_message("n2i", 0, _frame(0), kind="dark"))
        probe = src.recv(timeout=0.002)
        if probe is not None:
            break
    assert probe is not None
    probe.release()
    while (extra := src.recv(timeout=0)) is not None:  # probes that were already in flight
        extra.release()
    for i in range(1, 4):
        pub.send_multipart(frame_message("array-1.0", i, _frame(i)), copy=False)
    for i in range(1, 4):
        frame = src.recv(timeout=10)
        assert frame is not None
        assert frame.header.frame_id == i
        np.testing.assert_array_equal(frame.data, _frame(i))
        frame.release()


def test_drop_oldest_keeps_the_newest_frames(sources, sockets):
    src = sources(endpoint="tcp://127.0.0.1:*", bind=True, buffers=3, overload="drop_oldest")
    push = sockets(zmq.PUSH)
    push.connect(src.endpoint)
    for i in range(10):
        push.send_multipart(frame_message("n2i", i, _frame(i), kind="projection"))
    wait_until(lambda: src.counters().received == 10)
    counters = src.counters()
    assert counters.dropped_overload == 7
    assert counters.queued == 3
    ids = []
    while (frame := src.recv(timeout=0)) is not None:
        ids.append(frame.header.frame_id)
        np.testing.assert_array_equal(frame.data, _frame(frame.header.frame_id))
        frame.release()
    assert ids == [7, 8, 9]


def test_block_waits_for_the_consumer_and_loses_nothing(sources, sockets):
    src = sources(endpoint="tcp://127.0.0.1:*", bind=True, buffers=2, overload="block")
    push = sockets(zmq.PUSH)
    push.connect(src.endpoint)
    for i in range(6):
        push.send_multipart(frame_message("n2i", i, _frame(i), kind="projection"))
    wait_until(lambda: src.counters().blocked)
    assert src.counters().received == 2
    assert src.counters().queued == 2
    ids = []
    for _ in range(6):
        frame = src.recv(timeout=10)
        assert frame is not None
        ids.append(frame.header.frame_id)
        np.testing.assert_array_equal(frame.data, _frame(frame.header.frame_id))
        frame.release()
    assert ids == list(range(6))
    counters = src.counters()
    assert counters.dropped_overload == 0
    assert counters.blocked_seconds > 0


def test_a_frame_holds_its_buffer_until_released(sources, sockets):
    src = sources(endpoint="tcp://127.0.0.1:*", bind=True, buffers=1)
    push = sockets(zmq.PUSH)
    push.connect(src.endpoint)
    for i in range(2):
        push.send_multipart(frame_message("n2i", i, _frame(i), kind="projection"))
    first = src.recv(timeout=10)
    assert first is not None
    assert src.recv(timeout=0.05) is None  # the only buffer is still ours
    first.release()
    first.release()  # idempotent
    assert first.data.size == 0  # a stale read cannot see the next frame's pixels
    second = src.recv(timeout=10)
    assert second is not None
    assert second.header.frame_id == 1
    second.release()


def test_stop_while_blocked_is_prompt_and_keeps_queued_frames(sources, sockets):
    src = sources(endpoint="tcp://127.0.0.1:*", bind=True, buffers=2, overload="block")
    push = sockets(zmq.PUSH)
    push.connect(src.endpoint)
    for i in range(4):
        push.send_multipart(frame_message("n2i", i, _frame(i), kind="projection"))
    wait_until(lambda: src.counters().blocked)  # the third frame waits for a buffer
    src.stop(timeout=10)
    assert not src.running
    assert src.counters().discarded_at_stop == 1  # the third frame, waiting for a buffer
    kept = [src.recv(timeout=0), src.recv(timeout=0)]
    assert [f.header.frame_id for f in kept if f is not None] == [0, 1]
    assert src.recv(timeout=None) is None  # stopped and drained: no wait


def test_a_failed_receive_thread_is_reported_not_waited_on(sources, sockets, monkeypatch):
    import n2i_stream.io.zmq_source as zmq_source

    def broken(raw, **kwargs):
        raise RuntimeError("parser bug")

    src = sources(endpoint="tcp://127.0.0.1:*", bind=True)
    push = sockets(zmq.PUSH)
    push.connect(src.endpoint)
    push.send_multipart(frame_message("n2i", 0, _frame(0), kind="dark"))
    first = src.recv(timeout=10)
    assert first is not None
    first.release()
    monkeypatch.setattr(zmq_source, "parse_frame_header", broken)
    push.send_multipart(frame_message("n2i", 1, _frame(1), kind="dark"))
    with pytest.raises(ServiceError, match="receive thread failed") as info:
        src.recv(timeout=None)
    assert isinstance(info.value.__cause__, RuntimeError)
    assert isinstance(src.error, RuntimeError)
    assert not src.running


def test_source_connecting_to_a_bound_pusher(sources, sockets):
    push = sockets(zmq.PUSH)
    port = push.bind_to_random_port("tcp://127.0.0.1")
    src = sources(endpoint=f"tcp://127.0.0.1:{port}")
    push.send_multipart(frame_message("gigafrost", 5, _frame(5), kind="projection"))
    frame = src.recv(timeout=10)
    assert frame is not None
    assert (frame.header.frame_id, frame.header.kind) == (5, "projection")
    frame.release()


def test_binding_a_taken_port_fails_at_start(ctx, sources):
    first = sources(endpoint="tcp://127.0.0.1:*", bind=True)
    second = ZmqFrameSource(ZmqSourceConfig(endpoint=first.endpoint, bind=True), context=ctx)
    with pytest.raises(ServiceError, match="cannot bind") as info:
        second.start()
    assert isinstance(info.value.__cause__, zmq.ZMQError)
    second.close()


def test_an_owned_context_is_terminated_on_close():
    src = ZmqFrameSource(ZmqSourceConfig(endpoint="tcp://127.0.0.1:*", bind=True, buffers=1))
    src.start()
    src.close()
    src.close()  # idempotent
    assert src._ctx.closed
    assert src.recv(timeout=0) is None
    with pytest.raises(ServiceError, match="already started"):
        src.start()


def test_config_is_validated():
    with pytest.raises(ConfigError, match="wildcard"):
        ZmqSourceConfig(endpoint="tcp://127.0.0.1:*")
    with pytest.raises(ConfigError, match="overload") as info:
        ZmqSourceConfig(endpoint="localhost:5", overload="newest", buffers=0)  # type: ignore[arg-type]
    assert "buffers" in str(info.value)
    assert "transport://" in str(info.value)
    cfg = from_mapping(
        ZmqSourceConfig,
        {"endpoint": "tcp://detector:9667", "socket_type": "sub", "rcvhwm": 10},
        source="control message",
    )
    assert cfg.socket_type == "sub"
    with pytest.raises(ConfigError, match="unknown key 'port'"):
        from_mapping(ZmqSourceConfig, {"endpoint": "tcp://a:1", "port": 5})


# -- the in-memory twin -------------------------------------------------------------------------


def test_memory_source_validates_like_the_wire():
    with MemoryFrameSource(buffers=4, buffer_bytes=_frame(0).nbytes) as src:
        assert isinstance(src, FrameSource)
        assert src.push(_frame(1), frame_id=1, kind="dark")
        assert not src.push_message([b"{}", b""])
        assert not src.push_message([frame_message("n2i", 2, _frame(2), kind="dark")[0], b"ab"])
        assert not src.push_message([b"only header"])
        assert src.push(_frame(3), frame_id=3, fmt="array-1.0")
        frame = src.recv(timeout=0)
        assert frame is not None
        np.testing.assert_array_equal(frame.data, _frame(1))
        frame.release()
        frame = src.recv(timeout=0)
        assert frame is not None
        assert frame.header.frame_id == 3
        frame.release()
        assert src.recv(timeout=0) is None
        counters = src.counters()
        assert counters.received == 2
        assert counters.bad_reasons == {
            "unknown_htype": 1,
            "size_mismatch": 1,
            "missing_payload": 1,
        }


def test_memory_source_overload_policies():
    with MemoryFrameSource(buffers=2, buffer_bytes=_frame(0).nbytes, overload="drop_oldest") as src:
        for i in range(5):
            assert src.push(_frame(i), frame_id=i, kind="projection")
        assert src.counters().dropped_overload == 3
        assert [src.recv(0).header.frame_id, src.recv(0).header.frame_id] == [3, 4]
    with MemoryFrameSource(buffers=1, buffer_bytes=_frame(0).nbytes, overload="block") as src:
        assert src.push(_frame(0), frame_id=0, kind="projection")
        with pytest.raises(ServiceError, match="no free buffer"):
            src.push(_frame(1), frame_id=1, kind="projection", timeout=0.01)


def test_memory_source_close_wakes_a_waiting_consumer():
    src = MemoryFrameSource(buffers=1, buffer_bytes=64)
    src.start()
    results = []
    consumer = threading.Thread(target=lambda: results.append(src.recv(timeout=None)))
    consumer.start()
    src.close()
    consumer.join(timeout=10)
    assert not consumer.is_alive()
    assert results == [None]
    with pytest.raises(ServiceError):
        src.push(_frame(0), frame_id=0, kind="dark")


def test_ingest_benchmark_smoke(capsys):
    from n2i_stream.bench.ingest import MODES, format_table
    from n2i_stream.cli import main

    argv = ["bench", "ingest", "--frames", "16", "--sizes", "32", "--repeat", "1", "--json"]
    assert main(argv) == 0
    results = json.loads(capsys.readouterr().out)
    assert [r["mode"] for r in results] == list(MODES)
    for r in results:
        assert (r["rows"], r["cols"], r["frames"]) == (32, 32, 16)
        assert r["frames_per_s"] > 0
        expected_gbs = r["frames_per_s"] * 32 * 32 * 2 / 1e9
        assert r["gb_per_s"] == pytest.approx(expected_gbs, rel=1e-2, abs=1e-3)
    assert results[0]["vs_bare"] == 1.0
    assert "vs bare" in format_table(results)
