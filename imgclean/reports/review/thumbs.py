"""Thumbnails for the review page, inlined as data: URIs; never raises for a bad file."""
from __future__ import annotations

import base64
import io
import os
import stat
import warnings

THUMB_SIZE = 96
_MAX_PREVIEW_BYTES = 512 * 1024 * 1024


def thumbnail_data_uri(path: str | os.PathLike, size: int = THUMB_SIZE) -> tuple[str | None, str]:
    """(data: URI of a small PNG/JPEG thumbnail, "") or (None, why there is none).

    Opens only regular files (no symlinks, FIFOs or devices), with the same format allow-list
    and pixel limit as scanning, and never raises for a bad file.
    """
    from PIL import Image, ImageOps

    from ... import data

    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        return None, "file not found"
    except OSError as exc:
        return None, f"cannot open ({exc.strerror or exc})"
    try:
        with os.fdopen(fd, "rb") as fh:
            st = os.fstat(fh.fileno())
            if not stat.S_ISREG(st.st_mode):
                return None, "not a regular file"
            if st.st_size > _MAX_PREVIEW_BYTES:
                return None, "file too large to preview"
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                img = Image.open(fh, formats=data.ALLOWED_FORMATS)
                w, h = img.size
                if w * h > data.MAX_PIXELS:
                    return None, "too large to preview"
                if img.format == "JPEG":
                    img.draft("RGB", (size, size))
                img.load()
                img = ImageOps.exif_transpose(img)
                gray = img.mode in ("1", "L", "LA", "La", "I", "F") or img.mode.startswith("I;16")
                img = data.to_mode(img, 1 if gray else 3)
                small = max(img.size) <= size
                if not small:
                    img.thumbnail((size, size), Image.BILINEAR)
                buf = io.BytesIO()
                if small:
                    img.save(buf, format="PNG", optimize=True)
                    mime = "image/png"
                else:
                    img.save(buf, format="JPEG", quality=82)
                    mime = "image/jpeg"
    except Exception as exc:  # a broken file gets a placeholder, never a crash
        return None, f"no preview ({type(exc).__name__})"
    return f"data:{mime};base64,{base64.b64encode(buf.getvalue()).decode('ascii')}", ""
