// n2i-stream dashboard: live, read-only view of the service (no libraries, no build step).
// News arrives over Server-Sent Events (/api/events); images are PNG slices (/api/slice.png).
"use strict";

const KINDS = ["denoised", "fbp"];
const AXES = ["z", "y", "x"];
const $ = (id) => document.getElementById(id);

const state = {
  steps: new Map(),        // time step -> {kind: info}
  generation: null,
  selected: null,          // time step shown
  live: true,              // follow the newest step
  pos: { z: null, y: null, x: null },
  shape: null,             // [rows, n, n] of the shown step
  auto: true,
  vmin: null, vmax: null,  // manual window
  window: null,            // {step, version, window: [lo, hi], range: [min, max]}
  status: null,
  statusError: null,
  connected: false,
  lastMessage: 0,
  statusInterval: 0.5,
  latencies: [],           // [{step, kind, latency}] newest last
  scanEnded: false,
};

// ---- formatting ------------------------------------------------------------------------------
const fmtInt = (v) => (v === null || v === undefined ? "—" : Number(v).toLocaleString("en-US"));
function fmtNum(v, digits = 3) {
  if (v === null || v === undefined || !isFinite(v)) return "—";
  const a = Math.abs(v);
  if (a !== 0 && (a < 1e-3 || a >= 1e5)) return v.toExponential(2);
  return v.toPrecision(digits);
}
function fmtSeconds(s) {
  if (s === null || s === undefined || !isFinite(s)) return "—";
  if (s < 1) return `${(s * 1000).toFixed(0)} ms`;
  if (s < 90) return `${s.toFixed(1)} s`;
  const m = Math.floor(s / 60), r = Math.round(s % 60);
  if (m < 90) return `${m} min ${String(r).padStart(2, "0")} s`;
  return `${Math.floor(m / 60)} h ${String(m % 60).padStart(2, "0")} min`;
}
function setText(id, text) {
  const el = $(id);
  if (el && el.textContent !== text) el.textContent = text;
}

// ---- banner ----------------------------------------------------------------------------------
function updateBanner() {
  const banner = $("banner");
  const s = state.status;
  let level = null, title = "", text = "";
  if (s && s.state === "failed") {
    level = "error"; title = "Scan failed:"; text = s.reason || "no reason given";
  } else if (!state.connected && state.lastMessage) {
    level = "error"; title = "Connection to the service lost.";
    text = "Reconnecting… the numbers and images below are from before the loss.";
  } else if (!state.connected) {
    level = "warning"; title = "Connecting to the service…"; text = "";
  } else if (state.statusError) {
    level = "error"; title = "Service status unavailable:"; text = state.statusError;
  } else if (Date.now() - state.lastMessage > Math.max(5000, 6000 * state.statusInterval)) {
    level = "warning"; title = "No news from the service";
    text = `for ${fmtSeconds((Date.now() - state.lastMessage) / 1000)}.`;
  } else if (s && s.state === "done" && s.reason) {
    level = "info"; title = "Scan ended:"; text = s.reason;
  }
  banner.hidden = level === null;
  if (level) {
    banner.className = `banner ${level}`;
    setText("banner-title", title);
    setText("banner-text", text);
  }
  $("link-dot").className = "dot " + (state.connected ? "live" : state.lastMessage ? "lost" : "");
  setText("link-text", state.connected ? "live" : state.lastMessage ? "reconnecting…" : "connecting…");
}

