"""Whole-map pixel work for the map tools, done by Qt's painter in C++ (Krita's Python has no
numpy, and a per-pixel Python loop over a 4K map takes seconds): grow/shrink (a max/min filter)
and the radial pattern. Maps are gray8 bytes, one per pixel, row by row.
"""

from __future__ import annotations

from .qt import (
    COMPOSITION_DARKEN,
    COMPOSITION_LIGHTEN,
    COMPOSITION_SOURCE,
    FORMAT_GRAYSCALE8,
    FORMAT_RGB32,
    QColor,
    QImage,
    QPainter,
    QRadialGradient,
)

MAX_GROW_PX = 256

_OPAQUE_BLACK: dict[int, bytes] = {}  # n pixels of opaque black BGRA, for the last size asked


def gray_to_bgra(gray: bytes) -> bytes:
    """Opaque gray BGRA (B = G = R = the map's byte, A = 255): a map as a layer's pixels, read
    back by images.change_map_from_bgra as the same map. Three strided copies run in C (a 2K map
    in about 35 ms), the same under every Qt binding."""
    n = len(gray)
    template = _OPAQUE_BLACK.get(n)
    if template is None:
        _OPAQUE_BLACK.clear()
        template = _OPAQUE_BLACK[n] = b"\0\0\0\xff" * n
    out = bytearray(template)
    out[0::4] = gray
    out[1::4] = gray
    out[2::4] = gray
    return bytes(out)


def _padded_gray(gray: bytes, width: int, height: int, pad: int, fill: int) -> QImage:
    """The map on a Grayscale8 image `pad` px larger on every side, filled with `fill` around."""
    image = QImage(width + 2 * pad, height + 2 * pad, FORMAT_GRAYSCALE8)
    image.fill(QColor(fill, fill, fill))
    painter = QPainter(image)
    painter.setCompositionMode(COMPOSITION_SOURCE)
    painter.drawImage(pad, pad, QImage(gray, width, height, width, FORMAT_GRAYSCALE8))
    painter.end()
    return image


def _gray_bytes(image: QImage, x: int, y: int, width: int, height: int) -> bytes:
    """The bytes of a Grayscale8 image's `width` x `height` rectangle at (x, y), rows packed."""
    stride = image.bytesPerLine()
    bits = image.constBits()
    bits.setsize(stride * image.height())
    view = memoryview(bits)
    return b"".join(view[(y + row) * stride + x:(y + row) * stride + x + width] for row in range(height))


def _spans(length: int) -> tuple[list[int], int]:
    """Doubling: after drawing a copy shifted by each of `shifts`, every pixel holds the max (min)
    of the `reach` pixels from it onwards, `reach` the largest power of two <= `length`."""
    shifts, reach = [], 1
    while reach * 2 <= length:
        shifts.append(reach)
        reach *= 2
    return shifts, reach


def _shifted_onto(target: QImage, source: QImage, shift: int, horizontal: bool, mode) -> None:
    """target = source, then target[p] = ext(source[p], source[p + shift]) along one axis."""
    painter = QPainter(target)
    painter.setCompositionMode(COMPOSITION_SOURCE)
    painter.drawImage(0, 0, source)
    painter.setCompositionMode(mode)
    painter.drawImage(-shift if horizontal else 0, 0 if horizontal else -shift, source)
    painter.end()


def _extreme_1d(image: QImage, spare: QImage, length: int, mode, horizontal: bool) -> tuple[QImage, QImage]:
    """Each pixel becomes the max (Lighten) or min (Darken) of the `length` pixels starting at it
    along one axis, by O(log length) shifted draws between two buffers (no image is allocated).
    `image` must be padded so that no window leaves it. Returns (result, spare)."""
    shifts, reach = _spans(length)
    for shift in shifts:  # windows double: win2[p] = ext(win[p], win[p + shift])
        _shifted_onto(spare, image, shift, horizontal, mode)
        image, spare = spare, image
    if reach < length:  # ext over [p, p + length) = ext(win[p], win[p + rest]), both `reach` long
        _shifted_onto(spare, image, length - reach, horizontal, mode)
        image, spare = spare, image
    return image, spare


def grow(gray: bytes, width: int, height: int, px: int) -> bytes:
    """The map dilated (`px` > 0: each pixel the max of the (2 px + 1)-pixel square around it) or
    eroded (`px` < 0: the min); pixels outside the canvas do not count. Square, not a disc: two
    one-axis passes of O(log px) draws each (Qt's Lighten / Darken composition: per-channel max /
    min), so a 4K map grows by 64 px in about a second."""
    if len(gray) != width * height:
        raise ValueError(f"expected a {width}x{height} map, got {len(gray)} bytes")
    if px == 0:
        return bytes(gray)
    r = min(abs(px), MAX_GROW_PX)
    mode = COMPOSITION_LIGHTEN if px > 0 else COMPOSITION_DARKEN
    image = _padded_gray(gray, width, height, r, 0 if px > 0 else 255)  # outside: never the max (min)
    spare = QImage(image.width(), image.height(), FORMAT_GRAYSCALE8)
    image, spare = _extreme_1d(image, spare, 2 * r + 1, mode, horizontal=True)
    image, spare = _extreme_1d(image, spare, 2 * r + 1, mode, horizontal=False)
    # Map pixel (x, y) is padded (x + r, y + r); its window starts r before it, at (x, y).
    return _gray_bytes(image, 0, 0, width, height)


def radial(width: int, height: int, center: int = 0, edge: int = 255) -> bytes:
    """shared.map_patterns.radial drawn by Qt's radial gradient (within 1 of it per pixel; a 4K
    map in tens of milliseconds where the pure-Python one takes seconds)."""
    if width < 1 or height < 1:
        raise ValueError(f"A map needs a size of at least 1x1, got {width}x{height}.")
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    reach = (cx * cx + cy * cy) ** 0.5 or 1.0
    image = QImage(width, height, FORMAT_RGB32)
    # Qt samples pixel (x, y) at (x + 0.5, y + 0.5): the centre pixel index cx is at cx + 0.5.
    gradient = QRadialGradient(cx + 0.5, cy + 0.5, reach)
    gradient.setColorAt(0.0, QColor(center, center, center))
    gradient.setColorAt(1.0, QColor(edge, edge, edge))
    painter = QPainter(image)
    painter.setCompositionMode(COMPOSITION_SOURCE)
    painter.fillRect(0, 0, width, height, gradient)
    painter.end()
    bits = image.constBits()
    bits.setsize(width * height * 4)  # 32-bit rows are never padded
    return bytes(memoryview(bits)[0::4])  # the blue byte: B = G = R throughout
