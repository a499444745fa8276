"""The dashboard in a real headless browser (Debian's chromium driven by Playwright).

The page watches a simulated scan: FBP volumes of :class:`~n2i_stream.sim.scan.DynamicScan`
time steps (a foam whose bubble grows) are fed to the dashboard's sink as the pipeline would,
with a status that moves like the service's. The browser must show the images, follow new
steps, move the counters, honour the slice and step selectors and the contrast, show errors, and
a screenshot is saved under ``test-artifacts/``.

Chromium comes from the system (``apt-get install -y chromium`` on Debian, which ``.ci/run``
does when it runs as root); Playwright's own browser download is never used. The test skips,
saying why, when no chromium executable can be found (set ``N2I_CHROMIUM`` to use another).
"""

from __future__ import annotations

import io
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from n2i_stream.io.dashboard import DashboardConfig, DashboardServer, DashboardSink
from n2i_stream.service.sinks import StepResult

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 60_000  # generous: on a loaded 2-core machine chromium is starved for seconds


def chromium_path() -> str | None:
    for candidate in (os.environ.get("N2I_CHROMIUM"), "chromium", "chromium-browser"):
        if candidate and (found := shutil.which(candidate)):
            return found
    return None


@dataclass(frozen=True)
class SimulatedScan:
    fbp: list[np.ndarray]  #: per time step, (rows, n, n)
    denoised: list[np.ndarray]  #: a smoothed FBP standing in for the network's output
    frames_per_step: int


@pytest.fixture(scope="module")
def scan() -> SimulatedScan:
    from scipy.ndimage import gaussian_filter

    from n2i_stream.core.fbp import fbp
    from n2i_stream.core.preprocess import line_integrals
    from n2i_stream.sim.scan import DynamicScan, SimConfig

    config = SimConfig(
        width=64, rows=8, steps=5, per_step=60, dynamics_start=1, bubble_growth=0.2, photons=800
    )
    sim = DynamicScan(config)
    arrays = sim.arrays()
    dark, flat = arrays.darks.mean(axis=0), arrays.flats.mean(axis=0)
    volumes = []
    for step in range(config.steps):
        frames = arrays.data[step * config.per_step : (step + 1) * config.per_step]
        projections = line_integrals(frames, dark, flat).data
        volume = fbp(projections, sim.step_geometry(step), backend="reference")
        volumes.append(np.asarray(volume, dtype=np.float32))
    denoised = [gaussian_filter(v, sigma=(0.5, 1.2, 1.2)).astype(np.float32) for v in volumes]
    return SimulatedScan(volumes, denoised, config.per_step)


class ScanStatus:
    """A STATUS (service contract) that the test advances step by step."""

    def __init__(self, steps: int, frames_per_step: int) -> None:
        self.frames_per_step = frames_per_step
        self.value: dict[str, Any] = {
            "state": "acquiring",
            "scan_id": "sim-foam",
            "reason": None,
            "output": "/data/sim-foam/results.h5",
            "version": "0.1.0",
            "counters": {
                "received": 0, "bad": 0, "duplicate": 0, "out_of_order": 0, "wrapped": 0,
                "dropped": 0, "outside_range": 0, "late": 0, "dropped_overload": 0,
                "bad_reasons": {},
            },
            "steps": {"total": steps, "received": 0, "published_fbp": 0,
                      "published_denoised": 0, "last_published": None, "backlog": 0},
            "training": {"state": "waiting", "iteration": 0, "iterations": 400, "loss": None,
                         "eta_s": None, "elapsed_s": 0.0, "losses": []},
            "latency_s": {"last": None, "median": None, "max": None},
            "ingest": {"frames_per_s": 0.0, "bytes_per_s": 0.0},
        }  # fmt: skip

    def __call__(self) -> dict[str, Any]:
        return self.value

    def received(self, step: int) -> None:
        v = self.value
        v["counters"]["received"] = (step + 1) * self.frames_per_step + 40
        v["counters"]["duplicate"] = step  # a noisy link: counters the page must show
        v["steps"]["received"] = step + 1
        v["ingest"] = {"frames_per_s": 1200.0 + 10 * step, "bytes_per_s": 9.8e6}

    def trained(self, iteration: int) -> None:
        t = self.value["training"]
        t["state"] = "done" if iteration >= t["iterations"] else "running"
        t["iteration"] = iteration
        t["losses"] = [0.02 * np.exp(-i / 80) + 0.004 for i in range(0, iteration, 5)]
        t["loss"] = t["losses"][-1] if t["losses"] else None
        t["eta_s"] = (t["iterations"] - iteration) * 0.05
        t["elapsed_s"] = iteration * 0.05
        self.value["state"] = "streaming" if t["state"] == "done" else "training"


