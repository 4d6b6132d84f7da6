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
    FORMAT_INDEXED8,
    FORMAT_RGB32,
    FORMAT_RGB888,
    QColor,
    QImage,
    QPainter,
    QRadialGradient,
    QTransform,
)

MAX_GROW_PX = 256

_GRAYS: dict[bytes, list[int]] = {}  # colour tables by lookup table (the last few)


def gray_to_bgra(gray: bytes, lut: bytes | None = None) -> bytes:
    """Opaque gray BGRA (B = G = R = the map's byte, A = 255), each byte first mapped through
    `lut` (256 bytes) when given: a map as a layer's pixels, read back by
    images.change_map_from_bgra as the same map. One C pass by Qt (an indexed image whose colour
    table is the gray of each table entry, converted to 32-bit): a 2K map in a few ms, the same
    under every Qt binding."""
    n = len(gray)
    if n == 0:
        return b""
    table = _GRAYS.get(lut or b"")
    if table is None:
        if len(_GRAYS) > 8:
            _GRAYS.clear()
        values = lut if lut is not None else range(256)
        if len(values) != 256:
            raise ValueError(f"A lookup table has 256 entries, got {len(values)}.")
        table = _GRAYS[lut or b""] = [0xFF000000 | v * 0x010101 for v in values]
    # Each chunk is a one-row image: no row padding to mind, and no image past Qt's size limit.
    return b"".join(_expand(gray[start:start + EXPAND_PIXELS], table) for start in range(0, n, EXPAND_PIXELS))


EXPAND_PIXELS = 1 << 22  # a 2K map in one pass; a 4K map in four


def _expand(gray: bytes, table: list[int]) -> bytes:
    n = len(gray)
    image = QImage(gray, n, 1, n, FORMAT_INDEXED8)
    image.setColorTable(table)
    out = image.convertToFormat(FORMAT_RGB32)
    bits = out.constBits()
    bits.setsize(n * 4)
    return bytes(bits)


def _spans(length: int) -> tuple[list[int], int]:
    """Doubling: after drawing a copy shifted by each of `shifts`, every pixel holds the max (min)
    of the `reach` pixels from it onwards, `reach` the largest power of two <= `length`."""
    shifts, reach = [], 1
    while reach * 2 <= length:
        shifts.append(reach)
        reach *= 2
    return shifts, reach


def _shifted_up(source: QImage, shift: int, mode) -> QImage:
    """A copy of `source` where [x, y] = ext(source[x, y], source[x, y + shift])."""
    target = source.copy()  # a plain copy: faster than drawing it
    painter = QPainter(target)
    painter.setCompositionMode(mode)
    painter.drawImage(0, -shift, source)
    painter.end()
    return target


def _down_columns(gray: QImage, length: int, mode) -> QImage:
    """A Grayscale8 image (width a multiple of 12) whose every pixel is the max (Lighten) or min
    (Darken) of the `length` pixels from it down its column.

    Qt's painter composes 32-bit pixels in place, but converts 8-bit ones to 32 and back on
    every row: so each three neighbours of a row ride as the R, G and B of one 32-bit pixel
    (the bytes read as RGB888, then RGB32), and a vertical shift moves them together. Lighten /
    Darken take the max / min per channel, exactly (alpha stays 255). O(log length) draws."""
    width, height = gray.width(), gray.height()
    image = QImage(gray.constBits(), width // 3, height, width, FORMAT_RGB888).convertToFormat(FORMAT_RGB32)
    shifts, reach = _spans(length)
    if reach < length:  # ext over [y, y + length) = ext(win[y], win[y + rest]), both `reach` long
        shifts.append(length - reach)
    for shift in shifts:  # windows double: win2[y] = ext(win[y], win[y + shift])
        image = _shifted_up(image, shift, mode)
    packed = image.convertToFormat(FORMAT_RGB888)  # rows: width bytes, a multiple of 4 (no padding)
    return QImage(packed.constBits(), width, height, width, FORMAT_GRAYSCALE8).copy()


def _multiple_of_12(n: int) -> int:
    """Rows of 3-byte pixels that Qt does not pad (a multiple of 4 bytes)."""
    return -(-n // 12) * 12


def grow(gray: bytes, width: int, height: int, px: int) -> bytes:
    """The map dilated (`px` > 0: each pixel the max of the (2 px + 1)-pixel square around it) or
    eroded (`px` < 0: the min); pixels outside the canvas do not count. Square, not a disc: one
    pass down the columns, then one down the rows of the map turned a quarter (Qt turns an 8-bit
    image by a quarter natively), each of O(log px) draws (see _down_columns): in Krita 5.1.5 a
    4K map grows by 8 px in about 0.4 s, by 64 px in about 0.5 s (bench/RESULTS.md, maps)."""
    if len(gray) != width * height:
        raise ValueError(f"expected a {width}x{height} map, got {len(gray)} bytes")
    if px == 0:
        return bytes(gray)
    r = min(abs(px), MAX_GROW_PX)
    mode = COMPOSITION_LIGHTEN if px > 0 else COMPOSITION_DARKEN
    fill = 0 if px > 0 else 255  # outside: never the max (min)
    padded = QImage(_multiple_of_12(width + 2 * r), _multiple_of_12(height + 2 * r), FORMAT_GRAYSCALE8)
    padded.fill(QColor(fill, fill, fill))
    painter = QPainter(padded)
    painter.setCompositionMode(COMPOSITION_SOURCE)
    painter.drawImage(r, r, QImage(gray, width, height, width, FORMAT_GRAYSCALE8))
    painter.end()
    # Map pixel (x, y) is padded (x + r, y + r); its windows start r before it, at (x, y).
    done = _down_columns(padded, 2 * r + 1, mode)
    turned = _down_columns(done.transformed(QTransform().rotate(90)), 2 * r + 1, mode)
    return _gray_bytes(turned.transformed(QTransform().rotate(270)), width, height)


def _gray_bytes(image: QImage, width: int, height: int) -> bytes:
    """The bytes of a Grayscale8 image's top-left `width` x `height`, rows packed."""
    stride = image.bytesPerLine()
    bits = image.constBits()
    bits.setsize(stride * height)
    if stride == width:
        return bytes(bits)
    view = memoryview(bits)
    return b"".join(view[row * stride:row * stride + width] for row in range(height))


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
