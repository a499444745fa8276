"""Wire formats: frame headers of the three input dialects and n2i-recon-1.0 results."""

from __future__ import annotations

import json

import numpy as np
import pytest

from n2i_stream.errors import FrameError
from n2i_stream.wire import (
    BAD_REASONS,
    FrameFormatError,
    check_payload_size,
    decode_recon,
    encode_recon,
    frame_message,
    parse_frame_header,
)


def _header(**fields) -> bytes:
    return json.dumps(fields).encode()


NATIVE = {"htype": "n2i-frame-1.0", "frame": 7, "kind": "flat", "shape": [3, 4], "type": "uint16"}
ARRAY = {"htype": "array-1.0", "shape": [3, 4], "type": "uint16", "frame": 7}
GIGA = {
    "frame": 7,
    "image_attributes": {"scan_index": 1, "image_is_complete": True},
    "source": "gigafrost",
    "shape": [3, 4],
    "type": "uint16",
}


@pytest.mark.parametrize("fmt", ["n2i", "array-1.0", "gigafrost"])
def test_frame_message_round_trips_through_the_parser(fmt, rng):
    data = rng.integers(0, 4000, size=(5, 6), dtype=np.uint16)
    header_bytes, payload = frame_message(fmt, 123, data, kind="dark", angle=12.5, timestamp=3.0)
    header = parse_frame_header(header_bytes, angle_attribute="angle")
    assert header.frame_id == 123
    assert header.shape == (5, 6)
    assert header.dtype == np.dtype("<u2")
    assert header.nbytes == data.nbytes
    assert header.format == fmt
    # Each dialect carries what it can: array-1.0 has no kind, GigaFRoST no angle or time.
    assert header.kind == (None if fmt == "array-1.0" else "dark")
    assert header.angle == (None if fmt == "gigafrost" else 12.5)
    assert header.timestamp == (None if fmt == "gigafrost" else 3.0)
    check_payload_size(header, payload.nbytes)
    received = np.frombuffer(payload, dtype=header.dtype).reshape(header.shape)
    np.testing.assert_array_equal(received, data)


def test_frame_message_payload_is_the_array_itself():
    data = np.arange(12, dtype=np.uint16).reshape(3, 4)
    _, payload = frame_message("n2i", 0, data, kind="projection")
    assert np.shares_memory(np.frombuffer(payload, dtype=np.uint8), data)


def test_big_endian_frames_declare_and_keep_their_byte_order():
    data = np.arange(12, dtype=">u2").reshape(3, 4)
    header_bytes, payload = frame_message("array-1.0", 1, data)
    assert json.loads(header_bytes)["endianness"] == "big"
    header = parse_frame_header(header_bytes)
    assert header.dtype == np.dtype(">u2")
    np.testing.assert_array_equal(np.frombuffer(payload, header.dtype).reshape(3, 4), data)


@pytest.mark.parametrize("key", ["endianness", "endianess"])
def test_array_header_honours_both_spellings_of_endianness(key):
    header = parse_frame_header(_header(**ARRAY, **{key: "big"}))
    assert header.dtype == np.dtype(">u2")


def test_array_header_reads_adzmq_extras():
    raw = _header(
        **ARRAY,
        tags=["x"],
        timeStamp={"secPastEpoch": 10, "nsec": 500_000_000},
        ndattr={"SampleRot": 45.0},
    )
    header = parse_frame_header(raw, angle_attribute="SampleRot")
    assert header.timestamp == pytest.approx(10.5)
    assert header.angle == 45.0
    assert parse_frame_header(raw).angle is None  # the angle attribute is opt-in


@pytest.mark.parametrize(("index", "kind"), [(0, "dark"), (1, "flat"), (2, "projection")])
def test_gigafrost_scan_index_gives_the_kind(index, kind):
    raw = _header(**{**GIGA, "image_attributes": {"scan_index": index}})
    assert parse_frame_header(raw).kind == kind


BAD = [
    (b"{not json", "malformed_json", "JSON"),
    (b"\xff\xfe\x00", "malformed_json", "JSON"),
    (b"[1, 2]", "malformed_json", "object"),
    (_header(htype="array-2.0", shape=[3, 4]), "unknown_htype", "array-2.0"),
    (_header(frame=1, shape=[3, 4], type="uint16"), "unknown_htype", "htype"),
    (_header(**{k: v for k, v in NATIVE.items() if k != "shape"}), "missing_field", "'shape'"),
    (_header(**{k: v for k, v in ARRAY.items() if k != "frame"}), "missing_field", "'frame'"),
    (_header(**{**NATIVE, "shape": [3, 0]}), "wrong_type", "positive"),
    (_header(**{**NATIVE, "shape": [2, 3, 4]}), "wrong_type", "[rows, cols]"),
    (_header(**{**NATIVE, "shape": "3x4"}), "wrong_type", "'3x4'"),
    (_header(**{**NATIVE, "frame": -1}), "wrong_type", "non-negative"),
    (_header(**{**NATIVE, "frame": 1.5}), "wrong_type", "1.5"),
    (_header(**{**NATIVE, "frame": True}), "wrong_type", "True"),
    (_header(**{**NATIVE, "type": "complex64"}), "wrong_type", "complex64"),
    (_header(**{**ARRAY, "endianness": "middle"}), "wrong_type", "middle"),
    (_header(**{**NATIVE, "timestamp": "noon"}), "wrong_type", "noon"),
    (_header(**{**NATIVE, "kind": "white"}), "unknown_kind", "white"),
    (_header(**{**GIGA, "image_attributes": {"scan_index": 3}}), "unknown_kind", "3"),
    (_header(**{**GIGA, "image_attributes": [2]}), "wrong_type", "image_attributes"),
    (_header(**{**NATIVE, "angle": float("nan")}), "bad_angle", "finite"),
    (_header(**{**NATIVE, "angle": float("inf")}), "bad_angle", "finite"),
    (_header(**{**NATIVE, "angle": "12"}), "bad_angle", "number"),
    (_header(**{**ARRAY, "encoding": "bs32-lz4<"}), "unsupported_encoding", "bs32-lz4<"),
    (
        _header(**{**GIGA, "image_attributes": {"scan_index": 2, "image_is_complete": False}}),
        "incomplete_image",
        "image_is_complete",
    ),
]


