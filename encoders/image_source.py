"""Fetch product image bytes from image_b64, file:// under a root, or http(s) with caps.

Every URL in an event is hostile: a malformed one fails only its product, http(s) fetches reach
only public addresses (encoders/safe_fetch.py), the timeout is a deadline for the whole fetch
(redirects and retries included), and file: images are regular files under the root only.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import os
import re
import ssl
import stat
import time
from pathlib import Path
from urllib.parse import unquote, urlsplit

import httpcore
import httpx

from email.utils import parsedate_to_datetime

from simstream import retry
from simstream.encoders.safe_fetch import Blocked, GuardedBackend
from simstream.errors import EncodeError
from simstream.redact import redact

__all__ = ["MAX_URL_CHARS", "MAX_REDIRECTS", "REDIRECT_STATUSES", "TRANSIENT_STATUSES", "ImageSource"]

MAX_URL_CHARS = 8192
MAX_REDIRECTS = 3
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
TRANSIENT_STATUSES = frozenset({429, 500, 502, 503, 504})
_HOST_NAME = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*\.?")


class _Failure(Exception):
    """One failed fetch attempt; ``transient`` ones are retried while the deadline allows."""

    def __init__(self, reason: str, *, transient: bool = False, retry_after_s: float | None = None) -> None:
        super().__init__(reason)
        self.transient = transient
        self.retry_after_s = retry_after_s  # the server's Retry-After: the retry policy waits at least this


class ImageSource:
    """Resolves the image fields of an event into raw bytes; every failure is an EncodeError."""

    def __init__(self, root: Path | None = None, *, timeout_s: float = 5.0, max_bytes: int = 10_000_000,
                 allow_private_networks: bool = False, ssl_context: ssl.SSLContext | None = None) -> None:
        self.root = root.resolve() if root else None
        self.timeout_s = timeout_s
        self.max_bytes = max_bytes
        self.allow_private_networks = allow_private_networks
        # once: loading the CA bundle per fetch is slow
        self._ssl = ssl_context or httpx.create_ssl_context()

    def fetch(self, image_url: str | None, image_b64: str | None) -> bytes | None:
        """Returns the bytes, or None when the product has no image. Raises only EncodeError."""
        try:
            return self._fetch(image_url, image_b64)
        except EncodeError:
            raise
        except Exception as exc:  # a parser's surprise must fail this product, not the batch
            raise EncodeError("image", f"invalid image_url ({type(exc).__name__})") from None

    def _fetch(self, image_url: str | None, image_b64: str | None) -> bytes | None:
        if image_b64:
            if len(image_b64) > self.max_bytes * 4 // 3 + 4:  # refuse before decoding
                raise EncodeError("image", f"image_b64 is over the cap of {self.max_bytes} bytes")
            try:
                data = base64.b64decode(image_b64, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise EncodeError("image", f"image_b64 is not base64: {exc}") from None
            return self._capped(data)
        if not image_url:
            return None
        if len(image_url) > MAX_URL_CHARS:
            raise EncodeError("image", f"image_url is longer than {MAX_URL_CHARS} characters")
        try:
            url = urlsplit(image_url)
        except ValueError as exc:
            raise EncodeError("image", f"invalid image_url: {str(exc)[:200]}") from None
        if url.scheme == "file":
            # file:///abs/path (must lie under the root) or file:relative/path (taken from the root)
            return self._read_file(unquote(url.netloc + url.path))
        if url.scheme in ("http", "https"):
            return self._download(image_url)
        raise EncodeError("image", f"unsupported image_url scheme {url.scheme[:20]!r}")

    def _capped(self, data: bytes) -> bytes:
        if len(data) > self.max_bytes:
            raise EncodeError("image", f"image is {len(data)} bytes, cap is {self.max_bytes}")
        return data

    # --- file: ------------------------------------------------------------------------------

    def _read_file(self, name: str) -> bytes:
        """Regular files under the root only: a FIFO or device would block or never end."""
        if self.root is None:
            raise EncodeError("image", "file:// images need SIMSTREAM_IMAGE_ROOT")
        if "\x00" in name:
            raise EncodeError("image", "file path contains a NUL byte")
        path = Path(name)
        resolved = (path if path.is_absolute() else self.root / path).resolve()  # follows symlinks
        if not resolved.is_relative_to(self.root):
            raise EncodeError("image", f"{name[:200]} is outside the image root")
        try:
            if not stat.S_ISREG(os.stat(resolved).st_mode):
                raise EncodeError("image", f"{name[:200]} is not a regular file")
            # O_NONBLOCK: if a FIFO is swapped in after the check, open() still returns at once
            fd = os.open(resolved, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
            with os.fdopen(fd, "rb") as fh:
                info = os.fstat(fh.fileno())
                if not stat.S_ISREG(info.st_mode):
                    raise EncodeError("image", f"{name[:200]} is not a regular file")
                if info.st_size > self.max_bytes:
                    raise EncodeError("image", f"{name[:200]} is larger than {self.max_bytes} bytes")
                return self._capped(fh.read(self.max_bytes + 1))
        except OSError as exc:
            raise EncodeError("image", f"cannot read {name[:200]}: {exc.strerror}") from None

    # --- http(s) ----------------------------------------------------------------------------

    def _download(self, raw_url: str) -> bytes:
        """Transient failures (429, 5xx, timeouts, resets) retried under ``retry.IMAGE_FETCH``, which
        honours ``Retry-After``, all within one deadline of ``timeout_s``."""
        deadline = time.monotonic() + self.timeout_s
        url = _checked_url(raw_url)
        attempts = [1]
        try:
            return retry.call(retry.IMAGE_FETCH.with_deadline(self.timeout_s), "image_fetch", self._attempt, url,
                              deadline, retry_on=lambda exc: isinstance(exc, _Failure) and exc.transient,
                              on_retry=lambda exc: attempts.append(1))
        except _Failure as exc:
            note = f" (transient, gave up after {len(attempts)} attempt(s))" if exc.transient else ""
            raise EncodeError("image", f"cannot fetch {_shown(url)}: {exc}{note}", transient=exc.transient) from None

    def _attempt(self, url: httpx.URL, deadline: float) -> bytes:
        """One GET, following up to MAX_REDIRECTS redirects; every hop connects through the guard."""
        backend = GuardedBackend(deadline, allow_private=self.allow_private_networks)
        try:
            with httpcore.ConnectionPool(ssl_context=self._ssl, network_backend=backend) as pool:
                for _ in range(MAX_REDIRECTS + 1):
                    left = max(0.001, deadline - time.monotonic())
                    target = httpcore.URL(scheme=url.raw_scheme, host=url.raw_host, port=url.port, target=url.raw_path)
                    headers = [(b"Host", url.netloc), (b"Accept", b"image/*"), (b"Accept-Encoding", b"identity"),
                               (b"User-Agent", b"simstream-image-fetch")]
                    timeouts = {"connect": left, "read": left, "write": left, "pool": left}
                    with pool.stream(b"GET", target, headers=headers, extensions={"timeout": timeouts}) as resp:
                        if resp.status in REDIRECT_STATUSES:
                            location = _header(resp, b"location")
                            if not location:
                                raise _Failure(f"HTTP {resp.status} without a Location")
                            url = _checked_url(str(url.join(location.decode("latin-1"))))
                            continue
                        if resp.status in TRANSIENT_STATUSES:
                            raise _Failure(f"HTTP {resp.status}", transient=True,
                                           retry_after_s=_retry_after(_header(resp, b"retry-after")))
                        if not 200 <= resp.status < 300:
                            raise _Failure(f"HTTP {resp.status}")
                        return self._body(resp)
                raise _Failure(f"more than {MAX_REDIRECTS} redirects")
        except EncodeError as exc:  # a redirect to a bad URL
            raise _Failure(str(exc).removeprefix("image: ")) from None
        except Blocked as exc:
            raise _Failure(str(exc)) from None
        except httpcore.TimeoutException:
            raise _Failure(f"timed out (deadline {self.timeout_s:g} s)", transient=True) from None
        except (httpcore.NetworkError, httpcore.RemoteProtocolError) as exc:
            cert = isinstance(exc.__context__, ssl.SSLCertVerificationError)
            raise _Failure(f"{type(exc).__name__}: {str(exc)[:200]}", transient=not cert) from None
        except httpcore.ProtocolError as exc:
            raise _Failure(f"{type(exc).__name__}: {str(exc)[:200]}") from None

    def _body(self, resp: httpcore.Response) -> bytes:
        length = _header(resp, b"content-length")
        if length and length.isdigit() and int(length) > self.max_bytes:
            raise _Failure(f"response exceeds {self.max_bytes} bytes")
        chunks, size = [], 0
        for chunk in resp.iter_stream():
            size += len(chunk)
            if size > self.max_bytes:
                raise _Failure(f"response exceeds {self.max_bytes} bytes")
            chunks.append(chunk)
        return b"".join(chunks)


def _checked_url(raw: str) -> httpx.URL:
    """Parses an http(s) URL and refuses what the fetch must never send: other schemes (a redirect
    to file:), credentials, and hosts that are neither a DNS name nor an IP literal."""
    try:
        url = httpx.URL(raw)
    except (httpx.InvalidURL, UnicodeError, ValueError) as exc:
        raise EncodeError("image", f"invalid image_url: {str(exc)[:200]}") from None
    if url.scheme not in ("http", "https"):
        raise EncodeError("image", f"unsupported image_url scheme {url.scheme[:20]!r}")
    if url.userinfo:
        raise EncodeError("image", "image_url must not carry credentials (user:password@)")
    if url.port is not None and not 0 < url.port < 65536:
        raise EncodeError("image", f"invalid port {url.port} in image_url")
    host = url.host
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not (0 < len(host) <= 253 and _HOST_NAME.fullmatch(host)):
            raise EncodeError("image", f"invalid host in image_url: {host[:100]!r}") from None
    return url


def _header(resp: httpcore.Response, name: bytes) -> bytes | None:
    return next((v for k, v in resp.headers if k.lower() == name), None)


def _retry_after(value: bytes | None) -> float | None:
    """A Retry-After header in seconds: delta-seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    text = value.decode("latin-1").strip()
    if text.isdigit():
        return float(text)
    try:
        return max(0.0, parsedate_to_datetime(text).timestamp() - time.time())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def _shown(url: httpx.URL) -> str:
    """The URL as errors show it: redacted (signed URLs carry their secret in the query), and short."""
    return redact(str(url))[:300]
