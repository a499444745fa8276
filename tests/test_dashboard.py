"""The dashboard server and sink: HTTP on an ephemeral loopback port, fake status, fake results."""

from __future__ import annotations

import http.client
import io
import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import uniform_filter

from n2i_stream.errors import ConfigError, DataError, ServiceError
from n2i_stream.io.dashboard import (
    DashboardConfig,
    DashboardServer,
    DashboardSink,
    EventHub,
    NotHeld,
    parse_address,
)
from n2i_stream.io.dashboard.render import PngCache, to_png
from n2i_stream.service.sinks import ResultSink
from n2i_stream.service.sinks import StepResult as Result

ROWS, N = 6, 20


def ramp(step: int, offset: float = 0.0) -> np.ndarray:
    """A volume whose voxel (z, y, x) holds 1000 z + 10 y + x / 10 + 10000 step + offset."""
    z, y, x = np.meshgrid(np.arange(ROWS), np.arange(N), np.arange(N), indexing="ij")
    return (1000 * z + 10 * y + x / 10 + 10000 * step + offset).astype(np.float32)


class FakeStatus:
    """A status provider the test can change or make fail."""

    def __init__(self) -> None:
        self.value: dict[str, Any] = {
            "state": "streaming",
            "scan_id": "scan-1",
            "reason": None,
            "counters": {"received": 10, "bad": 0, "duplicate": 0, "dropped": 0},
            "training": {"state": "running", "loss": float("nan"), "losses": [1.0, 0.5]},
            "latency_s": {"last": np.float32(0.5), "median": 0.4, "max": 0.9},
        }
        self.error: Exception | None = None

    def __call__(self) -> dict[str, Any]:
        if self.error is not None:
            raise self.error
        return self.value


@pytest.fixture
def status() -> FakeStatus:
    return FakeStatus()


@pytest.fixture
def sink() -> DashboardSink:
    return DashboardSink(max_steps=3)


@pytest.fixture
def server(status: FakeStatus, sink: DashboardSink) -> Iterator[DashboardServer]:
    before = set(threading.enumerate())
    config = DashboardConfig(port=0, status_interval_s=0.05, keepalive_s=1.0)
    with DashboardServer(status, sink, config) as server:
        yield server
    leaked = [t for t in set(threading.enumerate()) - before if t.is_alive()]
    assert not leaked, f"threads left running after close: {leaked}"