// ---- status ----------------------------------------------------------------------------------
function updateStatus() {
  const s = state.status;
  if (!s) { updateBanner(); return; }
  const st = $("state");
  st.className = `state state-${s.state}`;
  st.dataset.state = s.state;
  setText("state", s.state);
  setText("scan-id", s.scan_id || "—");
  setText("output", s.output || "—");
  setText("version", s.version || "—");

  const c = s.counters || {};
  for (const name of ["received", "bad", "duplicate", "dropped", "out_of_order", "late",
                      "dropped_overload", "outside_range", "wrapped"]) {
    const el = $(`counter-${name}`);
    if (!el) continue;
    setText(`counter-${name}`, fmtInt(c[name]));
    const row = el.parentElement;
    if (row.hasAttribute("data-alarm")) row.classList.toggle("alarm", (c[name] || 0) > 0);
  }
  const reasons = Object.entries(c.bad_reasons || {}).map(([r, n]) => `${r}: ${n}`);
  setText("bad-reasons", reasons.join(" · "));

  const ingest = s.ingest || {};
  setText("rate-frames", ingest.frames_per_s == null ? "—" : ingest.frames_per_s.toFixed(1));
  setText("rate-bytes", ingest.bytes_per_s == null ? "—" : (ingest.bytes_per_s / 1e6).toFixed(1));

  const steps = s.steps || {};
  const published = Math.max(steps.published_fbp || 0, steps.published_denoised || 0);
  setText("steps-text", `${fmtInt(published)} / ${fmtInt(steps.total)} published`);
  setText("steps-denoised", fmtInt(steps.published_denoised));
  $("steps-bar").style.width = `${steps.total ? (100 * published) / steps.total : 0}%`;
  setText("backlog", fmtInt(steps.backlog));

  const t = s.training || {};
  setText("training-state", t.state || "—");
  const frac = t.iterations ? Math.min(1, (t.iteration || 0) / t.iterations) : t.state === "done" ? 1 : 0;
  setText("training-text", t.iterations ? `${fmtInt(t.iteration)} / ${fmtInt(t.iterations)}` : "—");
  $("training-bar").style.width = `${100 * frac}%`;
  setText("eta", t.state === "running" ? fmtSeconds(t.eta_s) : t.state === "done"
    ? `done in ${fmtSeconds(t.elapsed_s)}` : "—");
  setText("loss-now", t.loss == null ? "" : `loss ${fmtNum(t.loss)}`);
  drawLoss(t.losses || []);

  const lat = s.latency_s || {};
  setText("latency-last", fmtSeconds(lat.last));
  setText("latency-median", fmtSeconds(lat.median));
  setText("latency-max", fmtSeconds(lat.max));
  updateBanner();
}

// ---- charts (inline SVG) ---------------------------------------------------------------------
const SVG = "http://www.w3.org/2000/svg";
function svgEl(name, attrs, text) {
  const el = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  if (text !== undefined) el.textContent = text;
  return el;
}
function sized(svg) {
  const r = svg.getBoundingClientRect();
  const w = Math.max(50, Math.round(r.width)), h = Math.max(30, Math.round(r.height));
  svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
  svg.replaceChildren();
  return [w, h];
}
let lastLossKey = "";
function drawLoss(losses) {
  const svg = $("loss-chart");
  const key = losses.length + ":" + losses[losses.length - 1] + ":" + svg.clientWidth;
  if (key === lastLossKey) return;
  lastLossKey = key;
  const [w, h] = sized(svg);
  const values = losses.filter((v) => v !== null && isFinite(v));
  if (values.length < 2) {
    svg.append(svgEl("text", { x: 8, y: h / 2 + 4 }, "no training loss yet"));
    return;
  }
  const log = values.every((v) => v > 0) && Math.max(...values) / Math.min(...values) > 10;
  const f = log ? Math.log10 : (v) => v;
  const ys = values.map(f);
  const lo = Math.min(...ys), hi = Math.max(...ys), span = hi - lo || 1;
  const left = 44, pad = 8;
  const pts = ys.map((y, i) => {
    const px = left + ((w - left - pad) * i) / (ys.length - 1);
    const py = pad + (h - 2 * pad) * (1 - (y - lo) / span);
    return `${px.toFixed(1)},${py.toFixed(1)}`;
  });
  svg.append(svgEl("line", { x1: left, y1: pad, x2: left, y2: h - pad, stroke: "#2a323d" }));
  svg.append(svgEl("text", { x: 4, y: pad + 8 }, fmtNum(Math.max(...values), 2)));
  svg.append(svgEl("text", { x: 4, y: h - pad }, fmtNum(Math.min(...values), 2)));
  svg.append(svgEl("text", { x: w - 70, y: h - pad - 2 }, log ? "log scale" : "linear"));
  svg.append(svgEl("polyline", { class: "curve raw", points: pts.join(" ") }));
  // A running mean over about a tenth of the history shows the trend through batch noise.
  const alpha = Math.min(1, 10 / ys.length);
  let mean = ys[0];
  const trend = ys.map((y, i) => {
    mean = i === 0 ? y : mean + alpha * (y - mean);
    const px = left + ((w - left - pad) * i) / (ys.length - 1);
    const py = pad + (h - 2 * pad) * (1 - (mean - lo) / span);
    return `${px.toFixed(1)},${py.toFixed(1)}`;
  });
  svg.append(svgEl("polyline", { class: "curve", points: trend.join(" ") }));
}
function drawLatency() {
  const svg = $("latency-chart");
  const [w, h] = sized(svg);
  const items = state.latencies.slice(-40);
  if (!items.length) {
    svg.append(svgEl("text", { x: 8, y: h / 2 + 4 }, "no step published yet"));
    return;
  }
  const max = Math.max(...items.map((d) => d.latency || 0)) || 1;
  const bw = w / 40;
  items.forEach((d, i) => {
    const bh = Math.max(1, ((h - 14) * (d.latency || 0)) / max);
    const rect = svgEl("rect", {
      class: `barfill ${d.kind}` + (d.incomplete ? " warn" : ""), x: i * bw + 1, y: h - bh,
      width: Math.max(1, bw - 2), height: bh,
    });
    rect.append(svgEl("title", {}, `step ${d.step} ${d.kind}: ${fmtSeconds(d.latency)}` +
      (d.incomplete ? ` (incomplete, ${d.missing} frames missing)` : "")));
    svg.append(rect);
  });
  svg.append(svgEl("text", { x: 4, y: 10 }, `max ${fmtSeconds(max)}`));
}

