"""Item I/O shared by every step: decoding image and mask bytes, and the rejects table.

A bad item never stops a step: it becomes one row (uri, reason) of ``rejected.parquet``.
"""

from __future__ import annotations

import io
import os

import numpy as np
import pyarrow as pa

from scenesearch import storage
from scenesearch.errors import ItemError

REJECTED_SCHEMA = pa.schema([("uri", pa.string()), ("reason", pa.string())])


def decode_image(name: str, data: bytes) -> np.ndarray:
    """Decode image bytes to (H, W, 3) uint8; grayscale, RGBA, palette and 16-bit are converted.

    Raises:
        ItemError: empty, truncated or undecodable bytes.
    """
    from PIL import Image, ImageOps

    def to_rgb(im) -> np.ndarray:
        im = ImageOps.exif_transpose(im)  # phone photos carry their rotation in EXIF
        if im.mode in ("I;16", "I;16B", "I;16L", "I"):
            # 16-bit grey: scale to 8 bits rather than clip (mode I has no fixed range: use its peak)
            arr = np.asarray(im, dtype=np.float64)
            peak = 65535.0 if im.mode.startswith("I;16") or arr.max() > 255 else 255.0
            im = Image.fromarray((arr * 255.0 / peak).round().astype(np.uint8))
        if im.mode in ("RGBA", "LA", "P", "PA"):
            im = im.convert("RGBA")
            background = Image.new("RGBA", im.size, (255, 255, 255, 255))
            im = Image.alpha_composite(background, im)  # transparent pixels become white, like render backgrounds
        return np.array(im.convert("RGB"))

    return _decode(name, data, "image", to_rgb)


def decode_mask(name: str, data: bytes) -> np.ndarray:
    """Decode a mask PNG (the render step's ``mask`` column) to (H, W) uint8: 0 background .. 255 covered.

    Raises:
        ItemError: empty, truncated or undecodable bytes.
    """
    return _decode(name, data, "mask", lambda im: np.array(im.convert("L")))


def _decode(name: str, data: bytes, what: str, convert) -> np.ndarray:
    """Open `data` with PIL, load it whole and `convert` it; every failure is one ItemError naming `name`."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise ItemError(f"{name}: the {'file' if what == 'image' else what} is empty")
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return convert(im)
    except UnidentifiedImageError:
        raise ItemError(f"{name}: the {what} cannot be decoded (unknown or corrupt image format)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ItemError(f"{name}: the {what} cannot be decoded ({e})") from None


def write_rejected(path: str | os.PathLike, rejected: list[tuple[str, str]]) -> None:
    """Write [(uri, reason)] as rejected.parquet (an empty table when nothing was rejected)."""
    storage.write_table(path, pa.Table.from_pylist([{"uri": u, "reason": r} for u, r in rejected], schema=REJECTED_SCHEMA))
