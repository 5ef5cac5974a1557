"""Images as prompt input: `sgagent.image(x)` from a path, bytes, a PIL image or a data URL.

An Image is decoded once, to RGB, and identified by a hash of its pixels: the engine's radix cache and its
vision-encoder cache match an image by that key, so the same picture reused by forks, turns or other programs
shares its KV, and two different pictures never do (whatever placeholder text surrounds them).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ImageTooLargeError, InvalidImageError

# 4096 x 4096: far past what a VLM's processor keeps (SmolVLM resizes to 1536 px at most, LLaVA to 336), and a
# bound on what one request may make the engine decode
DEFAULT_MAX_PIXELS = 1 << 24
_DATA_URL = re.compile(r"data:(?P<mime>[\w/+.-]*)(?P<params>(;[\w-]+=[^;,]*)*)(?P<b64>;base64)?,(?P<data>.*)", re.S)


@dataclass(frozen=True, eq=False)
class Image:
    """A decoded RGB image and its content key (sha256 of size and pixels, hex)."""

    pil: object = field(repr=False)
    key: str

    @property
    def size(self) -> tuple[int, int]:
        return self.pil.size

    def __eq__(self, other) -> bool:
        return isinstance(other, Image) and other.key == self.key

    def __hash__(self) -> int:
        return hash(self.key)


def image(source, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image:
    """An image for a prompt, from a file path, raw bytes, a PIL image, a `data:image/...;base64,` URL or an Image.

    Raises InvalidImageError for what is not a readable image (URLs other than data URLs included: nothing is
    fetched) and ImageTooLargeError past max_pixels (checked before the pixels are decoded)."""
    if isinstance(source, Image):
        _check_pixels(source.size, max_pixels)
        return source
    from PIL import Image as PILImage

    if isinstance(source, PILImage.Image):
        _check_pixels(source.size, max_pixels)
        return _from_pil(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _decode(bytes(source), "bytes", max_pixels)
    if isinstance(source, str) and source.startswith("data:"):
        return _decode(_data_url_bytes(source), "data URL", max_pixels)
    if isinstance(source, str) and re.match(r"[a-zA-Z][\w+.-]*://", source):
        raise InvalidImageError(f"only paths, bytes, PIL images and data URLs are images here, not {source[:40]!r} "
                                "(sgagent never fetches from the network)")
    if isinstance(source, (str, os.PathLike)):
        path = Path(source).expanduser()
        try:
            data = path.read_bytes()
        except OSError as e:
            raise InvalidImageError(f"cannot read image file {path}: {e.strerror or e}") from e
        return _decode(data, str(path), max_pixels)
    raise InvalidImageError(f"an image is a path, bytes, a PIL image or a data URL, not {type(source).__name__}")


def _data_url_bytes(url: str) -> bytes:
    m = _DATA_URL.fullmatch(url.strip())
    if m is None or not m["mime"].startswith("image/") or not m["b64"]:
        raise InvalidImageError("a data URL image must be data:image/<type>;base64,<data>")
    try:
        return base64.b64decode(m["data"], validate=True)
    except (binascii.Error, ValueError) as e:
        raise InvalidImageError(f"the data URL's base64 does not decode: {e}") from e


def _check_pixels(size: tuple[int, int], max_pixels: int) -> None:
    if size[0] * size[1] > max_pixels:
        raise ImageTooLargeError(f"image of {size[0]}x{size[1]} = {size[0] * size[1]} pixels is over the limit of "
                                 f"{max_pixels}")


def _decode(data: bytes, what: str, max_pixels: int) -> Image:
    from PIL import Image as PILImage
    from PIL import UnidentifiedImageError

    try:
        pil = PILImage.open(io.BytesIO(data))
        _check_pixels(pil.size, max_pixels)  # from the header, before the pixels are decoded
        pil.load()
    except ImageTooLargeError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, PILImage.DecompressionBombError) as e:
        raise InvalidImageError(f"{what} is not a readable image: {e}") from e
    return _from_pil(pil)


def _from_pil(pil) -> Image:
    rgb = pil if pil.mode == "RGB" else pil.convert("RGB")
    h = hashlib.sha256(f"{rgb.size[0]}x{rgb.size[1]}:".encode())
    h.update(rgb.tobytes())
    return Image(rgb, h.hexdigest())