// ---- steps and selection ---------------------------------------------------------------------
function loadSnapshot(snap) {
  state.steps = new Map(snap.steps.map((s) => [s.time_step, s.kinds]));
  state.generation = snap.generation;
  state.scanEnded = snap.closed;
  if (state.live || !state.steps.has(state.selected)) state.selected = snap.newest;
  refreshSteps();
}
function keptSteps() { return [...state.steps.keys()].sort((a, b) => a - b); }

function onStep(ev) {
  if (ev.generation !== state.generation) {
    state.steps.clear();
    state.generation = ev.generation;
  }
  const kept = new Set(ev.kept);
  for (const step of [...state.steps.keys()]) if (!kept.has(step)) state.steps.delete(step);
  if (kept.has(ev.time_step)) {
    const kinds = state.steps.get(ev.time_step) || {};
    kinds[ev.kind] = ev;
    state.steps.set(ev.time_step, kinds);
  }
  if (ev.latency_s !== null) {
    state.latencies.push({ step: ev.time_step, kind: ev.kind, latency: ev.latency_s,
      incomplete: ev.incomplete, missing: ev.missing });
    state.latencies = state.latencies.slice(-200);
    drawLatency();
  }
  state.scanEnded = false;
  if (state.live || !state.steps.has(state.selected)) state.selected = Math.max(...ev.kept);
  refreshSteps();
}

function refreshSteps() {
  const steps = keptSteps();
  const slider = $("step-slider");
  slider.disabled = steps.length === 0;
  slider.max = Math.max(0, steps.length - 1);
  if (state.selected !== null && state.steps.has(state.selected)) {
    slider.value = steps.indexOf(state.selected);
  }
  const newest = steps.length ? steps[steps.length - 1] : null;
  setText("step-label", state.selected === null ? "waiting for data"
    : `step ${state.selected}` + (state.selected === newest ? " · newest" : ` · newest ${newest}`));
  $("live-button").classList.toggle("on", state.live);
  const kinds = state.selected === null ? {} : state.steps.get(state.selected) || {};
  const any = kinds.denoised || kinds.fbp;
  if (any) setShape(any.shape);
  for (const kind of KINDS) {
    const info = kinds[kind];
    const tag = $(`tag-${kind}`);
    let text = "";
    if (info) {
      text = `step ${state.selected}` + (info.latency_s != null ? ` · ${fmtSeconds(info.latency_s)}` : "");
      if (info.incomplete) text += ` · incomplete (${info.missing} missing)`;
    }
    tag.textContent = text;
    tag.classList.toggle("warn", !!(info && info.incomplete));
  }
  refreshWindow();
  refreshImages();
}

function setShape(shape) {
  const same = state.shape && shape.every((v, i) => v === state.shape[i]);
  if (same) return;
  state.shape = shape;
  const [rows, n] = shape;
  for (const [axis, size] of [["z", rows], ["y", n], ["x", n]]) {
    const slider = $(`${axis}-slider`);
    slider.max = size - 1;
    if (state.pos[axis] === null || state.pos[axis] >= size) state.pos[axis] = Math.floor(size / 2);
    slider.value = state.pos[axis];
  }
  // Thin volumes (few detector rows) are stretched along z so the side views stay legible.
  const stretch = Math.max(1, Math.ceil((0.25 * n) / rows));
  document.querySelectorAll(".ortho .view").forEach((v) => {
    v.style.aspectRatio = `${n} / ${rows * stretch}`;
    const label = v.querySelector(".label");
    label.textContent = label.dataset.name + (stretch > 1 ? ` · z ×${stretch}` : "");
  });
  updatePositionLabels();
}

