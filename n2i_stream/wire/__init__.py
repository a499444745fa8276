"""Wire formats: frame headers in, ``n2i-recon-1.0`` results out, and the frame-source protocol.

Pure Python and NumPy: no sockets, no threads. Messages are multipart ``[JSON header, raw
payload]``, validated once here; never pickled. Sources (``n2i_stream.io``) and the service build
on these names.
"""

from .frame import Frame, FrameSource, OverloadPolicy, SourceCounters
from .headers import (
    BAD_REASONS,
    FORMATS,
    FRAME_KINDS,
    FrameFormatError,
    FrameHeader,
    FrameKind,
    WireFormat,
    check_payload_size,
    encode_frame_header,
    frame_message,
    parse_frame_header,
    wire_dtype,
)
from .recon import (
    RECON_HTYPE,
    ReconHeader,
    ReconKind,
    decode_recon,
    encode_recon,
    parse_recon_header,
)

__all__ = [
    "BAD_REASONS",
    "FORMATS",
    "FRAME_KINDS",
    "RECON_HTYPE",
    "Frame",
    "FrameFormatError",
    "FrameHeader",
    "FrameKind",
    "FrameSource",
    "OverloadPolicy",
    "ReconHeader",
    "ReconKind",
    "SourceCounters",
    "WireFormat",
    "check_payload_size",
    "decode_recon",
    "encode_frame_header",
    "encode_recon",
    "frame_message",
    "parse_frame_header",
    "parse_recon_header",
    "wire_dtype",
]
