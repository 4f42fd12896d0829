"""Finding image files and decoding them safely.

Everything here is deterministic (sorted walks) and never follows symbolic links. Decoding
never raises for a bad file: it returns a status that the caller reports.
"""
from __future__ import annotations

import os
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image, ImageFile, ImageOps

# Extensions we look at; anything else in a folder is not an image and is ignored.
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm"}
)
# Decoders Pillow may use. An explicit list keeps EPS/PDF (Ghostscript) and exotic plugins out,
# whatever the file is named.
ALLOWED_FORMATS = ("JPEG", "PNG", "BMP", "GIF", "WEBP", "TIFF", "PPM")

# Images above this many pixels are reported as too_large instead of decoded.
MAX_PIXELS = 64_000_000

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is unreadable, not silently padded

# Statuses a file can end in before it reaches the model.
OK = "ok"
UNREADABLE = "unreadable"
TOO_LARGE = "too_large"
UNSUPPORTED = "unsupported"
SKIPPED = "skipped"


@dataclass(frozen=True)
class FileEntry:
    """A candidate file found by a walk, with the stat seen at that moment."""

    path: Path
    size: int
    mtime_ns: int
    skip_reason: str = ""  # non-empty: not to be opened (symlink, FIFO, hard-link duplicate...)


class DecodeError(Exception):
    """A file could not be turned into pixels; `status` says why."""

    def __init__(self, status: str, message: str):
        super().__init__(message)
        self.status = status


