"""The guarded image route's reader: ``file:`` images from the image root only.

The path comes from the stored product (never from the request), and is read by the encoders'
``ImageSource`` with the worker's own guards (under SIMSTREAM_IMAGE_ROOT after resolving
symlinks, regular files only, byte cap). Only known image formats are answered.
"""

from __future__ import annotations

from simstream.encoders.image_source import ImageSource
from simstream.settings import Settings

__all__ = ["media_type", "LocalImages"]

_MAGIC = ((b"\x89PNG\r\n\x1a\n", "image/png"), (b"\xff\xd8\xff", "image/jpeg"), (b"GIF87a", "image/gif"),
          (b"GIF89a", "image/gif"))


def media_type(data: bytes) -> str | None:
    """The image type from its first bytes (PNG, JPEG, GIF, WebP); None for anything else."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return next((t for magic, t in _MAGIC if data.startswith(magic)), None)


class LocalImages:
    def __init__(self, settings: Settings) -> None:
        self.source = ImageSource(settings.image_root.resolve() if settings.image_root else None,
                                  max_bytes=settings.image_max_bytes)

    def read(self, image_url: str) -> tuple[bytes, str]:
        """Bytes and media type of a ``file:`` image; EncodeError / ValueError when it may not be served."""
        if not image_url.startswith("file:"):
            raise ValueError("only file: images are served here; load http(s) images from their URL")
        data = self.source.fetch(image_url, None)
        kind = media_type(data or b"")
        if data is None or kind is None:
            raise ValueError("not an image this route serves")
        return data, kind
