"""Fetch product image bytes from image_b64, file:// under a root, or http(s) with caps."""

from __future__ import annotations

import base64
import binascii
from pathlib import Path
from urllib.parse import unquote, urlparse

import httpx

from simstream.errors import EncodeError


class ImageSource:
    """Resolves the image fields of an event into raw bytes; every failure is an EncodeError."""

    def __init__(self, root: Path | None = None, *, timeout_s: float = 5.0, max_bytes: int = 10_000_000) -> None:
        self.root = root.resolve() if root else None
        self.timeout_s = timeout_s
        self.max_bytes = max_bytes

    def fetch(self, image_url: str | None, image_b64: str | None) -> bytes | None:
        """Returns the bytes, or None when the product has no image."""
        if image_b64:
            try:
                data = base64.b64decode(image_b64, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise EncodeError("image", f"image_b64 is not base64: {exc}") from None
            return self._capped(data)
        if not image_url:
            return None
        url = urlparse(image_url)
        if url.scheme == "file":
            # file:///abs/path (must lie under the root) or file:relative/path (taken from the root)
            return self._read_file(Path(unquote(url.netloc + url.path)))
        if url.scheme in ("http", "https"):
            return self._download(image_url)
        raise EncodeError("image", f"unsupported image_url scheme {url.scheme!r}")

    def _capped(self, data: bytes) -> bytes:
        if len(data) > self.max_bytes:
            raise EncodeError("image", f"image is {len(data)} bytes, cap is {self.max_bytes}")
        return data

    def _read_file(self, path: Path) -> bytes:
        if self.root is None:
            raise EncodeError("image", "file:// images need SIMSTREAM_IMAGE_ROOT")
        resolved = (path if path.is_absolute() else self.root / path).resolve()
        if not resolved.is_relative_to(self.root):
            raise EncodeError("image", f"{path} is outside the image root")
        try:
            if resolved.stat().st_size > self.max_bytes:
                raise EncodeError("image", f"{path} is larger than {self.max_bytes} bytes")
            return resolved.read_bytes()
        except OSError as exc:
            raise EncodeError("image", f"cannot read {path}: {exc.strerror}") from None

    def _download(self, url: str) -> bytes:
        try:
            with httpx.stream("GET", url, timeout=self.timeout_s, follow_redirects=True) as resp:
                resp.raise_for_status()
                chunks, size = [], 0
                for chunk in resp.iter_bytes():
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise EncodeError("image", f"{url} exceeds {self.max_bytes} bytes")
                    chunks.append(chunk)
                return b"".join(chunks)
        except httpx.HTTPError as exc:
            raise EncodeError("image", f"cannot fetch {url}: {exc}") from None
