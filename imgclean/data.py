"""Decoding image files safely, in bounded memory.

Decoding never raises for a bad file: it returns a status that the caller reports (a failure of
the system rather than of the file, such as EACCES or EIO, is marked transient: a scan cache
never keeps it). The memory a
decode needs is estimated from the mode and size in the header before any pixel is decoded; a
file over DECODE_MEMORY_LIMIT is too_large, and decodes running at once in several threads share
one budget (DecodeBudget), so a folder of small files declaring large canvases cannot exhaust RAM.
Walking folders lives in `walk` (re-exported here).

numpy and Pillow are imported on the first decode (`modules()`), not with this module: the
statuses, the walk and the limits are all a rescan whose every file is a cache hit needs.
"""
from __future__ import annotations

import os
import threading
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from .walk import (  # noqa: F401  (re-exported: the walk used to live here)
    IMAGE_EXTENSIONS, FileEntry, has_image_extension, is_hidden, list_image_folder, too_long,
    unsupported_format, walk_images,
)
from .errors import ImgcleanError

if TYPE_CHECKING:  # for annotations only: modules() imports them when a file is decoded
    import numpy as np
    from PIL import Image

# Decoders Pillow may use. An explicit list keeps EPS/PDF (Ghostscript) and exotic plugins out,
# whatever the file is named.
ALLOWED_FORMATS = ("JPEG", "PNG", "BMP", "GIF", "WEBP", "TIFF", "PPM")

# Images above this many pixels are reported as too_large instead of decoded.
MAX_PIXELS = 64_000_000

# Resampling filters by the names timm's data configs use (INTERPOLATIONS maps them to Pillow's).
INTERPOLATION_NAMES = ("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming")

# Statuses a file can end in before it reaches the model.
OK = "ok"
UNREADABLE = "unreadable"
TOO_LARGE = "too_large"
UNSUPPORTED = "unsupported"
SKIPPED = "skipped"


class TransientMessage(str):
    """The message of a failure that says nothing lasting about the file's bytes: the system
    refused or failed for now (permission denied, an I/O error, too many open files, out of
    memory, a decoder process killed). The file is reported with its status as usual, but a scan
    cache never stores that outcome, so the next scan decodes the file again.

    The mark is the message's own type because the message is the one part of an outcome that
    every layer carries unchanged: worker processes' results (pickled), Ray, the records."""

    __slots__ = ()


def is_transient(message) -> bool:
    """Whether an outcome's message marks a transient failure (see TransientMessage)."""
    return message.__class__ is TransientMessage


def says_nothing_about_the_bytes(exc: BaseException) -> bool:
    """Whether an exception met while reading or decoding a file is the system's, not the file's:
    an OSError carrying an errno (EACCES, EPERM, EIO, EMFILE, ENFILE, ENOMEM, ESTALE, ...: the
    system call failed) or a MemoryError. A decoder's complaints about the data (Pillow's
    OSErrors carry no errno; SyntaxError, ValueError, zlib and struct errors) are the file's."""
    return isinstance(exc, MemoryError) or (isinstance(exc, OSError) and exc.errno is not None)


class DecodeError(ImgcleanError):
    """A file could not be turned into pixels; `status` says why. `transient`: the failure was
    the system's for now, not the file's (its message is a TransientMessage)."""

    def __init__(self, status: str, message: str, transient: bool = False):
        super().__init__(message)
        self.status = status
        self.transient = transient

    @property
    def message(self) -> str:
        """The message, a TransientMessage when the failure is transient."""
        text = str(self)
        return TransientMessage(text) if self.transient else text


_MODULES: tuple | None = None  # (numpy, PIL.Image), once modules() has imported them