function updatePositionLabels() {
  if (!state.shape) return;
  const [rows, n] = state.shape;
  setText("z-label", `${state.pos.z} / ${rows - 1}`);
  setText("y-label", `${state.pos.y} / ${n - 1}`);
  setText("x-label", `${state.pos.x} / ${n - 1}`);
  document.querySelectorAll(".cross-h").forEach((e) => { e.style.top = `${(100 * (state.pos.y + 0.5)) / n}%`; });
  document.querySelectorAll(".cross-v").forEach((e) => { e.style.left = `${(100 * (state.pos.x + 0.5)) / n}%`; });
  document.querySelectorAll(".cross-z").forEach((e) => { e.style.top = `${(100 * (state.pos.z + 0.5)) / rows}%`; });
}

// ---- contrast --------------------------------------------------------------------------------
async function refreshWindow() {
  const step = state.selected;
  if (step === null || !state.steps.has(step)) return;
  const kinds = state.steps.get(step);
  const version = Math.max(...Object.values(kinds).map((k) => k.version));
  if (state.window && state.window.step === step && state.window.version === version) return;
  try {
    const r = await fetch(`/api/window?step=${step}`);
    if (!r.ok) return;  // the step left the store meanwhile; the next step event refreshes
    const w = await r.json();
    state.window = { step, version, window: w.window, range: w.range };
    showWindow();
  } catch (e) { /* connection trouble is reported by the event stream's banner */ }
}
function sliderToValue(v) {
  const [a, b] = state.window.range;
  return a + ((b - a) * v) / 1000;
}
function valueToSlider(x) {
  const [a, b] = state.window.range;
  return Math.round((1000 * (x - a)) / ((b - a) || 1));
}
function showWindow() {
  if (!state.window) return;
  const [lo, hi] = state.auto ? state.window.window : [state.vmin, state.vmax];
  $("vmin-slider").value = valueToSlider(lo);
  $("vmax-slider").value = valueToSlider(hi);
  setText("window-label", `${fmtNum(lo)} … ${fmtNum(hi)}`);
}

// ---- images ----------------------------------------------------------------------------------
const panels = {};  // "kind-axis" -> {img, note, busy, want, shown, objectUrl}
function imageUrl(kind, axis) {
  const q = new URLSearchParams({ step: state.selected, kind, axis, index: state.pos[axis] });
  const info = state.steps.get(state.selected)[kind];
  q.set("v", info.version);  // a new version of the step is a new image
  if (!state.auto && state.vmin !== null) { q.set("vmin", state.vmin); q.set("vmax", state.vmax); }
  return `/api/slice.png?${q}`;
}
function refreshImages() {
  updatePositionLabels();
  for (const kind of KINDS) for (const axis of AXES) {
    const p = panels[`${kind}-${axis}`];
    const kinds = state.selected === null ? null : state.steps.get(state.selected);
    if (!kinds || !kinds[kind]) {
      const msg = state.selected === null ? "waiting for the first time step…"
        : kind === "denoised" ? `no denoised result for step ${state.selected} yet` +
          (state.status && state.status.training && state.status.training.state !== "done"
            ? ` (training ${state.status.training.state})` : "")
          : `no FBP for step ${state.selected}`;
      showNote(p, axis === "z" ? msg : null, false);  // side views: too small to say it twice
      p.img.removeAttribute("src");
      delete p.img.dataset.step;
      p.want = null;
      p.shown = null;
      continue;
    }
    p.want = imageUrl(kind, axis);
    load(p);
  }
}
async function load(p) {
  // One request per view at a time; the newest wish wins when it ends (dragging stays smooth).
  if (p.busy || !p.want || p.want === p.shown) return;
  const url = p.want;
  p.busy = true;
  try {
    const r = await fetch(url);
    if (url !== p.want) {
      // The wish changed while this was in flight (or the kind went away): not worth showing.
    } else if (r.ok) {
      const blob = await r.blob();
      const objectUrl = URL.createObjectURL(blob);
      await new Promise((resolve) => { p.img.onload = resolve; p.img.onerror = resolve; p.img.src = objectUrl; });
      if (p.objectUrl) URL.revokeObjectURL(p.objectUrl);
      p.objectUrl = objectUrl;
      p.img.dataset.url = url;
      p.img.dataset.step = r.headers.get("X-Step");
      showNote(p, null);
    } else {
      let message = `${r.status} ${r.statusText}`;
      try { message = (await r.json()).error.message; } catch (e) { /* not JSON: keep the code */ }
      showNote(p, message, true);
    }
    p.shown = url;
  } catch (e) {
    showNote(p, "image request failed: the service cannot be reached", true);
  } finally {
    p.busy = false;
  }
  if (p.want && p.want !== p.shown) load(p);
}
function showNote(p, message, isError) {
  p.note.hidden = !message;
  if (message) {
    p.note.textContent = message;
    p.note.classList.toggle("error", !!isError);
    p.view.dataset.error = isError ? message : "";
    p.shown = null;
  } else {
    p.view.dataset.error = "";
  }
}

