"""A small RGB canvas with lines, text and a PNG encoder (numpy + zlib only).

matplotlib and Pillow are not dependencies; `llama_jax.plot` draws its
loss curves with this. Text uses the classic 5x7 LCD font (ASCII 32-126),
scaled by an integer factor.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np

# 5 columns per glyph, bit 0 = top row (7 rows), ASCII 32..126.
_FONT = bytes.fromhex(
    "0000000000" "00005f0000" "0007000700" "147f147f14" "242a7f2a12" "2313086462"
    "3649552250" "0005030000" "001c224100" "0041221c00" "082a1c2a08" "08083e0808"
    "0050300000" "0808080808" "0060600000" "2010080402" "3e5149453e" "00427f4000"
    "4261514946" "2141454b31" "1814127f10" "2745454539" "3c4a494930" "0171090503"
    "3649494936" "064949291e" "0036360000" "0056360000" "0008142241" "1414141414"
    "4122140800" "0201510906" "324979413e" "7e1111117e" "7f49494936" "3e41414122"
    "7f4141221c" "7f49494941" "7f09090101" "3e41415132" "7f0808087f" "00417f4100"
    "2040413f01" "7f08142241" "7f40404040" "7f0204027f" "7f0408107f" "3e4141413e"
    "7f09090906" "3e4151215e" "7f09192946" "4649494931" "01017f0101" "3f4040403f"
    "1f2040201f" "7f2018207f" "6314081463" "0304780403" "6151494543" "00007f4141"
    "0204081020" "41417f0000" "0402010204" "4040404040" "0001020400" "2054545478"
    "7f48444438" "3844444420" "384444487f" "3854545418" "087e090102" "081454543c"
    "7f08040478" "00447d4000" "2040443d00" "007f102844" "00417f4000" "7c04180478"
    "7c08040478" "3844444438" "7c14141408" "081414187c" "7c08040408" "4854545420"
    "043f444020" "3c4040207c" "1c2040201c" "3c4030403c" "4428102844" "0c5050503c"
    "4464544c44" "0008364100" "00007f0000" "0041360800" "08082a1c08"
)
GLYPH_W, GLYPH_H = 5, 7


def glyph(ch: str) -> np.ndarray:
    """[7, 5] bool bitmap of `ch` ('?' for characters outside ASCII 32-126)."""
    code = ord(ch)
    if not 32 <= code <= 126:
        code = ord("?")
    cols = _FONT[(code - 32) * 5:(code - 32) * 5 + 5]
    return np.array([[(c >> r) & 1 for c in cols] for r in range(GLYPH_H)], dtype=bool)


def text_bitmap(text: str, scale: int = 1) -> np.ndarray:
    """[7*scale, (6*len-1)*scale] bool bitmap of `text` (1 column between glyphs)."""
    if not text:
        return np.zeros((GLYPH_H * scale, 0), bool)
    parts = []
    for i, ch in enumerate(text):
        if i:
            parts.append(np.zeros((GLYPH_H, 1), bool))
        parts.append(glyph(ch))
    bitmap = np.concatenate(parts, axis=1)  # [7, 6 * len - 1]
    return bitmap.repeat(scale, axis=0).repeat(scale, axis=1)


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of an [height, width, 3] uint8 RGB image."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected [height, width, 3] uint8, got {image.shape} {image.dtype}")
    h, w, _ = image.shape

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    rows = np.concatenate([np.zeros((h, 1), np.uint8), image.reshape(h, w * 3)], axis=1)  # [h, 1 + 3w]
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace.
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(rows.tobytes(), 9)) + chunk(b"IEND", b""))


def decode_png(data: bytes) -> np.ndarray:
    """[height, width, 3] uint8 from PNG bytes written by `encode_png` (filter 0 only)."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG file")
    pos, idat, w, h = 8, b"", 0, 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            w, h = struct.unpack(">II", body[:8])
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    rows = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(h, 1 + 3 * w)
    if rows[:, 0].any():
        raise ValueError("decode_png reads only unfiltered rows")
    return rows[:, 1:].reshape(h, w, 3).copy()


class Canvas:
    """An RGB image to draw on; (x, y) pixel coordinates, y down."""

    def __init__(self, width: int, height: int, background=(255, 255, 255)):
        self.pixels = np.empty((height, width, 3), np.uint8)
        self.pixels[:] = background
        self.width, self.height = width, height

    def rect(self, x0: int, y0: int, x1: int, y1: int, color) -> None:
        """Fill [x0, x1) x [y0, y1), clipped to the canvas."""
        x0, x1 = max(int(x0), 0), min(int(x1), self.width)
        y0, y1 = max(int(y0), 0), min(int(y1), self.height)
        if x0 < x1 and y0 < y1:
            self.pixels[y0:y1, x0:x1] = color

    def polyline(self, xs, ys, color, width: float = 2.0, clip=None) -> None:
        """Draw the segments through (xs[i], ys[i]) with round pens of `width`.

        `clip` = (x0, y0, x1, y1) limits drawing to a rectangle (the plot area).
        """
        xs, ys = np.asarray(xs, float), np.asarray(ys, float)
        if len(xs) == 0:
            return
        if len(xs) == 1:
            px, py = xs, ys
        else:
            seg = np.hypot(np.diff(xs), np.diff(ys))
            n = np.maximum(np.ceil(seg * 2).astype(int), 1)
            t = np.concatenate([np.arange(k) / k for k in n] + [np.array([0.0])])
            idx = np.concatenate([np.full(k, i) for i, k in enumerate(n)] + [np.array([len(xs) - 2])])
            t[-1] = 1.0
            px = xs[idx] + (xs[idx + 1] - xs[idx]) * t
            py = ys[idx] + (ys[idx + 1] - ys[idx]) * t
        r = width / 2.0
        offsets = [(dx, dy) for dx in range(-int(np.ceil(r)), int(np.ceil(r)) + 1)
                   for dy in range(-int(np.ceil(r)), int(np.ceil(r)) + 1)
                   if dx * dx + dy * dy <= r * r + 0.25]
        x0, y0, x1, y1 = clip if clip is not None else (0, 0, self.width, self.height)
        for dx, dy in offsets:
            qx = np.round(px + dx).astype(int)
            qy = np.round(py + dy).astype(int)
            ok = (qx >= max(x0, 0)) & (qx < min(x1, self.width)) & (qy >= max(y0, 0)) \
                & (qy < min(y1, self.height))
            self.pixels[qy[ok], qx[ok]] = color

    def text(self, x: int, y: int, text: str, color=(0, 0, 0), scale: int = 2,
             anchor: str = "left", vertical: bool = False) -> None:
        """Draw `text` with its top-left (or top-center/right by `anchor`) at (x, y).

        `vertical` rotates it 90 degrees counter-clockwise (a y-axis label);
        then (x, y) is the left edge and vertical center.
        """
        bitmap = text_bitmap(text, scale)
        if vertical:
            bitmap = np.rot90(bitmap)
            y -= bitmap.shape[0] // 2
        elif anchor == "center":
            x -= bitmap.shape[1] // 2
        elif anchor == "right":
            x -= bitmap.shape[1]
        ys, xs = np.nonzero(bitmap)
        xs, ys = xs + int(x), ys + int(y)
        ok = (xs >= 0) & (xs < self.width) & (ys >= 0) & (ys < self.height)
        self.pixels[ys[ok], xs[ok]] = color

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(encode_png(self.pixels))
        return path
