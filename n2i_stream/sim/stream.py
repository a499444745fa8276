"""A simulated detector on the network: frames of a scan sent over ZMQ at a given rate.

:func:`frame_messages` turns frames (a :class:`~n2i_stream.sim.scan.DynamicScan`, or any
iterable of frame-like objects in acquisition order) into wire messages in one of the accepted
dialects: ``n2i`` carries kind and angle, ``array-1.0`` neither, ``gigafrost`` the kind only —
as in the field, the receiver then takes angles (and for ``array-1.0`` kinds) from the scan
configuration, which :func:`scan_config_for` writes for a simulated scan. :class:`StreamFaults`
injects what real streams do: dropped, duplicated and shuffled frames, a wrapping 16-bit
counter, and bad messages. :func:`send_messages` sends them, paced to ``rate`` frames per second
(the pacing sleeps are the detector's clock, not synchronisation).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np

from ..errors import ConfigError, ServiceError
from ..wire import WireFormat, frame_message
from .scan import DynamicScan, SimConfig

__all__ = [
    "BAD_MESSAGE_KINDS",
    "FrameLike",
    "StreamFaults",
    "StreamStats",
    "frame_messages",
    "scan_config_for",
    "send_messages",
    "stream",
]

Message = list[Any]
#: a message and whether it is one of the scan's frames (paced and counted) or a bad message
Outgoing = tuple[Message, bool]

#: the bad messages :class:`StreamFaults` can interleave, in the order they are cycled through
BAD_MESSAGE_KINDS = ("malformed_json", "truncated", "header_only", "unknown_htype", "wrong_shape")


class FrameLike(Protocol):
    """What a frame needs to go on the wire (e.g. :class:`~n2i_stream.sim.scan.SimFrame`)."""

    frame: int
    kind: str
    data: np.ndarray
    angle: float | None


@dataclass(frozen=True)
class StreamFaults:
    """Faults injected into a stream (all off by default); ``seed`` makes them repeatable."""

    drop: float = 0.0  # fraction of projections never sent
    duplicate: float = 0.0  # fraction of frames sent a second time, a few frames later
    shuffle: int = 0  # frames permuted within consecutive windows of this many (0, 1: none)
    id_offset: int = 0  # added to every frame id (a counter that does not start at 0)
    id_bits: int | None = None  # frame ids sent modulo 2**id_bits (the counter wraps)
    bad_messages: int = 0  # bad messages interleaved at random places (BAD_MESSAGE_KINDS)
    seed: int = 0

    def __post_init__(self) -> None:
        problems = []
        if not 0 <= self.drop < 1 or not 0 <= self.duplicate <= 1:
            problems.append(f"drop in [0, 1) and duplicate in [0, 1], got {self.drop}, "
                            f"{self.duplicate}")  # fmt: skip
        if self.shuffle < 0 or self.id_offset < 0 or self.bad_messages < 0:
            problems.append("shuffle, id_offset and bad_messages must be >= 0")
        if self.id_bits is not None and not 8 <= self.id_bits <= 63:
            problems.append(f"id_bits: expected 8..63 or null, got {self.id_bits}")
        if self.id_bits is not None and self.id_offset >= 1 << self.id_bits:
            problems.append(f"id_offset {self.id_offset} does not fit in {self.id_bits} bits")
        if problems:
            raise ConfigError("stream faults: " + "; ".join(problems))


@dataclass
class StreamStats:
    """What a stream sent: frames (duplicates included), bad messages, the ids it left out."""

    frames: int = 0
    bad: int = 0
    dropped_ids: tuple[int, ...] = ()  # unwrapped ids of the projections not sent
    duplicated: int = 0
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0


def scan_config_for(
    sim: SimConfig,
    *,
    scan_id: str = "sim",
    faults: StreamFaults | None = None,
    theta: Sequence[float] | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """The service's scan configuration (plain data) for a simulated scan streamed as is.

    Angles are the table of the scan's exact angles (``theta``, default computed from ``sim``);
    id runs follow the acquisition order (darks, flats, projections, closing flats) shifted by
    ``faults.id_offset``; ``fields`` add or override keys (``train_steps``, ``output``, ...).
    """
    faults = faults or StreamFaults()
    if theta is None:
        theta = DynamicScan(sim).theta
    first = faults.id_offset
    darks = (first, sim.n_darks)
    flats = (first + sim.n_darks, sim.n_flats)
    projections = (first + sim.n_darks + sim.n_flats, sim.n_projections)
    flat_runs = [list(flats)]
    if sim.n_flats_end:
        flat_runs.append([projections[0] + sim.n_projections, sim.n_flats_end])
    config = {
        "scan_id": scan_id,
        "rows": sim.rows,
        "cols": sim.width,
        "frames_per_step": sim.per_step,
        "steps": sim.steps,
        "dtype": "uint16",
        "angles": [float(a) for a in theta],
        "projection_ids": [list(projections)],
        "dark_ids": [list(darks)],
        "flat_ids": flat_runs,
        "id_bits": faults.id_bits,
        "train_steps": min(max(2, sim.dynamics_start), sim.steps - 1),
        "center_offset": sim.center_offset,
    }
    config.update(fields)
    return config


def _bad_message(kind: str, good: Message, shape: tuple[int, int]) -> Message:
    header, payload = good
    if kind == "malformed_json":
        return [b"{not json", payload]
    if kind == "truncated":
        return [header, bytes(memoryview(payload).cast("B")[: max(1, len(payload) // 2)])]
    if kind == "header_only":
        return [header]
    if kind == "unknown_htype":
        return [b'{"htype": "dimage-1.0", "frame": 1}', payload]
    if kind == "wrong_shape":
        rows, cols = shape
        return frame_message("array-1.0", 0, np.zeros((rows + 1, cols), np.uint16))
    raise ConfigError(f"unknown bad message kind {kind!r}; expected one of {BAD_MESSAGE_KINDS}")


def frame_messages(
    frames: Iterable[FrameLike],
    fmt: WireFormat,
    faults: StreamFaults | None = None,
    *,
    stats: StreamStats | None = None,
) -> Iterator[Outgoing]:
    """``([header, payload], is_frame)`` for ``frames`` in dialect ``fmt``, with ``faults``.

    Faults that reorder (shuffle, duplicate) need the frames of a window at once; everything
    else streams. ``stats`` (if given) records the unwrapped ids of dropped projections and the
    duplicates and bad messages made.
    """
    faults = faults or StreamFaults()
    stats = stats if stats is not None else StreamStats()
    rng = np.random.default_rng(faults.seed)
    modulus = None if faults.id_bits is None else 1 << faults.id_bits
    dropped: list[int] = []
    pending_duplicates: list[tuple[int, Message]] = []
    window: list[Message] = []
    bad_left = faults.bad_messages
    bad_kind = 0
    shape: tuple[int, int] | None = None

    def encode(f: FrameLike) -> tuple[int, Message]:
        uid = f.frame + faults.id_offset
        wire_id = uid if modulus is None else uid % modulus
        angle = f.angle if fmt == "n2i" else None
        kind = None if fmt == "array-1.0" else f.kind
        return uid, frame_message(fmt, wire_id, f.data, kind=kind, angle=angle)  # type: ignore[arg-type]

    def flush(batch: list[Message]) -> Iterator[Outgoing]:
        nonlocal bad_left, bad_kind
        if faults.shuffle > 1:
            order = rng.permutation(len(batch))
            batch = [batch[i] for i in order]
        for message in batch:
            yield message, True
            if bad_left and shape is not None and rng.random() < 0.05:
                bad_left -= 1
                stats.bad += 1
                yield _bad_message(BAD_MESSAGE_KINDS[bad_kind % 5], message, shape), False
                bad_kind += 1

    count = 0
    for f in frames:
        shape = (int(f.data.shape[0]), int(f.data.shape[1]))
        uid, message = encode(f)
        if f.kind == "projection" and faults.drop and rng.random() < faults.drop:
            dropped.append(uid)
            continue
        window.append(message)
        if faults.duplicate and rng.random() < faults.duplicate:
            # a copy of the payload: the original's buffer may be reused by the producer
            copy = [message[0], bytes(message[1])]
            pending_duplicates.append((count + 3, copy))
            stats.duplicated += 1
        count += 1
        due = [m for at, m in pending_duplicates if at <= count]
        pending_duplicates = [(at, m) for at, m in pending_duplicates if at > count]
        window.extend(due)
        if len(window) >= max(1, faults.shuffle):
            yield from flush(window)
            window = []
    window.extend(m for _, m in pending_duplicates)
    yield from flush(window)
    while bad_left and shape is not None:  # the rest of the bad messages go at the end
        bad_left -= 1
        stats.bad += 1
        yield _bad_message(BAD_MESSAGE_KINDS[bad_kind % 5], [b"{}", b"\0\0"], shape), False
        bad_kind += 1
    stats.dropped_ids = tuple(dropped)


def send_messages(
    sock: Any,
    messages: Iterable[Outgoing],
    *,
    rate: float | None = None,
    stop: Callable[[], bool] | None = None,
    stats: StreamStats | None = None,
) -> StreamStats:
    """Send ``messages`` on the ZMQ socket ``sock``, ``rate`` frames per second (None: at once).

    Bad messages do not count as frames and are not paced. ``stop()`` is checked before every
    send; a true result ends the stream early.
    """
    stats = stats if stats is not None else StreamStats()
    if rate is not None and rate <= 0:
        raise ConfigError(f"rate: expected frames per second > 0 or None, got {rate}")
    t0 = time.monotonic()
    sent = 0
    for message, is_frame in messages:
        if stop is not None and stop():
            break
        if rate is not None and is_frame:
            delay = t0 + sent / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)  # the detector's frame clock
        try:
            sock.send_multipart(message, copy=False)
        except Exception as exc:
            raise ServiceError(f"sending frame {sent} failed: {exc}") from exc
        sent += is_frame
    stats.frames += sent
    stats.seconds = time.monotonic() - t0
    return stats


def stream(
    messages: Iterable[Outgoing],
    endpoint: str,
    *,
    socket_type: Literal["push", "pub"] = "push",
    bind: bool = False,
    rate: float | None = None,
    context: Any = None,
    linger: float = 30.0,
    stop: Callable[[], bool] | None = None,
    stats: StreamStats | None = None,
) -> StreamStats:
    """Open a PUSH (or PUB) socket on ``endpoint``, send ``messages`` at ``rate``, close.

    Closing waits up to ``linger`` seconds for queued messages to leave. PUSH to a receiver that
    is not there yet queues (ZMQ's high-water mark) and then waits; PUB drops what no subscriber
    takes, so a PUB stream should start after its subscribers have connected.
    """
    import zmq

    ctx = context if context is not None else zmq.Context()
    sock = ctx.socket(zmq.PUSH if socket_type == "push" else zmq.PUB)
    sock.linger = int(linger * 1000)
    try:
        if bind:
            sock.bind(endpoint)
        else:
            sock.connect(endpoint)
        return send_messages(sock, messages, rate=rate, stop=stop, stats=stats)
    except zmq.ZMQError as exc:
        verb = "bind" if bind else "connect"
        raise ServiceError(f"cannot {verb} the {socket_type} stream to {endpoint}: {exc}") from exc
    finally:
        sock.close()
        if context is None:
            ctx.term()
