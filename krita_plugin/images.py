"""Pixel buffers <-> PNG and change maps, with QImage only (Krita's Python has no numpy).

Krita hands out 8-bit RGBA layers as BGRA bytes, unpremultiplied, which is the memory layout of
QImage.Format_ARGB32 on little-endian machines (every platform Krita ships on), so pixel buffers
go in and out of QImage without a per-pixel Python loop.
"""

from __future__ import annotations

from .qt import (
    COMPOSITION_DESTINATION_IN,
    FORMAT_ARGB32,
    FORMAT_ARGB32_PREMULTIPLIED,
    FORMAT_INDEXED8,
    KEEP_ASPECT,
    IGNORE_ASPECT,
    READ_WRITE,
    SMOOTH,
    QBuffer,
    QByteArray,
    QImage,
    QPainter,
)


class ImageError(ValueError):
    """An image the plugin cannot use; the message says what to do."""


def _image_bytes(image: QImage, bytes_per_pixel: int) -> bytes:
    """Tightly packed rows (QImage pads each row to 32 bits)."""
    width, height = image.width(), image.height()
    stride = image.bytesPerLine()
    bits = image.constBits()
    bits.setsize(stride * height)
    raw = bytes(bits)
    row = width * bytes_per_pixel
    if stride == row:
        return raw
    return b"".join(raw[y * stride : y * stride + row] for y in range(height))


def bgra_image(bgra: bytes, width: int, height: int) -> QImage:
    """A QImage owning a copy of `bgra` (Krita's 8-bit RGBA layer layout)."""
    if len(bgra) != width * height * 4:
        raise ImageError(f"expected {width}x{height}x4 bytes of pixels, got {len(bgra)}")
    # QImage does not copy the buffer it is given; .copy() detaches it from `bgra`'s lifetime.
    return QImage(bgra, width, height, width * 4, FORMAT_ARGB32).copy()


def image_to_bgra(image: QImage) -> bytes:
    """BGRA bytes of any QImage, unpremultiplied, rows packed."""
    return _image_bytes(image.convertToFormat(FORMAT_ARGB32), 4)


def encode_png(image: QImage) -> bytes:
    data = QByteArray()
    buffer = QBuffer(data)
    buffer.open(READ_WRITE)
    if not image.save(buffer, "PNG"):
        raise ImageError("could not encode the picture as PNG")
    buffer.close()
    return bytes(data)


def bgra_to_png(bgra: bytes, width: int, height: int) -> bytes:
    return encode_png(bgra_image(bgra, width, height))


_KEPT_ALPHA: list = []  # colour table: index 0 (map black) transparent, every other opaque


def clear_where_kept(bgra: bytes, width: int, height: int, change_map: bytes) -> bytes:
    """`bgra` made transparent wherever `change_map` (one byte per pixel, same size) is 0: those
    pixels equal the source anyway, so a result layer shows exactly what changed."""
    if len(change_map) != width * height:
        raise ImageError(f"expected a {width}x{height} map, got {len(change_map)} bytes")
    if not _KEPT_ALPHA:
        _KEPT_ALPHA.extend([0x00000000] + [0xFF000000] * 255)
    mask = QImage(change_map, width, height, width, FORMAT_INDEXED8)
    mask.setColorTable(_KEPT_ALPHA)
    image = bgra_image(bgra, width, height)
    painter = QPainter(image)
    painter.setCompositionMode(COMPOSITION_DESTINATION_IN)  # keep the result where the mask is opaque
    painter.drawImage(0, 0, mask.convertToFormat(FORMAT_ARGB32))
    painter.end()
    return image_to_bgra(image)


def thumbnail(bgra: bytes, width: int, height: int, side: int) -> QImage:
    """A small copy (at most `side` px per side) for the docker's result list."""
    return bgra_image(bgra, width, height).scaled(side, side, KEEP_ASPECT, SMOOTH)


def decode_png(data: bytes) -> QImage:
    image = QImage.fromData(data)
    if image.isNull():
        raise ImageError("the server sent a picture that is not a readable PNG")
    return image


def png_to_bgra(data: bytes, width: int | None = None, height: int | None = None) -> bytes:
    """Decode a PNG to BGRA bytes, scaled to (width, height) when given (previews come downscaled)."""
    image = decode_png(data)
    if width is not None and height is not None and (image.width(), image.height()) != (width, height):
        image = image.scaled(width, height, IGNORE_ASPECT, SMOOTH)
    return image_to_bgra(image)


def change_map_from_bgra(bgra: bytes, width: int, height: int) -> bytes:
    """One byte per pixel: the layer's luminance composited over black.

    White = change fully, black = keep (the painter's convention; the paper's mu is 1 - map).
    Transparent pixels count as keep, half-transparent white as half change.
    """
    if len(bgra) != width * height * 4:
        raise ImageError(f"expected {width}x{height}x4 bytes of pixels, got {len(bgra)}")
    # Premultiplied RGB is exactly "the colour over black". No copy is kept of `bgra` (alive for
    # this call): a 4K map is 64 MB, and each copy costs the UI thread.
    premultiplied = QImage(bgra, width, height, width * 4, FORMAT_ARGB32).convertToFormat(FORMAT_ARGB32_PREMULTIPLIED)
    bits = premultiplied.constBits()
    bits.setsize(width * height * 4)  # 32-bit rows are never padded
    pixels, band = memoryview(bits), width * GRAY_BAND_ROWS
    return b"".join(_gray(pixels[start * 4:(start + band) * 4]) for start in range(0, width * height, band))


GRAY_BAND_ROWS = 64  # bounds the temporaries of _gray on a 4K canvas to a few MB
_GRAY_WEIGHTS = ((0, 5), (1, 16), (2, 11))  # BGRA byte, its weight out of 32 (Qt 5's qGray)


def _gray(bgrx: memoryview) -> bytes:
    """qGray of each pixel, (11 R + 16 G + 5 B) // 32, computed the same under every binding: Qt 6
    converts to Grayscale8 colour-managed (pure red gives 127, not Qt 5's 87). Each pixel is a
    16-bit lane of one big integer, so the sums run in C without a per-pixel loop. A gray band
    (B = G = R, as every map the plugin writes) is its blue bytes: (11 + 16 + 5) v // 32 = v."""
    band = bytes(bgrx)  # strided slices of bytes run faster than of a memoryview
    blue = band[0::4]
    if blue == band[1::4] and blue == band[2::4]:
        return blue
    count = len(band) // 4
    lanes, total = bytearray(2 * count), 0
    for offset, weight in _GRAY_WEIGHTS:
        lanes[0::2] = band[offset::4]
        total += int.from_bytes(lanes, "little") * weight
    return (total >> 5).to_bytes(2 * count, "little")[0::2]
