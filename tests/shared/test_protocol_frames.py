"""Binary frames and JSON text frames: build, parse, refuse."""

from __future__ import annotations

import json
import struct

import pytest
from tests.shared.protocol_helpers import png, raises

from shared import protocol as p

def test_frame_round_trip_png_and_gray8():
    data = png(64, 48)
    raw = p.encode_frame(p.FRAME_IMAGE_PNG, 7, 0, 64, 48, data)
    assert raw[:4] == b"DDIF" and len(raw) == p.FRAME_HEADER.size + len(data) == 20 + len(data)
    frame = p.decode_frame(raw)
    assert (frame.kind, frame.ref, frame.index, frame.width, frame.height) == (1, 7, 0, 64, 48)
    assert frame.payload == data

    gray = bytes(range(256)) * 12  # 64x48
    frame = p.decode_frame(p.encode_frame(p.FRAME_MAP_GRAY8, 2**32 - 1, 5, 64, 48, gray))
    assert frame.payload == gray and frame.ref == 2**32 - 1 and frame.index == 5


def test_png_size_reads_ihdr():
    assert p.png_size(png(33, 17, "RGBA")) == (33, 17)
    raises(p.E_BAD_FRAME, p.png_size, b"GIF89a" + bytes(30))


@pytest.mark.parametrize("mutate, code", [
    (lambda raw: raw[:10], p.E_BAD_FRAME),  # shorter than the header
    (lambda raw: b"XXXX" + raw[4:], p.E_BAD_FRAME),  # wrong magic
    (lambda raw: raw[:4] + bytes([9]) + raw[5:], p.E_BAD_FRAME),  # another version: untrusted
    (lambda raw: raw[:5] + bytes([77]) + raw[6:], p.E_BAD_FRAME),  # unknown kind
    (lambda raw: raw[:-1], p.E_BAD_FRAME),  # gray8 payload one byte short
    (lambda raw: raw[:12] + struct.pack(">II", 0, 48) + raw[20:], p.E_BAD_FRAME),  # zero width
])
def test_bad_frames_are_rejected(mutate, code):
    raw = p.encode_frame(p.FRAME_MAP_GRAY8, 1, 0, 64, 48, bytes(64 * 48))
    raises(code, p.decode_frame, mutate(raw))


def test_png_frame_must_match_its_declared_size():
    raw = p.FRAME_HEADER.pack(b"DDIF", 1, p.FRAME_IMAGE_PNG, 1, 0, 64, 64) + png(64, 48)
    err = raises(p.E_BAD_FRAME, p.decode_frame, raw)
    assert "64x48" in err.message and "64x64" in err.message
    raw = p.FRAME_HEADER.pack(b"DDIF", 1, p.FRAME_IMAGE_PNG, 1, 0, 8, 8) + b"not a png at all" * 3
    raises(p.E_BAD_FRAME, p.decode_frame, raw)


@pytest.mark.parametrize("text, code", [
    ("{not json", p.E_BAD_JSON),
    ('{"type": "submit", "guidance": NaN}', p.E_BAD_JSON),
    ('{"type": "submit", "guidance": Infinity}', p.E_BAD_JSON),
    ("[1, 2]", p.E_BAD_MESSAGE),
    ('{"kind": "submit"}', p.E_BAD_MESSAGE),
    ('{"type": 5}', p.E_BAD_MESSAGE),
    ("[" * 100_000 + "]" * 100_000, p.E_BAD_JSON),
    ('{"type": "x", "pad": "' + "a" * p.MAX_TEXT_BYTES + '"}', p.E_TOO_LARGE),
])
def test_loads_rejects(text, code):
    raises(code, p.loads, text)


def test_dumps_refuses_nan():
    with pytest.raises(ValueError, match="not JSON compliant"):
        p.dumps({"type": "progress", "eta_s": float("nan")})
    with pytest.raises(ValueError, match="needs a 'type'"):
        p.dumps({"eta_s": 1.0})
    assert json.loads(p.dumps({"type": "progress", "eta_s": 1.5})) == {"type": "progress", "eta_s": 1.5}


def png_with_a_chunk_before_ihdr(width: int, height: int) -> bytes:
    """A PNG whose first chunk is not IHDR, crafted so that bytes 16-24 still read as the
    declared size: only the check of the first chunk's type can refuse it."""
    import zlib

    data = png(width, height)
    first = struct.pack(">II", width, height)
    chunk = struct.pack(">I", len(first)) + b"tEXt" + first
    chunk += struct.pack(">I", zlib.crc32(chunk[4:]) & 0xFFFFFFFF)
    return data[:8] + chunk + data[8:]


def test_a_png_whose_first_chunk_is_not_ihdr_is_refused():
    # The PNG format puts IHDR first; anything else is not read as a size. (Dropping that check
    # passed every test before this one.)
    crafted = png_with_a_chunk_before_ihdr(8, 8)
    assert crafted[16:24] == struct.pack(">II", 8, 8)
    err = raises(p.E_BAD_FRAME, p.png_size, crafted)
    assert "PNG" in err.message
    raw = p.FRAME_HEADER.pack(b"DDIF", 1, p.FRAME_IMAGE_PNG, 3, 0, 8, 8) + crafted
    raises(p.E_BAD_FRAME, p.decode_frame, raw)
    with pytest.raises(p.ProtocolError):
        p.encode_frame(p.FRAME_RESULT_PNG, 3, 0, 8, 8, crafted)