// ---- event stream ----------------------------------------------------------------------------
function connect() {
  const source = new EventSource("/api/events");
  const seen = () => { state.lastMessage = Date.now(); };
  source.onopen = () => { state.connected = true; seen(); updateBanner(); };
  source.onerror = () => { state.connected = false; updateBanner(); };
  source.addEventListener("hello", (e) => {
    const hello = JSON.parse(e.data);
    state.connected = true; seen();
    state.statusInterval = hello.status_interval_s;
    loadSnapshot(hello.steps);
    updateBanner();
  });
  source.addEventListener("status", (e) => {
    const tick = JSON.parse(e.data);
    seen();
    state.status = tick.status || state.status;
    state.statusError = tick.error;
    setText("viewers", fmtInt(tick.dashboard.clients));
    setText("updated", new Date(tick.dashboard.time * 1000).toLocaleTimeString("en-GB"));
    updateStatus();
  });
  source.addEventListener("step", (e) => { seen(); onStep(JSON.parse(e.data)); });
  source.addEventListener("resync", (e) => { seen(); loadSnapshot(JSON.parse(e.data)); });
  source.addEventListener("reset", () => {
    seen(); state.steps.clear(); state.latencies = []; state.window = null; drawLatency();
  });
  source.addEventListener("closed", () => { seen(); state.scanEnded = true; });
}

// ---- controls --------------------------------------------------------------------------------
function bindControls() {
  $("step-slider").addEventListener("input", (e) => {
    const steps = keptSteps();
    state.selected = steps[Number(e.target.value)];
    state.live = state.selected === steps[steps.length - 1];
    refreshSteps();
  });
  $("live-button").addEventListener("click", () => {
    state.live = !state.live;
    if (state.live) state.selected = keptSteps().pop() ?? null;
    refreshSteps();
  });
  for (const axis of AXES) {
    $(`${axis}-slider`).addEventListener("input", (e) => {
      state.pos[axis] = Number(e.target.value);
      refreshImages();
    });
  }
  document.querySelectorAll(".view.axial").forEach((view) => {
    view.addEventListener("click", (e) => {
      if (!state.shape) return;
      const r = view.querySelector("img").getBoundingClientRect(), n = state.shape[1];
      state.pos.x = Math.min(n - 1, Math.max(0, Math.floor((n * (e.clientX - r.left)) / r.width)));
      state.pos.y = Math.min(n - 1, Math.max(0, Math.floor((n * (e.clientY - r.top)) / r.height)));
      $("x-slider").value = state.pos.x;
      $("y-slider").value = state.pos.y;
      refreshImages();
    });
  });
  $("auto-contrast").addEventListener("change", (e) => {
    state.auto = e.target.checked;
    if (!state.auto && state.window) [state.vmin, state.vmax] = state.window.window;
    showWindow();
    refreshImages();
  });
  for (const which of ["vmin", "vmax"]) {
    $(`${which}-slider`).addEventListener("input", () => {
      if (!state.window) return;
      let lo = sliderToValue(Number($("vmin-slider").value));
      let hi = sliderToValue(Number($("vmax-slider").value));
      if (hi <= lo) {
        const eps = (state.window.range[1] - state.window.range[0]) / 1000 || 1e-6;
        if (which === "vmin") lo = hi - eps; else hi = lo + eps;
      }
      state.auto = false;
      $("auto-contrast").checked = false;
      state.vmin = lo; state.vmax = hi;
      showWindow();
      refreshImages();
    });
  }
  window.addEventListener("resize", () => { lastLossKey = ""; updateStatus(); drawLatency(); });
}

function init() {
  for (const article of document.querySelectorAll(".panel")) {
    for (const view of article.querySelectorAll(".view")) {
      const key = `${article.dataset.kind}-${view.dataset.axis}`;
      panels[key] = { view, img: view.querySelector("img"), note: view.querySelector(".note"),
        busy: false, want: null, shown: null, objectUrl: null };
    }
  }
  bindControls();
  drawLatency();
  drawLoss([]);
  refreshImages();
  updateBanner();
  setInterval(updateBanner, 1000);  // the "no news" watchdog
  connect();
}
document.addEventListener("DOMContentLoaded", init);