def modules() -> tuple:
    """(numpy, PIL.Image), imported on first use (callers keep them for a batch or a file)."""
    global _MODULES, INTERPOLATIONS, _ORIENTATION
    if _MODULES is None:
        import numpy
        from PIL import Image, ImageFile

        ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is unreadable, not silently padded
        INTERPOLATIONS = {name: getattr(Image, name.upper()) for name in INTERPOLATION_NAMES}
        # EXIF orientation -> the transposition that makes the image upright (as ImageOps.exif_transpose).
        _ORIENTATION = {
            2: Image.Transpose.FLIP_LEFT_RIGHT,
            3: Image.Transpose.ROTATE_180,
            4: Image.Transpose.FLIP_TOP_BOTTOM,
            5: Image.Transpose.TRANSPOSE,
            6: Image.Transpose.ROTATE_270,
            7: Image.Transpose.TRANSVERSE,
            8: Image.Transpose.ROTATE_90,
        }
        _MODULES = (numpy, Image)  # last: another thread that sees it sees the tables too
    return _MODULES


def __getattr__(name: str):
    """INTERPOLATIONS (name -> Pillow's filter) imports Pillow when first asked for."""
    if name in ("INTERPOLATIONS", "_ORIENTATION"):
        modules()
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# Signatures of real formats we deliberately do not decode (reported as unsupported, while
# garbage, text and truncated files are unreadable).
_FOREIGN_SIGNATURES = (
    (b"%PDF", "PDF"),
    (b"%!PS", "PostScript/EPS"),
    (b"\xc5\xd0\xd3\xc6", "EPS"),
    (b"8BPS", "Photoshop"),
    (b"\x00\x00\x01\x00", "ICO"),
    (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
    (b"\xff\x4f\xff\x51", "JPEG 2000"),
    (b"\xff\x0a", "JPEG XL"),
    (b"\x00\x00\x00\x0cJXL ", "JPEG XL"),
    (b"v/1\x01", "OpenEXR"),
    (b"#?RADIANCE", "Radiance HDR"),
    (b"qoif", "QOI"),
    (b"DDS ", "DDS"),
)


def _foreign_format(head: bytes) -> str:
    for signature, name in _FOREIGN_SIGNATURES:
        if head.startswith(signature):
            return name
    if head[4:8] == b"ftyp":
        return "AVIF" if head[8:12] in (b"avif", b"avis") else "HEIF"
    return ""


# ----------------------------------------------------------------------------- memory
# One decode may need at most this much memory (decoded pixels, decoder buffers, conversions);
# above it the file is too_large. All decodes running at once share DECODE_BUDGET.
DECODE_MEMORY_LIMIT = 768 * 2**20
# Decoders that hold more than the decoded image: libwebp's animation decoder keeps its canvas and
# the previous one and hands Pillow a bytes copy; libtiff may buffer a whole strip (one strip can
# be the whole image).
_DECODER_FACTOR = {"WEBP": 4, "TIFF": 2}


def _pixel_bytes(mode: str) -> int:
    """Bytes Pillow stores per pixel: 1 for 1/L/P, 2 for I;16*, 4 for the rest (RGB included)."""
    if mode in ("1", "L", "P"):
        return 1
    return 2 if mode.startswith("I;16") else 4


def decode_memory(img: Image.Image, channels: int) -> int:
    """Bytes a decode of `img` (opened, not loaded) needs at its peak, from its mode and size.

    The decoded image (times the decoder's own buffers), plus the converted image and a transposed
    copy of it for EXIF orientation. Conversions run in bands (to_mode), so they add no more.
    """
    pixels = img.size[0] * img.size[1]
    stored = pixels * _pixel_bytes(img.mode) * _DECODER_FACTOR.get(img.format or "", 1)
    return stored + 2 * pixels * (1 if channels == 1 else 4)


def _default_total() -> int:
    try:
        physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        physical = 8 * 2**30
    return max(DECODE_MEMORY_LIMIT, min(2 * 2**30, physical // 4))


class DecodeBudget:
    """Bytes that decodes running at once may use together: reserve() before decoding.

    A reservation waits until the others leave room (one larger than the total runs alone), so
    the sum of concurrent decodes stays within `total` whatever the number of decode threads.
    """

    def __init__(self, total: int):
        self.total = total
        self.used = 0
        self.peak = 0  # largest sum reserved at once (for tests and benchmarks)
        self._cond = threading.Condition()

    @contextmanager
    def reserve(self, nbytes: int) -> Iterator[None]:
        nbytes = max(0, min(int(nbytes), self.total))
        with self._cond:
            while self.used and self.used + nbytes > self.total:
                self._cond.wait()
            self.used += nbytes
            self.peak = max(self.peak, self.used)
        try:
            yield
        finally:
            with self._cond:
                self.used -= nbytes
                self._cond.notify_all()


DECODE_BUDGET = DecodeBudget(_default_total())


# ----------------------------------------------------------------------------- conversion
_NUMERIC_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")
_ALPHA_MODES = ("P", "PA", "RGBA", "LA", "RGBa", "La")
# Conversions that need whole-image float or RGBA temporaries run on bands of this many pixels,
# so a 64-megapixel float image never becomes 64M float64 values at once (about 2 GB before).
_BAND_PIXELS = 1 << 21


def _bands(img: Image.Image) -> Iterator[tuple[int, Image.Image]]:
    w, h = img.size
    rows = max(1, _BAND_PIXELS // max(w, 1))
    for top in range(0, h, rows):
        yield top, img.crop((0, top, w, min(h, top + rows)))


def _finite(band: Image.Image) -> np.ndarray:
    np = (_MODULES or modules())[0]
    return np.nan_to_num(np.asarray(band, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)


def to_mode(img: Image.Image, channels: int) -> Image.Image:
    """Convert any Pillow mode to 'L' (channels=1) or 'RGB' (channels=3).

    Integer and float images are scaled to 0..255 (16-bit by their full range, others by their
    finite min..max); transparency is flattened onto black, the background of the paper's digit
    data. Both work band by band, the result is the same as converting the whole image at once.
    """
    np, Image = _MODULES or modules()
    target = "L" if channels == 1 else "RGB"
    mode = img.mode
    if mode in _NUMERIC_MODES:
        if mode.startswith("I;16"):
            lo, hi = 0.0, 65535.0
        else:
            lo, hi = np.inf, -np.inf
            for _, band in _bands(img):
                arr = _finite(band)
                lo, hi = min(lo, float(arr.min())), max(hi, float(arr.max()))

        def convert(band: Image.Image) -> Image.Image:
            arr = _finite(band)
            scaled = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
            return Image.fromarray(np.clip(scaled, 0, 255).astype(np.uint8), mode="L")

    elif mode in _ALPHA_MODES:

        def convert(band: Image.Image) -> Image.Image:
            rgba = band.convert("RGBA")
            return Image.alpha_composite(Image.new("RGBA", band.size, (0, 0, 0, 255)), rgba)

    else:
        return img if mode == target else img.convert(target)
    out = Image.new(target, img.size)
    for top, band in _bands(img):
        part = convert(band)
        out.paste(part if part.mode == target else part.convert(target), (0, top))
    return out


def resize_for_model(img: Image.Image, size: int, interpolation: str = "bilinear", crop_pct: float = 1.0) -> Image.Image:
    """Centre-crop a square of crop_pct x the shorter side, resized to size x size.

    That is timm's evaluation transform (resize the shorter side to size / crop_pct, then
    centre-crop size x size); crop_pct 1.0 keeps the whole shorter side.
    """
    Image = (_MODULES or modules())[1]
    w, h = img.size
    if (w, h) == (size, size) and crop_pct >= 1.0:
        return img
    # Crop the centred square in source pixels and resize only that: resizing the whole image
    # first would make a 1 x 3,000,000 strip 16 x 48,000,000 pixels on the way.
    side = min(w, h) * min(max(crop_pct, 1e-3), 1.0)
    left, top = (w - side) / 2, (h - side) / 2
    resample = INTERPOLATIONS.get(interpolation, Image.BILINEAR)
    return img.resize((size, size), resample, box=(left, top, left + side, top + side))


def decode_image(
    path: Path, size: int, channels: int, interpolation: str = "bilinear", crop_pct: float = 1.0,
    budget: DecodeBudget | None = None,
) -> np.ndarray:
    """Decode `path` into a uint8 array of shape (size, size, channels).

    `interpolation` (a key of INTERPOLATIONS) and `crop_pct` set the resize (see resize_for_model).
    `budget`: the memory shared with concurrent decodes (default DECODE_BUDGET).

    Raises DecodeError with status unreadable / too_large / unsupported, marked transient when
    the failure was the system's rather than the file's (says_nothing_about_the_bytes). Applies EXIF
    orientation, takes the first frame of animations, and never trusts the file name.
    """
    np, Image = _MODULES or modules()
    budget = budget if budget is not None else DECODE_BUDGET
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with open(path, "rb") as fh:
                try:
                    img = Image.open(fh, formats=ALLOWED_FORMATS)
                except Image.UnidentifiedImageError:
                    fh.seek(0)
                    kind = _foreign_format(fh.read(16)) or unsupported_format(path)
                    if kind:
                        raise DecodeError(UNSUPPORTED, f"{kind} file; only {', '.join(ALLOWED_FORMATS)} are read") from None
                    raise DecodeError(UNREADABLE, "not a decodable image (empty, truncated or not an image)") from None
                w, h = img.size
                if w * h > MAX_PIXELS:
                    raise DecodeError(TOO_LARGE, f"{w}x{h} pixels is over the {MAX_PIXELS:,} limit")
                if img.format == "JPEG" and min(w, h) >= 2 * size:
                    img.draft("L" if channels == 1 else "RGB", (size, size))
                need = decode_memory(img, channels)
                if need > DECODE_MEMORY_LIMIT:
                    raise DecodeError(
                        TOO_LARGE,
                        f"{w}x{h} {img.format} ({img.mode}) needs about {need / 2**20:,.0f} MB to decode, "
                        f"over the {DECODE_MEMORY_LIMIT / 2**20:,.0f} MB limit for one image",
                    )
                with budget.reserve(need):
                    arr = _pixels(img, size, channels, interpolation, crop_pct)
    except DecodeError:
        raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise DecodeError(TOO_LARGE, str(exc)) from None
    except MemoryError:  # the estimate said it fits: the machine was short of memory just then
        raise DecodeError(TOO_LARGE, "ran out of memory decoding it", transient=True) from None
    except Exception as exc:  # any decoder failure is this file's status, not a crash
        raise DecodeError(UNREADABLE, f"{type(exc).__name__}: {exc}", says_nothing_about_the_bytes(exc)) from None
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return arr


def _pixels(img: Image.Image, size: int, channels: int, interpolation: str, crop_pct: float) -> np.ndarray:
    """Load, convert, orient and resize an opened image; the large images die with this frame."""
    np = (_MODULES or modules())[0]
    img.load()  # decode now, inside the caller's try: truncated files fail here
    transpose = _ORIENTATION.get(img.getexif().get(0x0112, 1))
    # Orientation after the conversion (per pixel, so it commutes): the copy is of the small mode.
    img = to_mode(img, channels)
    if transpose is not None:
        img = img.transpose(transpose)
    return np.asarray(resize_for_model(img, size, interpolation, crop_pct), dtype=np.uint8)


def probe_image(path: Path) -> tuple[int, int, str]:
    """(width, height, mode) without decoding pixels; raises DecodeError like decode_image."""
    Image = (_MODULES or modules())[1]
    try:
        with open(path, "rb") as fh, Image.open(fh, formats=ALLOWED_FORMATS) as img:
            return img.size[0], img.size[1], img.mode
    except Exception as exc:
        raise DecodeError(UNREADABLE, f"{type(exc).__name__}: {exc}") from None
