"""Scan context from a Bluesky document stream: the service's document-driven mode.

A RunEngine publishes its documents through ``bluesky.callbacks.zmq`` (Publisher → Proxy →
subscribers; conventional proxy ports 5577 in, 5578 out). Each document is one ZMQ frame
``prefix b" " name b" " payload`` (the prefix may be empty, so the frame may begin with a space).
:class:`DocumentListener` subscribes to the proxy's out port and turns the documents of runs that
carry ``n2i`` metadata into session starts and ends:

* a ``start`` document whose ``n2i`` table holds a ``scan`` table (the ScanConfig keys, as the
  plans in ``n2i_plans`` record them) and ``control: "documents"`` becomes a :class:`ScanStart`
  (runs with ``control: "device"`` are configured through the control socket by the plan's
  device and are ignored here unless ``accept="all"``);
* the ``stop`` document of such a run becomes a :class:`RunStop` (its exit status and reason).

Everything else (descriptors, events, runs without ``n2i``) is counted and ignored; a stop whose
start was missed (a subscriber that joined late) is ignored too.

**Only msgpack is decoded.** The Publisher's default serializer is pickle, and unpickling network
input runs arbitrary code, so a payload that is a pickle is refused (counted as ``pickle``), and so
is a msgpack-numpy object array (which would be a pickle inside). The beamline sets
``Publisher(..., serializer=n2i_stream.service.documents.packb)`` (or msgpack with msgpack-numpy's
encoder: the array format is the same). NumPy arrays and scalars in documents are decoded by our
own hook into arrays of plain (numeric, bool, bytes, text) dtypes.

Wiring into the service (callbacks run on the listener's thread; keep them short)::

    class Handler:  # satisfies DocumentCallbacks
        def on_start(self, start: ScanStart) -> None:
            service.configure(start.scan)      # start.scan is what scan_factory returned
        def on_stop(self, stop: RunStop) -> None:
            # A successful run's scan ends by itself once its last frames are in (they travel
            # on the data socket and may still be on their way when the stop document comes);
            # a run that failed or was aborted ends its scan now.
            if stop.exit_status != "success":
                service.abort(wait=False)

    listener = DocumentListener(
        DocumentListenerConfig(endpoint="tcp://proxy-host:5578"),
        Handler(),
        scan_factory=lambda m: ScanConfig.from_mapping(m, source="start document"),
    )
    listener.start()
    ...
    listener.close()

Frames that arrive before ``on_start`` has configured the scan find no scan (the service counts
them as ``frames_without_scan``): the detector should begin after the start document, as the
plans in ``n2i_plans`` do (the start document is emitted before any frame is taken), and the
path start document → proxy → listener → configure must be faster than the plan's first
acquisition.

An exception raised by ``scan_factory`` (e.g. ConfigError) or by a callback is logged, counted
(``rejected_starts`` or ``callback_errors``) and kept in :attr:`DocumentListener.last_error`; the
listener keeps running. :meth:`DocumentListener.handle` processes one message without a thread
(for a service that polls the socket itself, and for tests).
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import msgpack
import numpy as np
import zmq

from ..errors import ConfigError, DataError, ServiceError
from ..io.zmq_thread import ReceiverThread

__all__ = [
    "DOCUMENT_REJECTIONS",
    "DocumentCallbacks",
    "DocumentCounters",
    "DocumentError",
    "DocumentListener",
    "DocumentListenerConfig",
    "RunStop",
    "ScanStart",
    "decode_message",
    "encode_message",
    "looks_like_pickle",
    "packb",
    "unpackb",
]

log = logging.getLogger(__name__)

#: Stable keys naming why a document message was refused.
DOCUMENT_REJECTIONS: tuple[str, ...] = (
    "pickle",  # the payload is a pickle (or holds a pickled object array): never unpickled
    "malformed_frame",  # not ``prefix name payload`` separated by spaces
    "malformed_msgpack",  # the payload is not one valid msgpack object
    "bad_numpy",  # an encoded NumPy array or scalar that does not decode safely
    "not_a_document",  # the payload is not a map, or the name is not a document name
    "bad_n2i",  # a start document whose n2i metadata is not a table with a scan table
    "too_large",  # larger than max_bytes
)

#: Document names the RunEngine emits (bluesky.run_engine.DocumentNames).
_DOCUMENT_NAMES = frozenset(
    {
        "start",
        "descriptor",
        "event",
        "event_page",
        "stop",
        "resource",
        "datum",
        "datum_page",
        "stream_resource",
        "stream_datum",
        "bulk_events",
        "bulk_datum",
    }
)

# Dtype kinds an encoded array may have: booleans, numbers, bytes and text. Object arrays ("O")
# are pickles; structured ("V") and datetime arrays are not needed in scan metadata.
_SAFE_KINDS = frozenset("biufcSU")


class DocumentError(DataError):
    """A document message was refused; ``reason`` is one of :data:`DOCUMENT_REJECTIONS`."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(message)