@pytest.fixture
def browser() -> Iterator[Any]:
    executable = chromium_path()
    if executable is None:
        pytest.skip(
            "no chromium executable found: install Debian's package (apt-get install -y "
            "chromium) or set N2I_CHROMIUM to a Chromium binary"
        )
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def element_pixels(page: Any, selector: str) -> np.ndarray:
    """What the browser draws for ``selector`` (a screenshot of the element)."""
    png = page.locator(selector).screenshot()
    return np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=np.int16)


def test_the_dashboard_follows_a_simulated_scan(browser: Any, scan: SimulatedScan) -> None:
    from playwright.sync_api import expect

    expect.set_options(timeout=TIMEOUT_MS)
    steps = len(scan.fbp)
    status = ScanStatus(steps, scan.frames_per_step)
    sink = DashboardSink(max_steps=4)
    config = DashboardConfig(port=0, status_interval_s=0.1)
    server = DashboardServer(status, sink, config).start()
    page = browser.new_page(viewport={"width": 1600, "height": 1000})
    page.set_default_timeout(TIMEOUT_MS)
    console_errors: list[str] = []
    page.on("pageerror", lambda exc: console_errors.append(str(exc)))
    try:
        page.goto(server.url)
        expect(page.locator("#state")).to_have_text("acquiring")
        expect(page.locator("#img-fbp-z")).not_to_have_attribute("src", "")

        # Step 0 arrives before training: FBP shows, denoised says why it is missing.
        status.received(0)
        status.trained(120)
        sink.put(StepResult(0, "fbp", scan.fbp[0], latency_s=0.42))
        page.wait_for_selector('#img-fbp-z[data-step="0"]')
        expect(page.locator(".panel[data-kind=denoised] .axial .note")).to_contain_text(
            "no denoised result for step 0 yet"
        )
        expect(page.locator("#counter-received")).to_have_text(f"{scan.frames_per_step + 40}")
        expect(page.locator("#state")).to_have_text("training")
        first = element_pixels(page, "#img-fbp-z")
        assert first.std() > 5, "the FBP slice should show structure, not a flat field"

        # Training ends, later steps stream in denoised: images and counters follow.
        status.trained(400)
        for step in range(1, steps):
            status.received(step)
            status.value["steps"]["published_fbp"] = step + 1
            status.value["steps"]["published_denoised"] = step
            status.value["latency_s"] = {"last": 0.5 + step / 10, "median": 0.55, "max": 0.9}
            sink.put(StepResult(step, "fbp", scan.fbp[step], latency_s=0.3 + step / 10))
            sink.put(StepResult(step, "denoised", scan.denoised[step], latency_s=0.5 + step / 10))
            page.wait_for_selector(f'#img-denoised-z[data-step="{step}"]')
        expect(page.locator("#state")).to_have_text("streaming")
        expect(page.locator("#counter-received")).to_have_text(
            f"{steps * scan.frames_per_step + 40:,}"
        )
        expect(page.locator("#counter-duplicate")).to_have_text(str(steps - 1))
        expect(page.locator("#step-label")).to_contain_text(f"step {steps - 1} · newest")
        page.wait_for_selector(f'#img-fbp-z[data-step="{steps - 1}"]')
        last = element_pixels(page, "#img-fbp-z")
        assert np.abs(last - first).mean() > 1, "a new time step should change the picture"
        for kind in ("denoised", "fbp"):
            for axis in ("y", "x"):  # the orthogonal views are there too
                page.wait_for_selector(f'#img-{kind}-{axis}[data-step="{steps - 1}"]')
        # The smoothed stand-in is visibly less noisy than its FBP in the same window.
        assert element_pixels(page, "#img-denoised-z").std() < last.std()
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)

        # The slice selector asks for another z and the picture changes.
        z_before = page.locator("#img-denoised-z").get_attribute("data-url")
        assert "index=4" in z_before  # the middle of 8 rows
        page.locator("#z-slider").fill("1")
        page.wait_for_selector('#img-denoised-z[data-url*="index=1&"]')
        page.wait_for_selector('#img-fbp-z[data-url*="index=1&"]')
        expect(page.locator("#z-label")).to_have_text("1 / 7")
        assert np.abs(element_pixels(page, "#img-fbp-z") - last).mean() > 1

        # Clicking the axial view moves the orthogonal cuts there.
        box = page.locator("#img-fbp-z").bounding_box()
        n = scan.fbp[0].shape[-1]
        page.mouse.click(box["x"] + box["width"] * 16.5 / n, box["y"] + box["height"] * 48.5 / n)
        page.wait_for_selector('#img-fbp-y[data-url*="axis=y&index=48&"]')
        page.wait_for_selector('#img-fbp-x[data-url*="axis=x&index=16&"]')

        # The scrubber goes back in time and leaves live mode; new steps no longer move it.
        page.locator("#step-slider").fill("0")  # the oldest step held (of the newest 4)
        oldest = steps - 4
        page.wait_for_selector(f'#img-denoised-z[data-step="{oldest}"]')
        expect(page.locator("#live-button")).not_to_have_class("live on")

        # A shared manual contrast window applies to both images.
        page.locator("#vmax-slider").fill("900")
        expect(page.locator("#auto-contrast")).not_to_be_checked()
        page.wait_for_selector('#img-denoised-z[data-url*="vmax="]')
        for kind in ("denoised", "fbp"):
            url = page.locator(f"#img-{kind}-z").get_attribute("data-url")
            assert "vmin=" in url
            assert "vmax=" in url
        denoised_url = page.locator("#img-denoised-z").get_attribute("data-url")
        fbp_url = page.locator("#img-fbp-z").get_attribute("data-url")
        assert denoised_url.split("vmin=")[1] == fbp_url.split("vmin=")[1]

        # Back to live follows the newest step again.
        page.locator("#live-button").click()
        page.wait_for_selector(f'#img-denoised-z[data-step="{steps - 1}"]')

        # A request for a slice that does not exist shows the server's message on the page.
        page.evaluate(
            "() => { const p = panels['fbp-z']; p.want = '/api/slice.png?step=999&kind=fbp';"
            " load(p); }"
        )
        expect(page.locator(".panel[data-kind=fbp] .axial .note")).to_contain_text(
            "time step 999 is not held"
        )

        # A failure of the scan is announced in the banner with its reason.
        status.value["state"] = "failed"
        status.value["reason"] = "GPU out of memory in the denoiser"
        expect(page.locator("#banner")).to_be_visible()
        expect(page.locator("#banner")).to_contain_text("GPU out of memory in the denoiser")
        expect(page.locator("#state")).to_have_attribute("data-state", "failed")
        page.screenshot(path=str(ARTIFACTS / "dashboard-failed.png"), full_page=True)

        # Losing the service shows the connection banner.
        status.value["state"], status.value["reason"] = "streaming", None
        expect(page.locator("#banner")).to_be_hidden()
        server.close()
        expect(page.locator("#banner")).to_contain_text("Connection to the service lost")
        assert console_errors == []
    finally:
        page.close()
        server.close()


