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


def decode_image(name: str, data: bytes, max_pixels: int | None = None, budget: str = "data.max_image_pixels") -> np.ndarray:
    """Decode image bytes to (H, W, 3) uint8; grayscale, RGBA, palette and 16-bit are converted.

    Bytes that do not hold the whole image are refused, not padded: PIL stops with an error on
    most cuts, and `_check_complete` catches what it lets through (a PNG whose pixel stream
    stops short or has no IEND, a JPEG whose scan ended early and which libjpeg filled grey).
    A broken EXIF block does not refuse the image: it is decoded without the EXIF rotation.

    Args:
        name: how errors name the image.
        data: the encoded bytes (PNG, JPEG or anything else PIL reads).
        max_pixels: refuse images above this many pixels, from the header, before decoding
            (None: only PIL's decompression-bomb limit).
        budget: what the refusal names as the limit (the config field, or serving's limit).

    Returns:
        (H, W, 3) uint8.

    Raises:
        ItemError: empty, truncated, oversized or undecodable bytes.
    """
    from PIL import Image, ImageOps

    def to_rgb(im) -> np.ndarray:
        try:
            im = ImageOps.exif_transpose(im)  # phone photos carry their rotation in EXIF
        except Exception:  # a corrupt EXIF block: the pixels are fine, keep them unrotated
            pass
        if im.mode in ("I;16", "I;16B", "I;16L", "I"):
            im = Image.fromarray(_grey16_to_8(im))
        if im.mode in ("RGBA", "LA", "P", "PA"):
            im = im.convert("RGBA")
            background = Image.new("RGBA", im.size, (255, 255, 255, 255))
            im = Image.alpha_composite(background, im)  # transparent pixels become white, like render backgrounds
        return np.array(im.convert("RGB"))

    return _decode(name, data, "image", to_rgb, max_pixels, budget)