# -- msgpack with NumPy -------------------------------------------------------------------------


def _encode_numpy(obj: Any) -> Any:
    """msgpack ``default`` hook: NumPy arrays and scalars as msgpack-numpy's maps."""
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in _SAFE_KINDS:
            raise TypeError(f"cannot encode a NumPy array of dtype {obj.dtype} (not plain data)")
        return {
            b"nd": True,
            b"type": obj.dtype.str,
            b"kind": b"",
            b"shape": list(obj.shape),
            b"data": np.ascontiguousarray(obj).tobytes(),
        }
    if isinstance(obj, (np.bool_, np.number)):
        return {b"nd": False, b"type": obj.dtype.str, b"data": obj.tobytes()}
    if isinstance(obj, complex):
        return {b"complex": True, b"data": repr(obj)}
    raise TypeError(f"cannot encode {type(obj).__name__} as msgpack")


def packb(doc: Any) -> bytes:
    """msgpack bytes of ``doc``, NumPy arrays and scalars included (a Publisher ``serializer``)."""
    return msgpack.packb(doc, default=_encode_numpy, use_bin_type=True)


def _key(obj: Mapping[Any, Any], name: str) -> Any:
    # msgpack-numpy writes bytes keys; accept text keys too (other encoders).
    if name.encode() in obj:
        return obj[name.encode()]
    return obj.get(name)


def _decode_numpy(obj: dict[Any, Any]) -> Any:
    """msgpack ``object_hook``: maps written by :func:`_encode_numpy` (or msgpack-numpy) → NumPy."""
    nd = _key(obj, "nd")
    if nd is None:
        if _key(obj, "complex") is True:
            text = _key(obj, "data")
            try:
                return complex(text.decode() if isinstance(text, bytes) else text)
            except (TypeError, ValueError, AttributeError):
                raise DocumentError("bad_numpy", f"bad encoded complex {text!r}") from None
        return obj
    kind = _key(obj, "kind")
    if kind in (b"O", "O"):
        raise DocumentError(
            "pickle",
            "refused an encoded NumPy object array: its data is a pickle, which is never loaded "
            "from the network",
        )
    type_str, data = _key(obj, "type"), _key(obj, "data")
    if isinstance(type_str, bytes):
        type_str = type_str.decode("ascii", "replace")
    if not isinstance(type_str, str) or not isinstance(data, bytes):
        raise DocumentError(
            "bad_numpy",
            f"expected an encoded NumPy value with a dtype string and bytes, got type "
            f"{type_str!r} and data of {type(data).__name__}",
        )
    try:
        dtype = np.dtype(type_str)
    except TypeError:
        raise DocumentError("bad_numpy", f"unknown NumPy dtype {type_str!r}") from None
    if dtype.kind not in _SAFE_KINDS:
        raise DocumentError(
            "bad_numpy", f"refused NumPy dtype {dtype} (only booleans, numbers and text)"
        )
    if nd is True:
        shape = _key(obj, "shape")
        if not isinstance(shape, (list, tuple)) or not all(
            type(n) is int and n >= 0 for n in shape
        ):
            raise DocumentError("bad_numpy", f"bad encoded array shape {shape!r}")
        count = math.prod(shape)
        if count * dtype.itemsize != len(data):
            raise DocumentError(
                "bad_numpy",
                f"encoded array of shape {list(shape)} {dtype}: expected "
                f"{count * dtype.itemsize} bytes, got {len(data)}",
            )
        return np.frombuffer(data, dtype=dtype, count=count).reshape(shape).copy()
    if len(data) != dtype.itemsize:
        raise DocumentError(
            "bad_numpy", f"encoded {dtype} scalar: expected {dtype.itemsize} bytes, got {len(data)}"
        )
    return np.frombuffer(data, dtype=dtype)[0]