# Signatures of real formats we deliberately do not decode (reported as unsupported, while
# garbage, text and truncated files are unreadable).
_FOREIGN_SIGNATURES = (
    (b"%PDF", "PDF"),
    (b"%!PS", "PostScript/EPS"),
    (b"\xc5\xd0\xd3\xc6", "EPS"),
    (b"8BPS", "Photoshop"),
    (b"\x00\x00\x01\x00", "ICO"),
    (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
)


def _foreign_format(head: bytes) -> str:
    for signature, name in _FOREIGN_SIGNATURES:
        if head.startswith(signature):
            return name
    if head[4:8] == b"ftyp":
        return "HEIF/AVIF"
    return ""


def is_hidden(name: str) -> bool:
    return name.startswith(".")


def has_image_extension(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def walk_images(root: Path, exclude: tuple[Path, ...] = ()) -> Iterator[FileEntry]:
    """Yield image-named entries below `root`, sorted, depth first.

    Hidden files and dot-folders are ignored, symlinked folders are not entered, and folders in
    `exclude` (e.g. a quarantine folder inside the scanned one) are skipped. Symlinks, FIFOs and
    other non-regular files come back with a skip_reason so they can be reported; a file reached
    twice through hard links is yielded once for scoring and then as a duplicate.
    """
    excluded = {os.path.realpath(p) for p in exclude}
    seen_inodes: set[tuple[int, int]] = set()

    def visit(folder: str) -> Iterator[FileEntry]:
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: os.fsencode(e.name))
        except OSError:
            return
        for entry in entries:
            if is_hidden(entry.name):
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISDIR(st.st_mode):
                if os.path.realpath(entry.path) not in excluded:
                    yield from visit(entry.path)
                continue
            if not has_image_extension(entry.name):
                continue
            path = Path(entry.path)
            if stat.S_ISLNK(st.st_mode):
                yield FileEntry(path, 0, 0, "symbolic link (not followed)")
            elif not stat.S_ISREG(st.st_mode):
                yield FileEntry(path, 0, 0, "not a regular file")
            elif (st.st_dev, st.st_ino) in seen_inodes:
                yield FileEntry(path, st.st_size, st.st_mtime_ns, "hard link to a file already scanned")
            else:
                seen_inodes.add((st.st_dev, st.st_ino))
                yield FileEntry(path, st.st_size, st.st_mtime_ns)

    yield from visit(os.fspath(root))


def list_image_folder(root: Path) -> tuple[list[str], list[list[FileEntry]]]:
    """An ImageFolder: sorted class names (non-hidden sub-folders) and each class's files."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root} is not a folder; give a folder with one sub-folder per class")
    class_dirs = sorted(
        (d for d in root.iterdir() if d.is_dir() and not d.is_symlink() and not is_hidden(d.name)),
        key=lambda d: d.name,
    )
    if not class_dirs:
        raise ValueError(
            f"{root} has no class sub-folders; put each class's images in a folder of its own "
            f"(e.g. {root}/cat/*.jpg, {root}/dog/*.jpg)"
        )
    names = [d.name for d in class_dirs]
    files = [[e for e in walk_images(d) if not e.skip_reason] for d in class_dirs]
    return names, files


def _to_mode(img: Image.Image, channels: int) -> Image.Image:
    """Convert any Pillow mode to 'L' (channels=1) or 'RGB' (channels=3)."""
    mode = img.mode
    if mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        arr = np.asarray(img, dtype=np.float64)
        arr = np.nan_to_num(arr, nan=0.0, posinf=0.0, neginf=0.0)
        lo, hi = float(arr.min()), float(arr.max())
        if mode.startswith("I;16"):
            lo, hi = 0.0, 65535.0
        scaled = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
        img = Image.fromarray(np.clip(scaled, 0, 255).astype(np.uint8), mode="L")
    elif mode == "P" or mode == "PA":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "RGBa", "La"):
        # Flatten transparency onto black, the background of the paper's digit data.
        background = Image.new("RGBA", img.size, (0, 0, 0, 255))
        img = Image.alpha_composite(background, img.convert("RGBA"))
    target = "L" if channels == 1 else "RGB"
    return img if img.mode == target else img.convert(target)


# Resampling filters by the names timm's data configs use.
INTERPOLATIONS = {
    "nearest": Image.NEAREST,
    "bilinear": Image.BILINEAR,
    "bicubic": Image.BICUBIC,
    "lanczos": Image.LANCZOS,
    "box": Image.BOX,
    "hamming": Image.HAMMING,
}


def _resize(img: Image.Image, size: int, interpolation: str = "bilinear", crop_pct: float = 1.0) -> Image.Image:
    """Centre-crop a square of crop_pct x the shorter side, resized to size x size.

    That is timm's evaluation transform (resize the shorter side to size / crop_pct, then
    centre-crop size x size); crop_pct 1.0 keeps the whole shorter side.
    """
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
    path: Path, size: int, channels: int, interpolation: str = "bilinear", crop_pct: float = 1.0
) -> np.ndarray:
    """Decode `path` into a uint8 array of shape (size, size, channels).

    `interpolation` (a key of INTERPOLATIONS) and `crop_pct` set the resize (see _resize).

    Raises DecodeError with status unreadable / too_large / unsupported. Applies EXIF
    orientation, takes the first frame of animations, and never trusts the file name.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with open(path, "rb") as fh:
                try:
                    img = Image.open(fh, formats=ALLOWED_FORMATS)
                except Image.UnidentifiedImageError:
                    fh.seek(0)
                    kind = _foreign_format(fh.read(16))
                    if kind:
                        raise DecodeError(UNSUPPORTED, f"{kind} file; only {', '.join(ALLOWED_FORMATS)} are read") from None
                    raise DecodeError(UNREADABLE, "not a decodable image (empty, truncated or not an image)") from None
                w, h = img.size
                if w * h > MAX_PIXELS:
                    raise DecodeError(TOO_LARGE, f"{w}x{h} pixels is over the {MAX_PIXELS:,} limit")
                if img.format == "JPEG" and min(w, h) >= 2 * size:
                    img.draft("L" if channels == 1 else "RGB", (size, size))
                img.load()  # decode now, inside the try: truncated files fail here
                img = ImageOps.exif_transpose(img)
                img = _resize(_to_mode(img, channels), size, interpolation, crop_pct)
                arr = np.asarray(img, dtype=np.uint8)
    except DecodeError:
        raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise DecodeError(TOO_LARGE, str(exc)) from None
    except MemoryError:
        raise DecodeError(TOO_LARGE, "ran out of memory decoding it") from None
    except Exception as exc:  # any decoder failure is a property of the file, not a crash
        raise DecodeError(UNREADABLE, f"{type(exc).__name__}: {exc}") from None
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return arr


def probe_image(path: Path) -> tuple[int, int, str]:
    """(width, height, mode) without decoding pixels; raises DecodeError like decode_image."""
    try:
        with open(path, "rb") as fh, Image.open(fh, formats=ALLOWED_FORMATS) as img:
            return img.size[0], img.size[1], img.mode
    except Exception as exc:
        raise DecodeError(UNREADABLE, f"{type(exc).__name__}: {exc}") from None
