"""Frame headers of the detector streams we accept, validated once at the boundary.

A frame message is multipart ``[header, payload]``: a UTF-8 JSON header and the raw pixel bytes.
Three header dialects arrive (DESIGN.md §3, PROTOCOLS.md) and all parse to one
:class:`FrameHeader`:

``n2i``
    ``{"htype": "n2i-frame-1.0", "frame", "kind", "shape", "type", "angle"?, "timestamp"?}``.
``array-1.0``
    PSI std-daq / areaDetector ADZMQ: ``{"htype": "array-1.0", "shape", "type", "frame"}`` with
    optional ``endianness`` (or the misspelt ``endianess``), ``encoding``, ``timeStamp`` and
    ``ndattr``. No frame kind: it comes from the scan configuration's frame-id ranges. An angle is
    read from ``ndattr[angle_attribute]`` when the caller names that attribute.
``gigafrost``
    TOMCAT GigaFRoST: no ``htype``; ``{"frame", "image_attributes": {"scan_index",
    "image_is_complete"}, "source": "gigafrost", "shape", "type"}``; ``scan_index`` 0 dark,
    1 flat, 2 projection. A frame flagged ``image_is_complete: false`` is rejected.

Keys a dialect does not define are ignored (producers add their own, e.g. ``tags``); keys it does
define are checked. Every rejection raises :class:`FrameFormatError`, whose ``reason`` is one of
:data:`BAD_REASONS` (a stable key for per-reason counters) and whose message says what was
expected and what arrived. Angles are degrees, as everywhere on the wire.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any, Literal, NamedTuple

import numpy as np

from ..errors import FrameError

__all__ = [
    "BAD_REASONS",
    "FORMATS",
    "FRAME_KINDS",
    "FrameFormatError",
    "FrameHeader",
    "FrameKind",
    "WireFormat",
    "check_payload_size",
    "encode_frame_header",
    "frame_message",
    "parse_frame_header",
    "wire_dtype",
]

FrameKind = Literal["dark", "flat", "projection"]
WireFormat = Literal["n2i", "array-1.0", "gigafrost"]

FRAME_KINDS: tuple[FrameKind, ...] = ("dark", "flat", "projection")
FORMATS: tuple[WireFormat, ...] = ("n2i", "array-1.0", "gigafrost")
NATIVE_HTYPE = "n2i-frame-1.0"

#: Stable keys naming why a message was rejected (the wire layer's and the sources' reasons).
BAD_REASONS: tuple[str, ...] = (
    "malformed_json",  # header is not a UTF-8 JSON object
    "unknown_htype",  # htype missing or not one we read
    "missing_field",  # a required key is absent
    "wrong_type",  # a key has the wrong type or an impossible value
    "unknown_kind",  # frame kind / scan_index outside dark, flat, projection
    "bad_angle",  # angle not a finite number
    "unsupported_encoding",  # compressed or otherwise encoded payload
    "incomplete_image",  # the detector flagged the frame as incomplete
    "size_mismatch",  # payload bytes ≠ shape × itemsize
    "missing_payload",  # the message had a header and nothing else
    "extra_parts",  # more than [header, payload]
    "too_large",  # larger than the receive buffers configured for the scan
)

_GIGAFROST_KINDS: dict[int, FrameKind] = {0: "dark", 1: "flat", 2: "projection"}
_GIGAFROST_SCAN_INDEX = {v: k for k, v in _GIGAFROST_KINDS.items()}

# Pixel types a detector sends; names as they appear in "type" (NumPy's spelling).
_TYPE_NAMES = ("uint8", "uint16", "uint32", "int8", "int16", "int32", "float32", "float64")
_DTYPES: dict[tuple[str, str], np.dtype] = {
    (name, order): np.dtype(name).newbyteorder("<" if order == "little" else ">")
    for name in _TYPE_NAMES
    for order in ("little", "big")
}
_RAW_ENCODINGS = (None, "", "raw", "none")


class FrameFormatError(FrameError):
    """A frame message failed validation; ``reason`` is one of :data:`BAD_REASONS`."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(message)


class FrameHeader(NamedTuple):
    """What a validated frame header says about its payload (immutable).

    ``kind`` is None when the dialect cannot say (``array-1.0``); ``dtype`` carries the byte
    order the header declared; ``angle`` is degrees or None; ``timestamp`` is the producer's
    (seconds) or None. A named tuple, because one is built per frame at frame rate.
    """

    frame_id: int
    shape: tuple[int, int]
    dtype: np.dtype
    kind: FrameKind | None = None
    angle: float | None = None
    timestamp: float | None = None
    format: WireFormat = "n2i"

    @property
    def nbytes(self) -> int:
        """Payload size the header promises: rows × cols × itemsize."""
        return self.shape[0] * self.shape[1] * self.dtype.itemsize


def wire_dtype(type_name: object, endianness: object = "little") -> np.dtype:
    """The dtype of a header's ``type`` and ``endianness``; FrameFormatError when unsupported."""
    if endianness not in ("little", "big"):
        raise FrameFormatError(
            "wrong_type", f"expected endianness 'little' or 'big', got {endianness!r}"
        )
    try:
        return _DTYPES[(type_name, endianness)]  # type: ignore[index]
    except (KeyError, TypeError):
        raise FrameFormatError(
            "wrong_type", f"expected 'type' one of {list(_TYPE_NAMES)}, got {type_name!r}"
        ) from None