def looks_like_pickle(payload: bytes | memoryview) -> bool:
    """Whether ``payload`` is a pickle: protocol 2+ (``0x80 proto … .``) or a text pickle.

    A msgpack payload cannot be mistaken for one: msgpack's ``0x80`` is an empty map, which a
    valid message then ends with, while a pickle goes on and ends with the STOP opcode ``.``.
    """
    head = bytes(payload[:2])
    tail = bytes(payload[-1:])
    if len(payload) >= 3 and head[0] == 0x80 and 2 <= head[1] <= 5 and tail == b".":
        return True
    return len(payload) >= 2 and head[:1] in (b"(", b"}", b"]") and tail == b"."


def unpackb(payload: bytes | memoryview) -> Any:
    """Decode one msgpack object (NumPy maps → arrays); DocumentError if it is a pickle or bad."""
    if looks_like_pickle(payload):
        raise DocumentError(
            "pickle",
            "refused a pickled document: the document stream must be msgpack "
            "(Publisher(serializer=n2i_stream.service.documents.packb)); "
            "unpickling network input can run arbitrary code",
        )
    try:
        return msgpack.unpackb(payload, raw=False, object_hook=_decode_numpy, strict_map_key=False)
    except DocumentError:
        raise
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as e:
        raise DocumentError(
            "malformed_msgpack", f"the document payload is not valid msgpack: {e}"
        ) from None


def encode_message(name: str, doc: Mapping[str, Any], prefix: bytes = b"") -> bytes:
    """One proxy frame ``prefix b" " name b" " msgpack(doc)`` (as a msgpack Publisher sends)."""
    if b" " in prefix:
        raise ConfigError(f"a document prefix may not contain a space, got {prefix!r}")
    return b" ".join([prefix, name.encode(), packb(dict(doc))])


def decode_message(message: bytes | memoryview) -> tuple[bytes, str, dict[str, Any]]:
    """``(prefix, name, document)`` of one proxy frame; DocumentError when refused."""
    message = bytes(message)
    parts = message.split(b" ", 2)
    if len(parts) != 3:
        raise DocumentError(
            "malformed_frame",
            f"expected b'prefix name payload' separated by spaces, got {message[:60]!r}",
        )
    prefix, raw_name, payload = parts
    try:
        name = raw_name.decode("ascii")
    except UnicodeDecodeError:
        name = ""
    if name not in _DOCUMENT_NAMES:
        raise DocumentError(
            "not_a_document", f"expected a document name such as 'start', got {raw_name[:40]!r}"
        )
    doc = unpackb(payload)
    if not isinstance(doc, dict):
        raise DocumentError(
            "not_a_document", f"the {name} payload is a {type(doc).__name__}, not a map"
        )
    return prefix, name, doc


def _plain(value: Any) -> Any:
    """Arrays and NumPy scalars → lists and Python numbers (ScanConfig takes plain data)."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


# -- listener -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class DocumentListenerConfig:
    """Where the document stream comes from (``config.from_mapping``)."""

    endpoint: str  # the proxy's out address, e.g. "tcp://host:5578"
    prefix: str = ""  # only documents with this Publisher prefix ("" = every publisher)
    bind: bool = False  # bind instead of connecting (when publishers connect to us directly)
    rcvhwm: int = 1000  # messages ZMQ queues before dropping (SUB drops under load)
    max_bytes: int = 16 * 1024 * 1024  # larger messages are refused unread ("too_large")
    accept: Literal["documents", "all"] = "documents"  # runs with n2i.control == "documents",
    # or every run with an n2i scan table (also those a device already configured)

    def __post_init__(self) -> None:
        problems = []
        if "://" not in self.endpoint:
            problems.append(f"endpoint: expected 'transport://address', got {self.endpoint!r}")
        if " " in self.prefix:
            problems.append(f"prefix: may not contain a space, got {self.prefix!r}")
        if self.rcvhwm < 0:
            problems.append(f"rcvhwm: expected >= 0 (0 = unlimited), got {self.rcvhwm}")
        if self.max_bytes < 1:
            problems.append(f"max_bytes: expected >= 1, got {self.max_bytes}")
        if self.accept not in ("documents", "all"):
            problems.append(f"accept: expected 'documents' or 'all', got {self.accept!r}")
        if problems:
            raise ConfigError("DocumentListenerConfig: " + "; ".join(problems))


@dataclass(frozen=True)
class ScanStart:
    """A run that asks for a session: its start document's uid and the scan it describes."""

    run_uid: str  # the start document's uid
    scan_id: str  # n2i.scan.scan_id (or the run uid when the table has none)
    scan: Any  # what scan_factory made of the n2i.scan table (the table itself by default)
    n2i: Mapping[str, Any]  # the whole n2i metadata table, plain data
    time: float | None  # the start document's time (seconds since the epoch)