@pytest.mark.parametrize(("raw", "reason", "said"), BAD)
def test_bad_headers_are_rejected_with_reason_and_explanation(raw, reason, said):
    with pytest.raises(FrameFormatError) as info:
        parse_frame_header(raw)
    assert info.value.reason == reason
    assert reason in BAD_REASONS
    assert said in str(info.value)
    assert isinstance(info.value, FrameError)


def test_payload_size_must_match_shape_times_itemsize():
    header = parse_frame_header(_header(**NATIVE))
    check_payload_size(header, 24)
    with pytest.raises(FrameFormatError, match=r"expected 24 payload bytes \(3×4 uint16\), got 23"):
        check_payload_size(header, 23)


def test_encoders_refuse_what_they_cannot_describe():
    with pytest.raises(FrameError, match="kind"):
        frame_message("n2i", 0, np.zeros((2, 2), np.uint16))
    with pytest.raises(FrameError, match="format"):
        frame_message("tiff", 0, np.zeros((2, 2), np.uint16), kind="dark")  # type: ignore[arg-type]
    with pytest.raises(FrameError, match="rows, cols"):
        frame_message("n2i", 0, np.zeros((2, 2, 2), np.uint16), kind="dark")
    with pytest.raises(FrameError, match="pixel type"):
        frame_message("n2i", 0, np.zeros((2, 2), np.complex64), kind="dark")


# -- n2i-recon-1.0 ------------------------------------------------------------------------------


def test_recon_volume_round_trip_without_copy(rng):
    volume = rng.random((4, 8, 8), dtype=np.float32)
    parts = encode_recon(volume, time_step=5, kind="denoised", scan_id="s1")
    header, received = decode_recon(parts)
    assert header.time_step == 5
    assert header.kind == "denoised"
    assert header.shape == (4, 8, 8)
    assert header.slice_axis is None
    assert header.complete
    assert header.scan_id == "s1"
    np.testing.assert_array_equal(received, volume)
    assert np.shares_memory(received, volume)  # a view of the payload, not a copy


def test_recon_slice_round_trip_into_preallocated_array(rng):
    image = rng.random((8, 8), dtype=np.float32)
    parts = encode_recon(
        image, time_step=2, kind="fbp", slice_axis="z", slice_index=3, complete=False,
        missing_frames=4,
    )  # fmt: skip
    assert json.loads(parts[0])["slice"] == {"axis": "z", "index": 3}
    out = np.zeros((8, 8), np.float32)
    header, received = decode_recon([bytes(p) for p in parts], out=out)
    assert received is out
    np.testing.assert_array_equal(out, image)
    assert (header.slice_axis, header.slice_index) == ("z", 3)
    assert (header.complete, header.missing_frames) == (False, 4)


def test_bad_recon_messages_are_rejected():
    good = encode_recon(np.zeros((2, 3, 3), np.float32), time_step=0, kind="fbp")
    h = json.loads(good[0])
    cases = [
        ([good[0]], "missing_payload"),
        ([*good, b""], "extra_parts"),
        ([good[0], b"\x00" * 8], "size_mismatch"),
        ([json.dumps({**h, "kind": "raw"}).encode(), good[1]], "unknown_kind"),
        ([json.dumps({**h, "htype": "n2i-frame-1.0"}).encode(), good[1]], "unknown_htype"),
        ([json.dumps({**h, "slice": {"axis": "z", "index": 0}}).encode(), good[1]], "wrong_type"),
        ([json.dumps({**h, "time_step": -1}).encode(), good[1]], "wrong_type"),
        ([json.dumps({k: v for k, v in h.items() if k != "time_step"}).encode(), good[1]],
         "missing_field"),
    ]  # fmt: skip
    for parts, reason in cases:
        with pytest.raises(FrameFormatError) as info:
            decode_recon(parts)
        assert info.value.reason == reason, parts[0]
    with pytest.raises(FrameError, match="3-D volume"):
        encode_recon(np.zeros((3, 3), np.float32), time_step=0, kind="fbp")
    with pytest.raises(FrameError, match="together"):
        encode_recon(np.zeros((3, 3), np.float32), time_step=0, kind="fbp", slice_axis="z")