def _require(h: Mapping[str, Any], key: str, dialect: str) -> Any:
    try:
        return h[key]
    except KeyError:
        raise FrameFormatError(
            "missing_field", f"{dialect} header lacks {key!r} (has {sorted(h)})"
        ) from None


def _frame_id(h: Mapping[str, Any], dialect: str) -> int:
    fid = _require(h, "frame", dialect)
    if type(fid) is not int or fid < 0:
        raise FrameFormatError(
            "wrong_type", f"{dialect}: expected 'frame' a non-negative integer, got {fid!r}"
        )
    return fid


def _shape(h: Mapping[str, Any], dialect: str) -> tuple[int, int]:
    shape = _require(h, "shape", dialect)
    if (
        not isinstance(shape, list)
        or len(shape) != 2
        or not all(type(n) is int and n > 0 for n in shape)
    ):
        raise FrameFormatError(
            "wrong_type",
            f"{dialect}: expected 'shape' [rows, cols] of positive integers, got {shape!r}",
        )
    return shape[0], shape[1]


def _number(value: Any, key: str, dialect: str, reason: str = "wrong_type") -> float | None:
    if value is None:
        return None
    if type(value) not in (int, float):
        raise FrameFormatError(reason, f"{dialect}: expected {key!r} a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise FrameFormatError(reason, f"{dialect}: expected {key!r} finite, got {value!r}")
    return value


def _epics_timestamp(value: Any) -> float | None:
    # ADZMQ sends the EPICS time either as seconds or as {"secPastEpoch", "nsec"}.
    if isinstance(value, dict) and "secPastEpoch" in value:
        sec = _number(value.get("secPastEpoch"), "timeStamp.secPastEpoch", "array-1.0")
        nsec = _number(value.get("nsec", 0), "timeStamp.nsec", "array-1.0")
        return (sec or 0.0) + (nsec or 0.0) * 1e-9
    return _number(value, "timeStamp", "array-1.0")


def _parse_native(h: Mapping[str, Any]) -> FrameHeader:
    d = NATIVE_HTYPE
    kind = _require(h, "kind", d)
    if kind not in FRAME_KINDS:
        raise FrameFormatError(
            "unknown_kind", f"{d}: expected 'kind' one of {list(FRAME_KINDS)}, got {kind!r}"
        )
    return FrameHeader(
        frame_id=_frame_id(h, d),
        shape=_shape(h, d),
        dtype=wire_dtype(_require(h, "type", d), h.get("endianness", "little")),
        kind=kind,
        angle=_number(h.get("angle"), "angle", d, reason="bad_angle"),
        timestamp=_number(h.get("timestamp"), "timestamp", d),
        format="n2i",
    )


def _parse_array(h: Mapping[str, Any], angle_attribute: str | None) -> FrameHeader:
    d = "array-1.0"
    encoding = h.get("encoding")
    if encoding not in _RAW_ENCODINGS:
        raise FrameFormatError(
            "unsupported_encoding", f"{d}: expected a raw payload, got encoding {encoding!r}"
        )
    endianness = h.get("endianness", h.get("endianess", "little"))
    angle = None
    if angle_attribute is not None:
        attrs = h.get("ndattr")
        if isinstance(attrs, dict) and angle_attribute in attrs:
            angle = _number(attrs[angle_attribute], f"ndattr.{angle_attribute}", d, "bad_angle")
    return FrameHeader(
        frame_id=_frame_id(h, d),
        shape=_shape(h, d),
        dtype=wire_dtype(_require(h, "type", d), endianness),
        kind=None,
        angle=angle,
        timestamp=_epics_timestamp(h.get("timeStamp")),
        format="array-1.0",
    )


def _parse_gigafrost(h: Mapping[str, Any]) -> FrameHeader:
    d = "gigafrost"
    attrs = _require(h, "image_attributes", d)
    if not isinstance(attrs, dict):
        raise FrameFormatError(
            "wrong_type", f"{d}: expected 'image_attributes' an object, got {attrs!r}"
        )
    index = _require(attrs, "scan_index", d)
    if type(index) is not int or index not in _GIGAFROST_KINDS:
        raise FrameFormatError(
            "unknown_kind",
            f"{d}: expected scan_index 0 (dark), 1 (flat) or 2 (projection), got {index!r}",
        )
    complete = attrs.get("image_is_complete", True)
    if complete is not True:
        raise FrameFormatError(
            "incomplete_image", f"{d}: frame {h.get('frame')!r} has image_is_complete={complete!r}"
        )
    return FrameHeader(
        frame_id=_frame_id(h, d),
        shape=_shape(h, d),
        dtype=wire_dtype(_require(h, "type", d), h.get("endianness", "little")),
        kind=_GIGAFROST_KINDS[index],
        format="gigafrost",
    )


def parse_frame_header(
    raw: bytes | memoryview, *, angle_attribute: str | None = None
) -> FrameHeader:
    """Validate one frame header (any accepted dialect) and describe its payload.

    ``angle_attribute`` names the ADZMQ ``ndattr`` entry carrying the rotation angle, if the IOC
    attaches one. Raises :class:`FrameFormatError` with a reason from :data:`BAD_REASONS`.
    """
    try:
        h = json.loads(bytes(raw))
    except (UnicodeDecodeError, ValueError) as exc:
        head = bytes(raw[:60])
        raise FrameFormatError(
            "malformed_json", f"expected a UTF-8 JSON header, got {head!r}: {exc}"
        ) from None
    if not isinstance(h, dict):
        raise FrameFormatError(
            "malformed_json", f"expected a JSON object header, got {type(h).__name__}"
        )
    htype = h.get("htype")
    if htype == NATIVE_HTYPE:
        return _parse_native(h)
    if htype == "array-1.0":
        return _parse_array(h, angle_attribute)
    if htype is None and ("image_attributes" in h or h.get("source") == "gigafrost"):
        return _parse_gigafrost(h)
    raise FrameFormatError(
        "unknown_htype",
        f"expected htype {NATIVE_HTYPE!r} or 'array-1.0', or a GigaFRoST header with "
        f"'image_attributes'; got htype {htype!r} (keys {sorted(h)})",
    )


def check_payload_size(header: FrameHeader, nbytes: int) -> None:
    """Raise FrameFormatError("size_mismatch") unless the payload is exactly ``header.nbytes``."""
    if nbytes != header.nbytes:
        rows, cols = header.shape
        raise FrameFormatError(
            "size_mismatch",
            f"frame {header.frame_id}: expected {header.nbytes} payload bytes "
            f"({rows}×{cols} {header.dtype.name}), got {nbytes}",
        )


def encode_frame_header(
    fmt: WireFormat,
    *,
    frame_id: int,
    shape: tuple[int, int],
    dtype: np.dtype | str,
    kind: FrameKind | None = None,
    angle: float | None = None,
    timestamp: float | None = None,
    angle_attribute: str = "angle",
) -> bytes:
    """The UTF-8 JSON header of one frame in dialect ``fmt``.

    Fields a dialect cannot carry are left out: ``array-1.0`` has no kind (the receiver takes it
    from frame-id ranges) and carries the angle only as ``ndattr[angle_attribute]``; GigaFRoST has
    neither angle nor timestamp. ``n2i`` and ``gigafrost`` need ``kind``.
    """
    dt = np.dtype(dtype)
    if dt.name not in _TYPE_NAMES:
        raise FrameError(f"expected a pixel type in {list(_TYPE_NAMES)}, got {dt}")
    big = dt.byteorder == ">" or (dt.byteorder == "=" and not np.little_endian)
    h: dict[str, Any]
    if fmt == "array-1.0":
        h = {"htype": "array-1.0", "shape": list(shape), "type": dt.name, "frame": frame_id}
        if angle is not None:
            h["ndattr"] = {angle_attribute: angle}
        if timestamp is not None:
            h["timeStamp"] = timestamp
    elif fmt in ("n2i", "gigafrost"):
        if kind not in FRAME_KINDS:
            raise FrameError(f"{fmt} frames need kind in {list(FRAME_KINDS)}, got {kind!r}")
        if fmt == "n2i":
            h = {"htype": NATIVE_HTYPE, "frame": frame_id, "kind": kind, "shape": list(shape)}
            h["type"] = dt.name
            if angle is not None:
                h["angle"] = angle
            if timestamp is not None:
                h["timestamp"] = timestamp
        else:
            h = {
                "frame": frame_id,
                "image_attributes": {
                    "scan_index": _GIGAFROST_SCAN_INDEX[kind],
                    "image_is_complete": True,
                },
                "source": "gigafrost",
                "shape": list(shape),
                "type": dt.name,
            }
    else:
        raise FrameError(f"expected a wire format in {list(FORMATS)}, got {fmt!r}")
    if big:
        h["endianness"] = "big"
    return json.dumps(h, separators=(",", ":")).encode()


def frame_message(
    fmt: WireFormat,
    frame_id: int,
    data: np.ndarray,
    *,
    kind: FrameKind | None = None,
    angle: float | None = None,
    timestamp: float | None = None,
) -> list[bytes | memoryview]:
    """``[header, payload]`` for ``socket.send_multipart(parts, copy=False)``.

    The payload is a memoryview of ``data`` itself when it is C-contiguous (zero copy: keep
    ``data`` unchanged until ZMQ has sent it), else of a contiguous copy.
    """
    data = np.ascontiguousarray(data)
    if data.ndim != 2:
        raise FrameError(f"expected a (rows, cols) frame, got shape {data.shape}")
    header = encode_frame_header(
        fmt,
        frame_id=frame_id,
        shape=(int(data.shape[0]), int(data.shape[1])),
        dtype=data.dtype,
        kind=kind,
        angle=angle,
        timestamp=timestamp,
    )
    return [header, memoryview(data.reshape(-1).view(np.uint8))]