def get(server: DashboardServer, path: str) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of ``GET path`` (errors included)."""
    try:
        with urllib.request.urlopen(server.url.rstrip("/") + path, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def get_json(server: DashboardServer, path: str) -> tuple[int, Any]:
    code, headers, body = get(server, path)
    assert headers["Content-Type"] == "application/json"
    return code, json.loads(body)


def png_pixels(body: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(body))
    assert image.format == "PNG"
    assert image.mode == "L"
    return np.asarray(image)


class EventStream:
    """A minimal SSE client: reads ``(event, data)`` pairs from /api/events."""

    def __init__(self, server: DashboardServer) -> None:
        host, port = server.address
        self.connection = http.client.HTTPConnection(host, port, timeout=10)
        self.connection.request("GET", "/api/events")
        self.response = self.connection.getresponse()
        assert self.response.status == 200
        assert self.response.headers["Content-Type"] == "text/event-stream"

    def next(self) -> tuple[str, Any]:
        """The next event (keep-alive comments and retry lines skipped)."""
        name, data = None, None
        while True:
            line = self.response.readline()
            if not line:
                raise EOFError("the event stream ended")
            line = line.decode().rstrip("\n")
            if line.startswith("event: "):
                name = line[len("event: ") :]
            elif line.startswith("data: "):
                data = json.loads(line[len("data: ") :])
            elif line == "" and name is not None:
                return name, data

    def until(self, name: str, predicate: Any = lambda data: True) -> Any:
        """Data of the first ``name`` event satisfying ``predicate``."""
        while True:
            event, data = self.next()
            if event == name and predicate(data):
                return data

    def close(self) -> None:
        self.connection.close()


@pytest.fixture
def streams() -> Iterator[list[EventStream]]:
    opened: list[EventStream] = []
    yield opened
    for stream in opened:
        stream.close()


# ---- pages and status ------------------------------------------------------------------------


def test_page_and_its_static_files_are_served(server: DashboardServer) -> None:
    code, headers, body = get(server, "/")
    assert code == 200
    assert headers["Content-Type"].startswith("text/html")
    assert b'src="/static/app.js"' in body
    assert b'href="/static/style.css"' in body
    for name, kind in (("app.js", "text/javascript"), ("style.css", "text/css")):
        code, headers, body = get(server, f"/static/{name}")
        assert code == 200
        assert headers["Content-Type"].startswith(kind)
        assert len(body) > 1000
    assert "default-src 'self'" in headers["Content-Security-Policy"]


@pytest.mark.parametrize("path", ["/static/server.py", "/static/../server.py", "/nope"])
def test_unknown_paths_are_404_json(server: DashboardServer, path: str) -> None:
    code, body = get_json(server, path)
    assert code == 404
    assert "no such page" in body["error"]["message"]


def test_the_dashboard_is_read_only(server: DashboardServer) -> None:
    request = urllib.request.Request(server.url + "api/status", data=b"{}", method="POST")
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=10)
    assert info.value.code == 405
    assert "read-only" in json.loads(info.value.read())["error"]["message"]


def test_status_is_the_service_status_as_json(server: DashboardServer, status: FakeStatus) -> None:
    code, body = get_json(server, "/api/status")
    assert code == 200
    assert body["state"] == "streaming"
    assert body["counters"]["received"] == 10
    assert body["latency_s"]["last"] == 0.5  # a NumPy scalar becomes a number
    assert body["training"]["loss"] is None  # NaN is not JSON: it becomes null
    status.value["counters"]["received"] = 11
    assert get_json(server, "/api/status")[1]["counters"]["received"] == 11


def test_a_failing_status_source_gives_503_with_the_reason(
    server: DashboardServer, status: FakeStatus
) -> None:
    status.error = RuntimeError("service thread died")
    code, body = get_json(server, "/api/status")
    assert code == 503
    assert "service thread died" in body["error"]["message"]


# ---- steps and slices ------------------------------------------------------------------------


def test_steps_lists_what_is_held_and_the_oldest_are_evicted(
    server: DashboardServer, sink: DashboardSink
) -> None:
    assert get_json(server, "/api/steps")[1]["steps"] == []
    for step in range(5):
        sink.put(Result(step, "fbp", ramp(step), latency_s=0.1 * step))
    sink.put(Result(4, "denoised", ramp(4), incomplete=True, missing=3))
    code, body = get_json(server, "/api/steps")
    assert code == 200
    assert [s["time_step"] for s in body["steps"]] == [2, 3, 4]
    assert body["newest"] == 4
    assert body["evicted"] == 2
    newest = body["steps"][-1]["kinds"]
    assert sorted(newest) == ["denoised", "fbp"]
    assert newest["denoised"]["incomplete"] is True
    assert newest["denoised"]["missing"] == 3
    assert newest["fbp"]["shape"] == [ROWS, N, N]
    assert newest["fbp"]["latency_s"] == pytest.approx(0.4)
    assert body["held_bytes"] == 4 * ramp(0).nbytes


def test_memory_bound_keeps_at_least_the_newest_step() -> None:
    sink = DashboardSink(max_steps=10, max_bytes=ramp(0).nbytes + 1)
    for step in range(3):
        sink.put(Result(step, "fbp", ramp(step)))
    assert [s["time_step"] for s in sink.snapshot()["steps"]] == [2]
    sink.put(Result(2, "denoised", ramp(2)))  # alone over the bound: still kept
    assert sorted(sink.snapshot()["steps"][0]["kinds"]) == ["denoised", "fbp"]


@pytest.mark.parametrize(
    ("axis", "index", "expected"),
    [
        ("z", 2, lambda v: v[2]),
        ("y", 7, lambda v: v[:, 7, :]),
        ("x", 19, lambda v: v[:, :, 19]),
    ],
)
def test_slice_png_is_the_requested_slice_in_the_requested_window(
    server: DashboardServer, sink: DashboardSink, axis: str, index: int, expected: Any
) -> None:
    volume = ramp(1)
    sink.put(Result(1, "fbp", volume))
    sink.put(Result(1, "denoised", volume + 0.5))
    vmin, vmax = 10000.0, 15000.0
    path = f"/api/slice.png?step=1&kind=fbp&axis={axis}&index={index}&vmin={vmin}&vmax={vmax}"
    code, headers, body = get(server, path)
    assert code == 200
    assert headers["Content-Type"] == "image/png"
    assert headers["X-Step"] == "1"
    assert headers["X-Kind"] == "fbp"
    want = np.clip(np.rint((expected(volume) - vmin) * 255 / (vmax - vmin)), 0, 255)
    np.testing.assert_array_equal(png_pixels(body), want.astype(np.uint8))


def test_slice_defaults_are_newest_step_denoised_middle_slice_auto_window(
    server: DashboardServer, sink: DashboardSink
) -> None:
    sink.put(Result(0, "fbp", ramp(0)))
    code, headers, body = get(server, "/api/slice.png")
    assert (code, headers["X-Step"], headers["X-Kind"]) == (200, "0", "fbp")  # no denoised yet
    sink.put(Result(1, "fbp", ramp(1)))
    sink.put(Result(1, "denoised", ramp(1, offset=7.0)))
    code, headers, body = get(server, "/api/slice.png")
    assert (code, headers["X-Step"], headers["X-Kind"]) == (200, "1", "denoised")
    pixels = png_pixels(body)
    assert pixels.shape == (N, N)
    low, high = (float(v) for v in headers["X-Window"].split())
    _, window = get_json(server, "/api/window?step=1")
    assert window["window"] == pytest.approx([low, high], rel=1e-5)
    # The window is the 0.5..99.5 percentile of the FBP after a 3x3x3 mean, widened by a tenth
    # of its span on each side, and shared by both kinds.
    p_low, p_high = np.percentile(uniform_filter(ramp(1), 3, mode="nearest"), [0.5, 99.5])
    margin = 0.1 * (p_high - p_low)
    assert (low, high) == pytest.approx((p_low - margin, p_high + margin), rel=1e-5)
    fbp_headers = get(server, "/api/slice.png?kind=fbp")[1]
    assert fbp_headers["X-Window"] == headers["X-Window"]
    # The denoised middle slice z = ROWS // 2 in that window.
    want = np.clip(np.rint((ramp(1, 7.0)[ROWS // 2] - low) * 255 / (high - low)), 0, 255)
    np.testing.assert_allclose(pixels, want, atol=1)


@pytest.mark.parametrize(
    ("query", "code", "message"),
    [
        ("step=abc", 400, "step must be an integer, got 'abc'"),
        ("kind=raw", 400, "kind must be one of ['denoised', 'fbp'], got 'raw'"),
        ("axis=w", 400, "axis must be one of ['z', 'y', 'x'], got 'w'"),
        ("index=1.5", 400, "index must be an integer"),
        ("vmin=0", 400, "give both vmin and vmax"),
        ("vmin=0&vmax=nan", 400, "vmax must be a finite number"),
        ("vmin=2&vmax=1", 400, "vmax must exceed vmin"),
        ("step=4&step=3", 400, "repeated: step"),
        ("colour=red", 400, "unknown parameter colour"),
        ("index=6", 404, "slice z=6 does not exist: time step 4 has z in 0..5"),
        ("axis=x&index=-1", 404, "slice x=-1 does not exist"),
        ("step=0", 404, "time step 0 is not held: the dashboard holds steps 2..4 (it keeps"),
        ("step=99", 404, "time step 99 is not held"),
        ("step=3&kind=denoised", 404, "time step 3 has no denoised result (yet); it has fbp"),
    ],
)
def test_bad_slice_requests_get_a_clear_json_error(
    server: DashboardServer, sink: DashboardSink, query: str, code: int, message: str
) -> None:
    for step in range(5):
        sink.put(Result(step, "fbp", ramp(step)))
    got, body = get_json(server, f"/api/slice.png?{query}")
    assert got == code
    assert body["error"]["status"] == code
    assert message in body["error"]["message"]


def test_before_any_result_slices_and_windows_are_404(server: DashboardServer) -> None:
    for path in ("/api/slice.png", "/api/window", "/api/slice.png?step=0"):
        code, body = get_json(server, path)
        assert code == 404
        assert "no" in body["error"]["message"]
        assert "published yet" in body["error"]["message"]


def test_large_slices_are_reduced_and_identical_requests_are_cached() -> None:
    image = np.linspace(0, 1, 300 * 200, dtype=np.float32).reshape(300, 200)
    pixels = png_pixels(to_png(image, 0.0, 1.0, max_side=64))
    assert pixels.shape == (64, 43)
    assert pixels[0, 0] < 5
    assert pixels[-1, -1] > 250
    nan_image = np.full((4, 4), np.nan, np.float32)
    assert (png_pixels(to_png(nan_image, 0.0, 1.0)) == 0).all()
    cache, calls = PngCache(entries=2), []

    def make(key: str) -> bytes:
        calls.append(key)
        return key.encode()

    for key in ("a", "a", "b", "c", "a"):
        assert cache.get(key, lambda key=key: make(key)) == key.encode()
    assert calls == ["a", "b", "c", "a"]  # "a" was evicted by "b" and "c"
    assert (cache.hits, cache.misses) == (1, 4)


# ---- the event stream ------------------------------------------------------------------------


def test_events_reach_several_browsers_and_one_leaving_harms_nobody(
    server: DashboardServer, sink: DashboardSink, status: FakeStatus, streams: list[EventStream]
) -> None:
    sink.put(Result(0, "fbp", ramp(0)))
    streams += [EventStream(server) for _ in range(3)]
    for stream in streams:
        hello = stream.until("hello")
        assert [s["time_step"] for s in hello["steps"]["steps"]] == [0]
        assert stream.until("status", lambda d: d["dashboard"]["clients"] == 3)
    leaving = streams.pop(1)
    leaving.response.close()  # the tab is closed mid-stream
    leaving.close()
    sink.put(Result(1, "fbp", ramp(1), latency_s=1.5))
    status.value["counters"]["received"] = 250
    for stream in streams:
        event = stream.until("step", lambda d: d["time_step"] == 1)
        assert event["kind"] == "fbp"
        assert event["latency_s"] == 1.5
        assert event["kept"] == [0, 1]
        tick = stream.until("status", lambda d: d["status"]["counters"]["received"] == 250)
        assert tick["error"] is None
    # The server noticed the departure (its next write failed) and still serves the rest.
    assert streams[0].until("status", lambda d: d["dashboard"]["clients"] == 2)
    assert get_json(server, "/api/steps")[0] == 200


def test_a_failing_status_source_is_reported_on_the_stream(
    server: DashboardServer, status: FakeStatus, streams: list[EventStream]
) -> None:
    streams.append(EventStream(server))
    status.error = RuntimeError("status lock timed out")
    tick = streams[0].until("status", lambda d: d["error"] is not None)
    assert "status lock timed out" in tick["error"]
    status.error = None
    assert streams[0].until("status", lambda d: d["error"] is None)["status"]["state"]


def test_a_stream_that_falls_behind_is_told_to_resync(status: FakeStatus) -> None:
    sink = DashboardSink(max_steps=2, events=EventHub(capacity=4))
    config = DashboardConfig(port=0, status_interval_s=0.05)
    with DashboardServer(status, sink, config) as server:
        stream = EventStream(server)
        try:
            stream.until("hello")
            # Hold the hub's (reentrant) lock so the burst overruns the ring before the stream's
            # thread can read any of it: a browser too slow to keep up.
            with sink.events._cond:
                for step in range(20):
                    sink.put(Result(step, "fbp", ramp(0)))
            resync = stream.until("resync")
            assert [s["time_step"] for s in resync["steps"]] == [18, 19]
        finally:
            stream.close()


def test_close_ends_open_streams_promptly(status: FakeStatus, sink: DashboardSink) -> None:
    server = DashboardServer(status, sink, DashboardConfig(port=0, keepalive_s=60))
    server.start()
    stream = EventStream(server)
    stream.until("hello")
    # A keep-alive connection idle between requests, its thread waiting for the next one.
    idle = http.client.HTTPConnection(*server.address, timeout=10)
    idle.request("GET", "/api/status")
    assert idle.getresponse().read()
    server.close()
    with pytest.raises(EOFError):
        stream.until("never")
    assert idle.sock.recv(1) == b""
    idle.close()
    stream.close()
    server.close()  # idempotent


def test_a_new_scan_after_close_starts_a_fresh_store(
    server: DashboardServer, sink: DashboardSink, streams: list[EventStream]
) -> None:
    sink.put(Result(5, "fbp", ramp(5)))
    streams.append(EventStream(server))
    streams[0].until("hello")
    sink.close()
    assert streams[0].until("closed")["generation"] == 0
    assert get_json(server, "/api/steps")[1]["closed"] is True  # still visible after the scan
    sink.put(Result(0, "fbp", ramp(0)))
    assert streams[0].until("reset")["generation"] == 1
    assert streams[0].until("step")["kept"] == [0]
    snapshot = get_json(server, "/api/steps")[1]
    assert [s["time_step"] for s in snapshot["steps"]] == [0]
    assert snapshot["generation"] == 1


# ---- the sink, hub, configuration ------------------------------------------------------------


def test_sink_rejects_results_it_cannot_show(sink: DashboardSink) -> None:
    assert isinstance(sink, ResultSink)  # the service's seam
    with pytest.raises(DataError, match="kind must be one of"):
        sink.put(Result(0, "raw", ramp(0)))
    with pytest.raises(DataError, match=r"\(rows, n, n\) NumPy array, got ndarray of shape"):
        sink.put(Result(0, "fbp", ramp(0)[0]))
    with pytest.raises(NotHeld, match="no results have been published yet"):
        sink.get(0, "fbp")


def test_event_hub_hands_each_reader_what_it_has_not_seen() -> None:
    hub = EventHub(capacity=3)
    first = hub.publish("step", 1)
    hub.set_status("{}")
    update = hub.wait(0, 0, timeout=0)
    assert [e.seq for e in update.events] == [first]
    assert (update.missed, update.status) == (False, "{}")
    for value in range(2, 6):
        hub.publish("step", value)
    late = hub.wait(update.cursor, update.status_cursor, timeout=0)
    assert late.missed  # events 2 was pushed out of the ring of 3
    assert late.status is None
    assert [e.data for e in late.events] == [3, 4, 5]
    stop = threading.Event()
    stop.set()
    assert hub.wait(late.cursor, late.status_cursor, timeout=60, stop=stop).stopped


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:8080", ("127.0.0.1", 8080)),
        ("0.0.0.0:80", ("0.0.0.0", 80)),
        (":9000", ("127.0.0.1", 9000)),
        ("9000", ("127.0.0.1", 9000)),
        ("[::1]:8081", ("::1", 8081)),
        ("localhost:0", ("localhost", 0)),
    ],
)
def test_parse_address(text: str, expected: tuple[str, int]) -> None:
    assert parse_address(text) == expected


@pytest.mark.parametrize("text", ["", "host:", "host:http", "host:70000", "a:b:c"])
def test_parse_address_rejects_nonsense(text: str) -> None:
    with pytest.raises(ConfigError, match="HOST:PORT"):
        parse_address(text)


def test_config_reports_every_bad_value() -> None:
    with pytest.raises(ConfigError) as info:
        DashboardConfig(port=-1, status_interval_s=0, image_max_side=2)
    message = str(info.value)
    assert "port must be in 0..65535" in message
    assert "status_interval_s must be > 0" in message
    assert "image_max_side must be >= 16" in message


def test_a_port_in_use_is_a_service_error(status: FakeStatus, sink: DashboardSink) -> None:
    with DashboardServer(status, sink, DashboardConfig(port=0)) as first:
        taken = DashboardServer(status, sink, DashboardConfig(port=first.address[1]))
        with pytest.raises(ServiceError, match=r"cannot listen on 127\.0\.0\.1"):
            taken.start()


def test_a_result_of_another_scan_starts_a_fresh_store(sink: DashboardSink) -> None:
    sink.put(Result(3, "fbp", ramp(3), scan_id="a"))
    sink.put(Result(4, "fbp", ramp(4), scan_id="a"))
    cursor = sink.events.cursor
    sink.put(Result(0, "fbp", ramp(0), scan_id="b"))
    snapshot = sink.snapshot()
    assert [s["time_step"] for s in snapshot["steps"]] == [0]
    assert (snapshot["scan_id"], snapshot["generation"]) == ("b", 1)
    events = sink.events.wait(cursor, 0, timeout=0).events
    assert [(e.name, e.data.get("scan_id")) for e in events] == [("reset", "b"), ("step", None)]


# ---- the optional EPICS PV Access image ------------------------------------------------------


def test_pva_image_serves_the_newest_denoised_slice() -> None:
    pytest.importorskip("p4p", reason="p4p (the optional EPICS PV Access extra) is not installed")
    import queue

    from p4p.client.thread import Context

    from n2i_stream.io.epics_pva import PvaImageSink

    sink = PvaImageSink("TEST:N2I:image", isolate=True)
    context = Context("pva", conf=sink.conf(), useenv=False)
    updates: queue.Queue[Any] = queue.Queue()
    subscription = context.monitor("TEST:N2I:image", updates.put)
    try:
        sink.put(Result(1, "fbp", ramp(1)))  # not the kind served: ignored
        sink.put(Result(2, "denoised", ramp(2), incomplete=True, missing=4))
        while True:
            image = updates.get(timeout=10)
            if image.shape != (1, 1):  # the placeholder served before any result
                break
        np.testing.assert_array_equal(image, ramp(2)[ROWS // 2])
        assert image.dtype == np.float32
        assert image.raw["uniqueId"] == 2
        assert image.timestamp > 0
        assert image.attrib["TimeStep"] == 2
        assert image.attrib["Kind"] == "denoised"
        assert image.attrib["Index"] == ROWS // 2
        assert image.attrib["MissingFrames"] == 4
        assert bool(image.attrib["Incomplete"]) is True
        assert sink.posted == 1
        assert sink.failed is None
    finally:
        subscription.close()
        context.close()
        sink.close()
    sink.close()  # idempotent


def test_pva_image_rejects_a_bad_choice_before_touching_the_network() -> None:
    from n2i_stream.io.epics_pva import PvaImageSink

    with pytest.raises(ConfigError, match="kind must be 'denoised' or 'fbp'"):
        PvaImageSink(kind="raw")
    with pytest.raises(ConfigError, match="axis must be one of"):
        PvaImageSink(axis="t")


def test_the_auto_window_ignores_noise_and_unwritten_voxels(rng: np.random.Generator) -> None:
    sink = DashboardSink()
    clean = np.zeros((8, 32, 32), np.float32)
    clean[:, 8:24, 8:24] = 1.0  # a block of material in air
    noisy = clean + rng.normal(0, 0.3, clean.shape).astype(np.float32)
    noisy[0, 0, :4] = np.nan
    sink.put(Result(0, "fbp", noisy))
    low, high, minimum, maximum = sink.window(0)
    # The noise, a third of the contrast, would stretch plain percentiles far beyond 0..1.
    assert -0.35 < low < -0.05
    assert 1.05 < high < 1.35
    assert minimum < -0.5
    assert maximum > 1.5
    sink.put(Result(0, "denoised", clean * 0.5))  # a network that lost half the contrast
    assert sink.window(0) == (low, high, minimum, maximum)  # still the FBP's window


# ---- wiring: n2i-stream serve --dashboard ----------------------------------------------------


def test_serve_with_dashboard_prints_its_url_and_serves_the_status() -> None:
    import signal

    from serving import serving

    with serving(
        "--data", "tcp://127.0.0.1:*", "--control", "tcp://127.0.0.1:*",
        "--results", "tcp://127.0.0.1:*", "--dashboard", "127.0.0.1:0",
    ) as server:  # fmt: skip
        url = server.ready["dashboard"]
        assert url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(url + "api/status", timeout=10) as response:
            assert json.loads(response.read())["state"] == "idle"
        with urllib.request.urlopen(url, timeout=10) as response:
            assert b"n2i-stream" in response.read()
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(60) == 0


def test_serve_rejects_a_bad_dashboard_address() -> None:
    from n2i_stream.cli import main

    assert main(["serve", "--dashboard", "localhost:http"]) == 2
