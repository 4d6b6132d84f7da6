"""The two kinds of websocket frames, as bytes and text.

- **binary** frames carry one picture behind a fixed 20-byte header (:data:`FRAME_HEADER`):
  magic ``b"DDIF"``, protocol version, frame kind, job reference, index, width, height, then the
  payload (PNG bytes, or ``width*height`` bytes of 8-bit gray for maps and masks). No base64.
- **text** frames carry one JSON object with a string ``"type"`` (control messages), parsed
  strictly: objects only, finite numbers only.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any

from .constants import (
    E_BAD_FRAME,
    E_BAD_JSON,
    E_BAD_MESSAGE,
    E_TOO_LARGE,
    FRAME_IMAGE_PNG,
    FRAME_KIND_NAMES,
    FRAME_MAP_GRAY8,
    FRAME_PREVIEW_PNG,
    FRAME_RESULT_PNG,
    MAX_INDEX,
    MAX_REF,
    MAX_SIDE,
    MAX_TEXT_BYTES,
    PROTOCOL_VERSION,
    ProtocolError,
)

FRAME_MAGIC = b"DDIF"
# magic, version, kind, ref (client ref or server job id), index, width, height — big-endian.
FRAME_HEADER = struct.Struct(">4sBBIHII")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_KINDS = (FRAME_IMAGE_PNG, FRAME_PREVIEW_PNG, FRAME_RESULT_PNG)


@dataclass(frozen=True)
class Frame:
    """One binary frame. ``ref`` is the client's submit ref (client -> server) or the server's
    job id (server -> client)."""

    kind: int
    ref: int
    index: int
    width: int
    height: int
    payload: bytes

    @property
    def kind_name(self) -> str:
        return FRAME_KIND_NAMES.get(self.kind, str(self.kind))


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk, without decoding it (pure stdlib).

    The PNG format puts IHDR first, so a file whose first chunk is anything else is refused
    here, before any decoder sees it."""
    if len(data) < 24 or data[:8] != PNG_SIGNATURE or data[12:16] != b"IHDR":
        raise ProtocolError(E_BAD_FRAME, "The picture is not a valid PNG file.")
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def encode_frame(kind: int, ref: int, index: int, width: int, height: int,
                 payload: bytes) -> bytes:
    """Serialise one binary frame; checks the payload against the declared size."""
    if kind not in FRAME_KIND_NAMES:
        raise ValueError(f"unknown frame kind {kind}")
    if not (0 <= ref <= MAX_REF and 0 <= index <= MAX_INDEX):
        raise ValueError(f"frame ref {ref} or index {index} out of range")
    if not (1 <= width <= MAX_SIDE and 1 <= height <= MAX_SIDE):
        raise ValueError(f"frame size {width}x{height} out of range")
    _check_payload(kind, width, height, payload)
    return FRAME_HEADER.pack(FRAME_MAGIC, PROTOCOL_VERSION, kind, ref, index, width,
                             height) + bytes(payload)


def decode_frame(data: bytes) -> Frame:
    """Parse one binary frame; raises :class:`ProtocolError` (``bad_frame``) with the reason, and
    with the header's ``ref`` once the header itself could be read."""
    if len(data) < FRAME_HEADER.size:
        raise ProtocolError(E_BAD_FRAME, f"Binary frame of {len(data)} bytes is shorter than "
                                         f"its {FRAME_HEADER.size}-byte header.")
    magic, version, kind, ref, index, width, height = FRAME_HEADER.unpack_from(data)
    if magic != FRAME_MAGIC:
        raise ProtocolError(E_BAD_FRAME, "Binary frame does not start with the DDIF magic bytes.")
    if version != PROTOCOL_VERSION:
        # Not bad_version: that one ends a handshake. Another version may lay its header out
        # otherwise, so nothing in it (not even the ref) is trusted.
        raise ProtocolError(E_BAD_FRAME, f"Binary frame is protocol version {version}; this "
                                         f"side speaks version {PROTOCOL_VERSION}.")
    try:
        if kind not in FRAME_KIND_NAMES:
            raise ProtocolError(E_BAD_FRAME, f"Unknown binary frame kind {kind}.")
        if not (1 <= width <= MAX_SIDE and 1 <= height <= MAX_SIDE):
            raise ProtocolError(E_BAD_FRAME, f"Binary frame size {width}x{height} is out of "
                                             f"range.")
        payload = bytes(data[FRAME_HEADER.size:])
        _check_payload(kind, width, height, payload)
    except ProtocolError as exc:
        exc.ref = ref
        raise
    return Frame(kind, ref, index, width, height, payload)


def _check_payload(kind: int, width: int, height: int, payload: bytes) -> None:
    if kind == FRAME_MAP_GRAY8:
        if len(payload) != width * height:
            raise ProtocolError(E_BAD_FRAME, f"Map frame declares {width}x{height} "
                                             f"({width * height} bytes) but carries "
                                             f"{len(payload)} bytes.")
    elif kind in _PNG_KINDS:
        actual = png_size(payload)
        if actual != (width, height):
            raise ProtocolError(E_BAD_FRAME, f"PNG is {actual[0]}x{actual[1]} but its frame "
                                             f"declares {width}x{height}.")


def _reject_constant(name: str) -> Any:
    raise ProtocolError(E_BAD_JSON, f"JSON constant {name} is not allowed (numbers must be finite).")


def dumps(message: dict[str, Any]) -> str:
    """Serialise a control message (compact, finite numbers only)."""
    if "type" not in message:
        raise ValueError("a control message needs a 'type'")
    return json.dumps(message, separators=(",", ":"), allow_nan=False, ensure_ascii=False)


def loads(text: str | bytes) -> dict[str, Any]:
    """Parse a control message; raises :class:`ProtocolError` for anything but a JSON object
    with a string ``type``."""
    # The limit is in bytes on the wire: a character takes up to 4 of them in UTF-8.
    size = len(text.encode("utf-8", "surrogatepass")) if isinstance(text, str) else len(text)
    if size > MAX_TEXT_BYTES:
        raise ProtocolError(E_TOO_LARGE, f"Control message of {size} bytes is over the "
                                         f"{MAX_TEXT_BYTES}-byte limit for text frames.")
    try:
        message = json.loads(text, parse_constant=_reject_constant)
    except ProtocolError:
        raise
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(E_BAD_JSON, f"Control message is not valid JSON: {exc}.") from None
    except RecursionError:
        raise ProtocolError(E_BAD_JSON, "Control message is nested too deeply.") from None
    if not isinstance(message, dict):
        raise ProtocolError(E_BAD_MESSAGE, "A control message must be a JSON object.")
    if not isinstance(message.get("type"), str):
        raise ProtocolError(E_BAD_MESSAGE, "A control message needs a string field 'type'.")
    return message
