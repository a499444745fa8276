"""``n2i-recon-1.0``: the result messages the service publishes (one per time step and kind).

Multipart ``[header, payload]`` like the frames. The header::

    {"htype": "n2i-recon-1.0", "time_step": 7, "kind": "denoised" | "fbp",
     "shape": [...], "type": "float32", "slice": null | {"axis": "z"|"y"|"x", "index": k},
     "complete": true, "missing_frames": 0, "scan_id": "..."?, "endianness"?: "little"}

``slice: null`` is the whole volume, shape ``(rows, n, n)`` with axes ``(z, y, x)`` (DESIGN.md
§3); a slice has the two remaining axes (``z`` → ``(n, n)``; ``y`` or ``x`` → ``(rows, n)``).
``complete`` is false when frames of the step never arrived and the reconstruction used only
the angles that did; ``missing_frames`` says how many.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from ..errors import FrameError
from .headers import FrameFormatError, wire_dtype

__all__ = [
    "RECON_HTYPE",
    "ReconHeader",
    "ReconKind",
    "decode_recon",
    "encode_recon",
    "parse_recon_header",
]

RECON_HTYPE = "n2i-recon-1.0"
ReconKind = Literal["denoised", "fbp"]
_KINDS = ("denoised", "fbp")
_AXES = ("z", "y", "x")


@dataclass(frozen=True, slots=True)
class ReconHeader:
    """A validated ``n2i-recon-1.0`` header; ``slice_axis`` None means the whole volume."""

    time_step: int
    kind: ReconKind
    shape: tuple[int, ...]
    dtype: np.dtype
    slice_axis: Literal["z", "y", "x"] | None = None
    slice_index: int | None = None
    complete: bool = True
    missing_frames: int = 0
    scan_id: str | None = None

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * self.dtype.itemsize


def _bad(reason: str, message: str) -> FrameFormatError:
    return FrameFormatError(reason, f"{RECON_HTYPE}: {message}")


def _nonneg_int(h: dict[str, Any], key: str) -> int:
    if key not in h:
        raise _bad("missing_field", f"header lacks {key!r} (has {sorted(h)})")
    v = h[key]
    if type(v) is not int or v < 0:
        raise _bad("wrong_type", f"expected {key!r} a non-negative integer, got {v!r}")
    return v


def parse_recon_header(raw: bytes | memoryview) -> ReconHeader:
    """Validate an ``n2i-recon-1.0`` header; FrameFormatError says what was wrong."""
    try:
        h = json.loads(bytes(raw))
    except (UnicodeDecodeError, ValueError) as exc:
        raise _bad("malformed_json", f"expected a UTF-8 JSON header: {exc}") from None
    if not isinstance(h, dict):
        raise _bad("malformed_json", f"expected a JSON object, got {type(h).__name__}")
    if h.get("htype") != RECON_HTYPE:
        raise _bad("unknown_htype", f"expected htype {RECON_HTYPE!r}, got {h.get('htype')!r}")
    kind = h.get("kind")
    if kind not in _KINDS:
        raise _bad("unknown_kind", f"expected 'kind' one of {list(_KINDS)}, got {kind!r}")
    if "type" not in h or "shape" not in h:
        raise _bad("missing_field", f"header needs 'shape' and 'type' (has {sorted(h)})")
    where = h.get("slice")
    axis = index = None
    if where is not None:
        if not isinstance(where, dict) or where.get("axis") not in _AXES:
            raise _bad(
                "wrong_type", f"expected 'slice' null or {{axis: z|y|x, index}}, got {where!r}"
            )
        axis, index = where["axis"], _nonneg_int(where, "index")
    shape = h["shape"]
    ndim = 3 if axis is None else 2
    if (
        not isinstance(shape, list)
        or len(shape) != ndim
        or not all(type(n) is int and n > 0 for n in shape)
    ):
        what = "volume (rows, n, n)" if axis is None else f"{axis}-slice of 2"
        raise _bad("wrong_type", f"expected 'shape' of a {what} positive integers, got {shape!r}")
    complete = h.get("complete", True)
    if not isinstance(complete, bool):
        raise _bad("wrong_type", f"expected 'complete' true or false, got {complete!r}")
    scan_id = h.get("scan_id")
    if scan_id is not None and not isinstance(scan_id, str):
        raise _bad("wrong_type", f"expected 'scan_id' a string, got {scan_id!r}")
    return ReconHeader(
        time_step=_nonneg_int(h, "time_step"),
        kind=kind,
        shape=tuple(shape),
        dtype=wire_dtype(h["type"], h.get("endianness", "little")),
        slice_axis=axis,
        slice_index=index,
        complete=complete,
        missing_frames=_nonneg_int(h, "missing_frames") if "missing_frames" in h else 0,
        scan_id=scan_id,
    )


def encode_recon(
    data: np.ndarray,
    *,
    time_step: int,
    kind: ReconKind,
    slice_axis: Literal["z", "y", "x"] | None = None,
    slice_index: int | None = None,
    complete: bool = True,
    missing_frames: int = 0,
    scan_id: str | None = None,
) -> list[bytes | memoryview]:
    """``[header, payload]`` of one result for ``send_multipart(parts, copy=False)``.

    ``data`` is the volume ``(rows, n, n)`` or, with ``slice_axis``/``slice_index``, one slice.
    The payload is a memoryview of ``data`` when C-contiguous (keep it unchanged until sent).
    """
    data = np.ascontiguousarray(data)
    if kind not in _KINDS:
        raise FrameError(f"expected recon kind one of {list(_KINDS)}, got {kind!r}")
    if (slice_axis is None) != (slice_index is None):
        raise FrameError("slice_axis and slice_index go together (both or neither)")
    if slice_axis is not None and slice_axis not in _AXES:
        raise FrameError(f"expected slice_axis one of {list(_AXES)}, got {slice_axis!r}")
    expected_ndim = 3 if slice_axis is None else 2
    if data.ndim != expected_ndim:
        raise FrameError(
            f"expected a {expected_ndim}-D {'volume' if slice_axis is None else 'slice'}, "
            f"got shape {data.shape}"
        )
    h: dict[str, Any] = {
        "htype": RECON_HTYPE,
        "time_step": int(time_step),
        "kind": kind,
        "shape": [int(n) for n in data.shape],
        "type": data.dtype.name,
        "slice": None if slice_axis is None else {"axis": slice_axis, "index": int(slice_index)},
        "complete": bool(complete),
        "missing_frames": int(missing_frames),
    }
    if scan_id is not None:
        h["scan_id"] = scan_id
    if data.dtype.byteorder == ">" or (data.dtype.byteorder == "=" and not np.little_endian):
        h["endianness"] = "big"
    header = json.dumps(h, separators=(",", ":")).encode()
    return [header, memoryview(data.reshape(-1).view(np.uint8))]


def decode_recon(
    parts: Sequence[bytes | memoryview | Any], *, out: np.ndarray | None = None
) -> tuple[ReconHeader, np.ndarray]:
    """Header and array of a received result message.

    ``parts`` are bytes, memoryviews or ``zmq.Frame`` objects (``recv_multipart(copy=False)``).
    Without ``out`` the array is a read-only view of the payload (no copy); with ``out`` the
    payload is copied into it (its shape and dtype must match the header).
    """
    if len(parts) != 2:
        raise _bad(
            "missing_payload" if len(parts) < 2 else "extra_parts",
            f"expected [header, payload], got {len(parts)} parts",
        )
    header = parse_recon_header(_buffer(parts[0]))
    payload = _buffer(parts[1])
    if payload.nbytes != header.nbytes:
        raise _bad(
            "size_mismatch",
            f"expected {header.nbytes} payload bytes for shape {list(header.shape)} "
            f"{header.dtype.name}, got {payload.nbytes}",
        )
    view = np.frombuffer(payload, dtype=header.dtype).reshape(header.shape)
    if out is None:
        return header, view
    if out.shape != header.shape:
        raise FrameError(f"out has shape {out.shape}, the message {header.shape}")
    np.copyto(out, view)
    return header, out


def _buffer(part: Any) -> memoryview:
    # zmq.Frame exposes its bytes as .buffer; bytes and memoryviews are buffers already.
    return memoryview(getattr(part, "buffer", part)).cast("B")