def test_the_dashboard_watches_the_real_service(browser: Any) -> None:
    """A tiny simulated scan through N2IService (loopback sockets): FBP, training, denoising."""
    from playwright.sync_api import expect

    from n2i_stream.service.loopback import Loopback
    from n2i_stream.service.pipeline import PipelineOptions
    from n2i_stream.sim.scan import DynamicScan, SimConfig
    from n2i_stream.sim.stream import frame_messages, scan_config_for, stream

    expect.set_options(timeout=TIMEOUT_MS * 3)  # training runs on a shared CPU
    sim = SimConfig(
        width=48, rows=6, steps=6, per_step=36, n_darks=4, n_flats=4, dynamics_start=3,
        bubble_growth=0.25, supersample=1, seed=5,
    )  # fmt: skip
    frames = list(DynamicScan(sim).frames())
    first_steps = sim.n_darks + sim.n_flats + 3 * sim.per_step
    sink = DashboardSink(max_steps=8)
    config = DashboardConfig(port=0, status_interval_s=0.1)
    with Loopback(options=PipelineOptions(infer_threads=1), sinks=[sink]) as loopback:
        server = DashboardServer(loopback.service.status, sink, config).start()
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.set_default_timeout(TIMEOUT_MS * 3)
        try:
            page.goto(server.url)
            expect(page.locator("#state")).to_have_text("idle")
            loopback.service.configure(
                scan_config_for(
                    sim,
                    scan_id="browser-scan",
                    train_steps=3,
                    train_iterations=200,
                    training={"depth": 2, "width": 4, "crop": 16, "batch": 2},
                )
            )
            stream(frame_messages(frames[:first_steps], "n2i"), loopback.data_endpoint,
                   context=loopback.context)  # fmt: skip
            page.wait_for_selector('#img-fbp-z[data-step="2"]')
            expect(page.locator("#scan-id")).to_have_text("browser-scan")
            before = element_pixels(page, "#img-fbp-z")
            expect(page.locator("#counter-received")).to_have_text(f"{first_steps:,}")

            stream(frame_messages(frames[first_steps:], "n2i"), loopback.data_endpoint,
                   context=loopback.context)  # fmt: skip
            page.wait_for_selector(f'#img-denoised-z[data-step="{sim.steps - 1}"]')
            page.wait_for_selector(f'#img-fbp-z[data-step="{sim.steps - 1}"]')
            expect(page.locator("#state")).to_have_text("done")
            expect(page.locator("#counter-received")).to_have_text(f"{len(frames):,}")
            expect(page.locator("#training-state")).to_have_text("done")
            after = element_pixels(page, "#img-fbp-z")
            assert np.abs(after - before).mean() > 1, "the newest step should change the picture"
            page.locator("#z-slider").fill("0")
            page.wait_for_selector('#img-denoised-z[data-url*="index=0&"]')
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "dashboard-service.png"), full_page=True)
        finally:
            page.close()
            server.close()
