"""Image content parts of chat requests: data URLs always; local files only under the allow-list directory the
server was started with (`--image-dir`); http(s) never, since the server does not fetch from the network."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlparse

from .errors import APIError


def image_source(part: dict, index: int, image_dir: Path | None):
    """What sgagent.image reads for an {"type": "image_url", "image_url": {"url": ...}} part."""
    ref = part.get("image_url")
    url = ref.get("url") if isinstance(ref, dict) else ref
    where = f"messages[{index}]"
    if not isinstance(url, str) or not url:
        raise APIError(400, f"{where}: an image_url part needs image_url.url", param="messages")
    if url.startswith("data:"):
        return url
    scheme = urlparse(url).scheme
    if scheme == "file":
        if image_dir is None:
            raise APIError(400, f"{where}: file:// images need the server started with an image directory "
                                "(--image-dir)", param="messages", code="image_url_refused")
        path = Path(unquote(urlparse(url).path)).resolve()
        if not path.is_relative_to(image_dir):
            raise APIError(400, f"{where}: {path} is outside the server's image directory", param="messages",
                           code="image_url_refused")
        return path
    raise APIError(400, f"{where}: {scheme or 'this'} image URLs are refused: send the image as a data URL "
                        "(data:image/png;base64,...); the server never fetches from the network",
                   param="messages", code="image_url_refused")