@dataclass(frozen=True)
class RunStop:
    """The end of a run that started a session."""

    run_uid: str
    scan_id: str
    exit_status: str  # "success", "abort" or "fail"
    reason: str  # why, when not a success ("" otherwise)


class DocumentCallbacks(Protocol):
    """What the service does with runs: called on the listener's thread."""

    def on_start(self, start: ScanStart) -> None:
        """A run with n2i metadata began: configure (start) the session it describes."""

    def on_stop(self, stop: RunStop) -> None:
        """That run ended: stop (drain) its session."""


@dataclass(frozen=True)
class DocumentCounters:
    """A snapshot of the listener's counters (monotonic over its life)."""

    received: int = 0  # messages taken off the socket
    refused: int = 0  # messages refused (sum of refused_reasons)
    refused_reasons: Mapping[str, int] = field(default_factory=dict)  # reason -> count
    starts: int = 0  # ScanStart handed to on_start
    stops: int = 0  # RunStop handed to on_stop
    rejected_starts: int = 0  # n2i starts whose scan table scan_factory refused
    ignored: int = 0  # documents of other runs, other names, other prefixes, late stops
    callback_errors: int = 0  # exceptions raised by on_start / on_stop


class DocumentListener:
    """Subscribes to a Bluesky document proxy and reports n2i runs to :class:`DocumentCallbacks`.

    ``scan_factory`` turns the ``n2i.scan`` table (plain data) into the service's scan
    configuration; the default keeps the table. ``context``: share the service's ZMQ context
    (not terminated here), or None to own one.
    """

    def __init__(
        self,
        config: DocumentListenerConfig,
        callbacks: DocumentCallbacks,
        *,
        scan_factory: Callable[[Mapping[str, Any]], Any] | None = None,
        context: zmq.Context | None = None,
    ) -> None:
        self.config = config
        self._callbacks = callbacks
        self._scan_factory = scan_factory or (lambda table: table)
        self._own_context = context is None
        self._ctx = zmq.Context() if context is None else context
        self._prefix = config.prefix.encode()
        self._lock = threading.Lock()
        self._counts: dict[str, int] = dict.fromkeys(
            ("received", "starts", "stops", "rejected_starts", "ignored", "callback_errors"), 0
        )
        self._refused: dict[str, int] = {}
        self._runs: dict[str, str] = {}  # run uid -> scan id, for runs that started a session
        self._last_error: str | None = None
        self._thread = ReceiverThread(
            self._ctx,
            kind=zmq.SUB,
            endpoint=config.endpoint,
            bind=config.bind,
            rcvhwm=config.rcvhwm,
            what="document receive",
            socket="the document socket",
            on_readable=self._receive_all,
            # The prefix ends at the first space: subscribe to exactly "prefix ".
            subscribe=self._prefix + b" " if self._prefix else b"",
        )
        self._closed = False

    # -- public ---------------------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        """The socket's actual endpoint (the chosen port for a wildcard bind); after start()."""
        if self._thread.endpoint is None:
            raise ServiceError("the document listener has no endpoint before start()")
        return self._thread.endpoint

    @property
    def last_error(self) -> str | None:
        """The last refusal or callback failure, as a message (None if there was none)."""
        return self._last_error

    @property
    def error(self) -> BaseException | None:
        """The exception that ended the receive thread, if one did."""
        return self._thread.error

    @property
    def running(self) -> bool:
        return self._thread.running

    def counters(self) -> DocumentCounters:
        with self._lock:
            return DocumentCounters(
                refused=sum(self._refused.values()),
                refused_reasons=dict(self._refused),
                **self._counts,
            )

    def start(self, timeout: float = 10.0) -> None:
        """Open the SUB socket on the receive thread; ServiceError if it cannot."""
        if self._thread.started or self._closed:
            raise ServiceError("start(): the document listener was already started (runs once)")
        self._thread.start(timeout)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop receiving and join the thread (idempotent)."""
        self._thread.stop(timeout)

    def close(self) -> None:
        """Stop, and terminate the context if this listener created it (idempotent)."""
        if self._closed:
            return
        self.stop()
        self._closed = True
        if self._own_context:
            self._ctx.term()

    def __enter__(self) -> DocumentListener:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def handle(self, message: bytes | memoryview) -> None:
        """Process one proxy frame: decode, then start/stop a session or ignore it.

        Never raises for bad input: refusals and callback failures are counted and logged.
        """
        self._count("received")
        if len(message) > self.config.max_bytes:
            self._refuse(
                DocumentError(
                    "too_large",
                    f"a {len(message)} B document message exceeds max_bytes="
                    f"{self.config.max_bytes}",
                )
            )
            return
        try:
            prefix, name, doc = decode_message(message)
        except DocumentError as exc:
            self._refuse(exc)
            return
        if self._prefix and prefix != self._prefix:
            self._count("ignored")
            return
        if name == "start":
            self._on_start(doc)
        elif name == "stop":
            self._on_stop(doc)
        else:
            self._count("ignored")

    # -- documents ------------------------------------------------------------------------------

    def _on_start(self, doc: dict[str, Any]) -> None:
        n2i = doc.get("n2i")
        if n2i is None:
            self._count("ignored")
            return
        uid = doc.get("uid")
        if not isinstance(n2i, Mapping) or not isinstance(n2i.get("scan"), Mapping):
            self._refuse(
                DocumentError(
                    "bad_n2i",
                    f"start document {uid!r}: expected n2i metadata to be a table with a "
                    f"'scan' table, got {_brief(n2i)}",
                )
            )
            return
        if not isinstance(uid, str):
            self._refuse(DocumentError("not_a_document", f"start document without a uid: {uid!r}"))
            return
        control = n2i.get("control", "documents")
        if self.config.accept == "documents" and control != "documents":
            self._count("ignored")  # a device configures this run through the control socket
            return
        table = _plain(n2i)
        scan_table = table["scan"]
        scan_id = scan_table.get("scan_id")
        scan_id = scan_id if isinstance(scan_id, str) else uid
        try:
            scan = self._scan_factory(scan_table)
        except Exception as exc:  # the factory validates: any refusal is the document's fault
            self._count("rejected_starts")
            self._note(f"start document {uid}: scan refused: {exc}")
            return
        start = ScanStart(uid, scan_id, scan, table, _time(doc))
        with self._lock:
            self._runs[uid] = scan_id
        self._count("starts")
        self._call("on_start", start)

    def _on_stop(self, doc: dict[str, Any]) -> None:
        uid = doc.get("run_start")
        with self._lock:
            scan_id = self._runs.pop(uid, None) if isinstance(uid, str) else None
        if scan_id is None:
            self._count("ignored")  # another run, or we joined after its start
            return
        status = doc.get("exit_status")
        reason = doc.get("reason")
        stop = RunStop(
            run_uid=uid,
            scan_id=scan_id,
            exit_status=status if isinstance(status, str) else "unknown",
            reason=reason if isinstance(reason, str) else "",
        )
        self._count("stops")
        self._call("on_stop", stop)

    def _call(self, method: str, arg: ScanStart | RunStop) -> None:
        try:
            getattr(self._callbacks, method)(arg)
        except Exception as exc:
            self._count("callback_errors")
            self._note(f"{method}({arg.scan_id}) failed: {exc!r}", exc_info=True)

    # -- bookkeeping ----------------------------------------------------------------------------

    def _count(self, key: str) -> None:
        with self._lock:
            self._counts[key] += 1

    def _refuse(self, exc: DocumentError) -> None:
        with self._lock:
            self._refused[exc.reason] = self._refused.get(exc.reason, 0) + 1
        self._note(f"refused a document message ({exc.reason}): {exc}")

    def _note(self, message: str, exc_info: bool = False) -> None:
        self._last_error = message
        log.warning(message, exc_info=exc_info)

    # -- the receive thread ---------------------------------------------------------------------

    def _receive_all(self, sock: zmq.Socket) -> None:
        while True:
            try:
                parts = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if len(parts) == 1:
                self.handle(parts[0])
            else:  # a Publisher sends one frame per document
                self._count("received")
                self._refuse(
                    DocumentError(
                        "malformed_frame",
                        f"expected one frame per document, got {len(parts)} parts",
                    )
                )


def _time(doc: Mapping[str, Any]) -> float | None:
    t = doc.get("time")
    return float(t) if isinstance(t, (int, float)) and not isinstance(t, bool) else None


def _brief(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
