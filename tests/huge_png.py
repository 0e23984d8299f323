"""Test helper: an arbitrarily large valid PNG written without materializing its pixels."""
import struct
import zlib


def huge_png(path, w, h):
    """A valid w x h grayscale PNG of zeros, written row by row (a 20000 x 20000 one is ~400 KB)."""
    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    comp = zlib.compressobj(9)
    row = b"\0" * (w + 1)  # filter byte + w pixels
    idat = b"".join(comp.compress(row) for _ in range(h)) + comp.flush()
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
                + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