def _grey16_to_8(im) -> np.ndarray:
    """16-bit (or mode I) grey scaled to 8 bits rather than clipped, a block of rows at a time.

    Mode I has no fixed range: its peak decides between 65535 and 255. Working in row blocks keeps
    the temporary at a few MB instead of a float64 copy of the whole image.
    """
    arr = np.asarray(im)  # uint16 or int32, one copy of the image
    peak = 65535 if im.mode.startswith("I;16") or int(arr.max()) > 255 else 255
    out = np.empty(arr.shape, dtype=np.uint8)
    step = max(1, (1 << 20) // max(1, arr.shape[1]))
    for r in range(0, arr.shape[0], step):
        block = np.clip(arr[r : r + step].astype(np.int64), 0, peak)
        out[r : r + step] = (block * 255 + peak // 2) // peak  # rounded like round(x * 255 / peak)
    return out


def decode_mask(name: str, data: bytes) -> np.ndarray:
    """Decode a mask PNG (the render step's ``mask`` column) to (H, W) uint8: 0 background .. 255 covered.

    Raises:
        ItemError: empty, truncated or undecodable bytes.
    """
    return _decode(name, data, "mask", lambda im: np.array(im.convert("L")))


def _decode(name: str, data: bytes, what: str, convert, max_pixels: int | None = None, budget: str = "") -> np.ndarray:
    """Open `data` with PIL, check its size, load it whole and `convert` it; every failure is one ItemError naming `name`."""
    from PIL import Image, ImageFile, UnidentifiedImageError

    if not data:
        raise ItemError(f"{name}: the {'file' if what == 'image' else what} is empty")
    # A process-wide switch some libraries flip: with it PIL pads a cut image instead of failing.
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with Image.open(io.BytesIO(data)) as im:
            width, height = im.size  # from the header: nothing is decoded yet
            if max_pixels is not None and width * height > max_pixels:
                raise ItemError(
                    f"{name}: the {what} is {width}x{height} = {width * height:,} pixels, above {budget} ({max_pixels:,})"
                )
            im.load()
            _check_complete(name, what, data, im)
            return convert(im)
    except UnidentifiedImageError:
        raise ItemError(f"{name}: the {what} cannot be decoded (unknown or corrupt image format)") from None
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as e:
        raise ItemError(f"{name}: the {what} cannot be decoded ({_one_line(e)})") from None


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _check_complete(name: str, what: str, data: bytes, im) -> None:
    """Refuse what PIL decoded without complaint although the bytes end before the image does."""
    if im.format == "PNG":
        _check_png(name, what, data)
    elif im.format == "JPEG" and _jpeg_scan_is_short(data):
        raise ItemError(f"{name}: the {what}'s JPEG data ends before its last rows (the decoder would fill them in)")


def _jpeg_scan_is_short(data: bytes) -> bool:
    """True when the JPEG's last scan holds fewer blocks than its header promises.

    libjpeg then warns "premature end of data" (PIL drops the warning) and makes up the missing
    blocks (grey, or whatever the padding decodes to). A complete scan never reads past its last
    block, so bytes slipped in before the EOI marker change nothing; a short one decodes them.
    Both decodes are at 1/8 scale (libjpeg's DC-only draft), which still reads every block.
    """
    from PIL import Image

    end = data.rfind(b"\xff\xd9")
    if end < 0:
        return False
    probe = data[:end] + b"\x5a\xa5\x3c\xc3" * 64 + data[end:]
    small = []
    for blob in (data, probe):
        with Image.open(io.BytesIO(blob)) as im:
            im.draft(im.mode, (max(1, im.size[0] // 8), max(1, im.size[1] // 8)))
            try:
                im.load()
            except OSError:
                return True  # the slipped-in bytes were read as data and did not decode
            small.append(np.asarray(im))
    return small[0].shape != small[1].shape or not np.array_equal(small[0], small[1])


_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
# Adam7 passes: (x start, y start, x step, y step)
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))


def _check_png(name: str, what: str, data: bytes) -> None:
    """The PNG has an IEND chunk and its IDAT stream inflates to every row the header promises.

    PIL pads a short pixel stream; inflating again in 1 MiB pieces only counts bytes, so the
    check costs no memory.
    """
    import struct
    import zlib

    pos, idat, header = 8, [], None
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", data[pos + 8 : pos + 21])
        elif kind == b"IDAT":
            idat.append((pos + 8, pos + 8 + length))
        elif kind == b"IEND" and pos + 12 <= len(data):  # the chunk with its CRC
            break
        pos += 12 + length
    else:
        raise ItemError(f"{name}: the {what} is truncated (the PNG has no IEND chunk)")
    if header is None:
        return
    width, height, depth, colour, _, _, interlace = header
    bits = _PNG_CHANNELS.get(colour, 4) * depth
    passes = _ADAM7 if interlace else ((0, 0, 1, 1),)
    expected = 0
    for x0, y0, dx, dy in passes:
        w, h = -(-(width - x0) // dx) if width > x0 else 0, -(-(height - y0) // dy) if height > y0 else 0
        if w and h:
            expected += h * (1 + -(-(w * bits) // 8))
    inflater, got = zlib.decompressobj(), 0
    try:
        for start, end in idat:
            chunk = data[start:end]
            while chunk and got < expected:
                got += len(inflater.decompress(chunk, 1 << 20))
                chunk = inflater.unconsumed_tail
            if got >= expected:
                break
    except zlib.error:
        pass  # a corrupt stream counts as short (PIL usually reports it first)
    if got < expected:
        raise ItemError(f"{name}: the {what}'s PNG pixel data ends early ({got} of {expected} bytes: the header promises more rows than it holds)")


def write_rejected(path: str | os.PathLike, rejected: list[tuple[str, str]]) -> None:
    """Write [(uri, reason)] as rejected.parquet (an empty table when nothing was rejected)."""
    storage.write_table(path, pa.Table.from_pylist([{"uri": u, "reason": r} for u, r in rejected], schema=REJECTED_SCHEMA))
