"""A PNG encoder for indexed-colour images (a palette and one byte per pixel), with zlib:
the map's raster needs no more, and no imaging library."""
from __future__ import annotations

import struct
import zlib

import numpy as np

SIGNATURE = b"\x89PNG\r\n\x1a\n"
COLOUR_TYPE_PALETTE = 3


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def encode_indexed(pixels: np.ndarray, palette: list[tuple[int, int, int]],
                   level: int = 6) -> bytes:
    """A PNG of pixels (rows x columns of palette indices, uint8) in palette's colours."""
    if pixels.ndim != 2 or pixels.dtype != np.uint8:
        raise ValueError("pixels must be a 2-D array of uint8 palette indices")
    if not 1 <= len(palette) <= 256:
        raise ValueError("a PNG palette has 1 to 256 colours")
    if pixels.size and int(pixels.max()) >= len(palette):
        raise ValueError("a pixel names a colour beyond the palette")
    height, width = pixels.shape
    # Each row starts with its filter type: 0, none (the raster's long runs compress well).
    rows = np.zeros((height, width + 1), dtype=np.uint8)
    rows[:, 1:] = pixels
    header = struct.pack(">IIBBBBB", width, height, 8, COLOUR_TYPE_PALETTE, 0, 0, 0)
    plte = bytes(c for rgb in palette for c in rgb)
    return (SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"PLTE", plte)
            + _chunk(b"IDAT", zlib.compress(rows.tobytes(), level)) + _chunk(b"IEND", b""))
