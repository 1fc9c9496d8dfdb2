"""Every image field is hostile: SSRF, slow servers, malformed URLs, odd files and pixel bombs must
fail only their own product, quickly, with an EncodeError. Real loopback servers, no mocks of httpx."""

from __future__ import annotations

import base64
import io
import os
import resource
import socket
import struct
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import SAMPLE_IMAGES, make_event
from simstream.encoders import safe_fetch
from simstream.encoders.image_source import ImageSource
from simstream.errors import EncodeError

PNG = (SAMPLE_IMAGES / "mug-red-350.png").read_bytes()


class Server:
    """A loopback HTTP server that records every request it receives."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.hits: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                outer.hits.append(self.path)
                outer.route(self)

        self.httpd = ThreadingHTTPServer((host, 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.base = f"http://{host}:{self.port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def count(self, path: str) -> int:
        return sum(h == path for h in self.hits)

    def route(self, h: BaseHTTPRequestHandler) -> None:
        path = h.path
        if path == "/img.png" or (path == "/flaky" and self.count("/flaky") > 2):
            self.reply(h, 200, PNG)
        elif path in ("/flaky", "/down"):
            self.reply(h, 503, b"busy")
        elif path.startswith("/busy-for/"):  # 429 with Retry-After: N the first time, then the image
            if self.count(path) > 1:
                self.reply(h, 200, PNG)
            else:
                self.reply(h, 429, b"slow down", retry_after=path.rsplit("/", 1)[1])
        elif path.startswith("/redirect/"):
            n = int(path.rsplit("/", 1)[1])
            self.reply(h, 302, location=f"/redirect/{n - 1}" if n > 1 else "/img.png")  # n redirects
        elif path.startswith("/to/"):
            self.reply(h, 302, location=path.removeprefix("/to/"))
        elif path == "/trickle":  # headers at once, then one byte every 0.2 s
            h.send_response(200)
            h.send_header("Content-Length", "1000")
            h.end_headers()
            try:
                for _ in range(1000):
                    h.wfile.write(b"x")
                    h.wfile.flush()
                    time.sleep(0.2)
            except OSError:
                pass
        else:
            self.reply(h, 404, b"no")

    @staticmethod
    def reply(h: BaseHTTPRequestHandler, status: int, body: bytes = b"", location: str | None = None,
              retry_after: str | None = None) -> None:
        h.send_response(status)
        if location:
            h.send_header("Location", location)
        if retry_after:
            h.send_header("Retry-After", retry_after)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[Server]:
    s = Server()
    yield s
    s.close()


def lenient(timeout_s: float = 5.0) -> ImageSource:
    """The fetch path against a loopback server: private networks allowed explicitly."""
    return ImageSource(None, timeout_s=timeout_s, allow_private_networks=True)


# --- 1. SSRF -------------------------------------------------------------------------------------

@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::1]", "2130706433", "0.0.0.0", "127.1",
                                  "0x7f000001", "[::ffff:127.0.0.1]"])
def test_loopback_in_any_spelling_is_refused_without_a_request(server, host):
    with pytest.raises(EncodeError, match="non-public") as err:
        ImageSource(None).fetch(f"http://{host}:{server.port}/img.png", None)
    assert not err.value.transient
    assert server.hits == []


@pytest.mark.parametrize("ip", ["10.0.0.1", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1",
                                "0.0.0.0", "224.0.0.1", "240.0.0.1", "255.255.255.255", "::", "fe80::1", "fc00::1",
                                "ff02::1", "::ffff:10.0.0.1", "2002:a00:1::", "64:ff9b::a00:1", "2001:db8::1"])
def test_non_public_addresses(ip):
    import ipaddress

    assert not safe_fetch.is_public(ipaddress.ip_address(ip))


@pytest.mark.parametrize("ip", ["8.8.8.8", "2606:4700:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808"])
def test_public_addresses(ip):
    import ipaddress

    assert safe_fetch.is_public(ipaddress.ip_address(ip))


def test_every_redirect_hop_is_checked(server, monkeypatch):
    """Treat 127.0.0.1 as public and 127.0.0.2 as internal: a redirect to the latter is refused."""
    inner = Server("127.0.0.2")
    try:
        monkeypatch.setattr(safe_fetch, "is_public", lambda ip: str(ip) == "127.0.0.1")
        assert ImageSource(None).fetch(f"{server.base}/img.png", None) == PNG
        with pytest.raises(EncodeError, match="non-public"):
            ImageSource(None).fetch(f"{server.base}/to/{inner.base}/img.png", None)
        assert inner.hits == []
    finally:
        inner.close()


def test_redirects_are_capped_and_validated(server):
    assert lenient().fetch(f"{server.base}/redirect/3", None) == PNG
    with pytest.raises(EncodeError, match="redirects"):
        lenient().fetch(f"{server.base}/redirect/4", None)
    with pytest.raises(EncodeError, match="scheme"):
        lenient().fetch(f"{server.base}/to/file:///etc/passwd", None)
    with pytest.raises(EncodeError, match="credentials"):
        lenient().fetch(f"{server.base}/to/http://u:p@127.0.0.1:{server.port}/img.png", None)
    assert server.count("/img.png") == 1  # only the first, allowed, chain got there


def test_credentials_in_the_url_are_refused(server):
    with pytest.raises(EncodeError, match="credentials"):
        lenient().fetch(f"http://user:secret@127.0.0.1:{server.port}/img.png", None)
    assert server.hits == []


def test_https_keeps_sni_and_hostname_verification(tmp_path):
    """The socket connects to the checked IP, but TLS still names and verifies the URL's host."""
    import shutil
    import ssl
    import subprocess

    if not shutil.which("openssl"):
        pytest.skip("needs the openssl command")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost"],
                   check=True, capture_output=True)
    server = Server()
    names: list[str | None] = []
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    tls.sni_callback = lambda sock, name, ctx: names.append(name)
    server.httpd.socket = tls.wrap_socket(server.httpd.socket, server_side=True)
    trusted = ssl.create_default_context(cafile=str(cert))
    try:
        src = ImageSource(None, allow_private_networks=True, ssl_context=trusted)
        assert src.fetch(f"https://localhost:{server.port}/img.png", None) == PNG
        assert names == ["localhost"]
        with pytest.raises(EncodeError, match="CERTIFICATE_VERIFY_FAILED") as err:  # the cert names localhost only
            src.fetch(f"https://127.0.0.1:{server.port}/img.png", None)
        assert not err.value.transient
    finally:
        server.close()


# --- 2. one deadline for the whole fetch ----------------------------------------------------------

def test_a_trickling_server_is_cut_at_the_deadline(server):
    t0 = time.monotonic()
    with pytest.raises(EncodeError, match="timed out") as err:
        lenient(timeout_s=1.0).fetch(f"{server.base}/trickle", None)
    assert time.monotonic() - t0 < 1.8
    assert err.value.transient


# --- 3. malformed URLs --------------------------------------------------------------------------

@pytest.mark.parametrize("url", [
    "http://[::1", "http://[::1]:99999/x", "http://example.com:0/", "file:/x%00", "file:x%00.png", "http://",
    "http:///x", "https://:443/", "ht!tp://x", "http://" + "a" * 100_000, "http://☃.com/", "http://a\u200b.com/",
    "http://\u0080.com/", "http://exa mple.com/", "http://%00/", "http://[fe80::1%25eth0]/", "http://x/\r\nHost: y",
    "javascript:alert(1)", "data:image/png;base64,AAAA", "//example.com/x.png", "\x00", "[",
])
def test_malformed_urls_are_encode_errors(tmp_path, url):
    with pytest.raises(EncodeError):
        ImageSource(tmp_path, timeout_s=1).fetch(url, None)


# --- 4. retries ---------------------------------------------------------------------------------

def test_transient_failures_are_retried(server):
    assert lenient().fetch(f"{server.base}/flaky", None) == PNG
    assert server.count("/flaky") == 3


def test_retries_give_up_as_transient_and_permanent_failures_are_not_retried(server):
    with pytest.raises(EncodeError, match="transient") as err:
        lenient().fetch(f"{server.base}/down", None)
    assert err.value.transient and server.count("/down") == 3
    with pytest.raises(EncodeError, match="404") as err:
        lenient().fetch(f"{server.base}/missing", None)
    assert not err.value.transient and server.count("/missing") == 1


def test_a_failed_fetch_names_the_url_without_its_signature(server):
    """The error (a dead letter's reason, a log line) shows where, never the signed query or fragment."""
    with pytest.raises(EncodeError, match="404") as err:
        lenient().fetch(f"{server.base}/missing?X-Amz-Signature=SECRET1&sig=SECRET2#token=SECRET3", None)
    assert f"{server.base}/missing?***#***" in str(err.value) and "SECRET" not in str(err.value)


def test_retry_after_is_honoured_within_the_deadline(server):
    started = time.monotonic()
    assert lenient(timeout_s=5.0).fetch(f"{server.base}/busy-for/1", None) == PNG
    assert time.monotonic() - started >= 1.0 and server.count("/busy-for/1") == 2


def test_a_retry_after_past_the_deadline_gives_up_at_once(server):
    started = time.monotonic()
    with pytest.raises(EncodeError, match="429.*gave up after 1 attempt") as err:
        lenient(timeout_s=2.0).fetch(f"{server.base}/busy-for/30", None)
    assert err.value.transient and time.monotonic() - started < 1.0 and server.count("/busy-for/30") == 1


def test_connection_refused_is_transient():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(EncodeError) as err:
        lenient(timeout_s=3).fetch(f"http://127.0.0.1:{port}/x.png", None)
    assert err.value.transient


# --- 5. file: images ----------------------------------------------------------------------------

def test_a_fifo_under_the_root_does_not_block(tmp_path):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    result: list[object] = []

    def run() -> None:
        try:
            result.append(ImageSource(tmp_path).fetch("file:pipe.png", None))
        except Exception as exc:
            result.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(5)
    if thread.is_alive():  # unblock the old behaviour's open() before failing
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    assert not thread.is_alive()
    assert isinstance(result[0], EncodeError) and "regular" in str(result[0])


def test_only_regular_files_under_the_root(tmp_path):
    root = tmp_path / "root"
    (root / "dir").mkdir(parents=True)
    (root / "ok.png").write_bytes(PNG)
    (tmp_path / "outside.png").write_bytes(PNG)
    (root / "inside-link.png").symlink_to(root / "ok.png")
    (root / "escape.png").symlink_to(tmp_path / "outside.png")
    src = ImageSource(root)
    assert src.fetch("file:inside-link.png", None) == PNG
    with pytest.raises(EncodeError, match="outside"):
        src.fetch("file:escape.png", None)
    with pytest.raises(EncodeError, match="regular"):
        src.fetch("file:dir", None)
    with pytest.raises(EncodeError, match="regular"):
        ImageSource(Path("/dev")).fetch("file:null", None)
    with pytest.raises(EncodeError, match="larger"):
        ImageSource(root, max_bytes=100).fetch("file:ok.png", None)


# --- 6. decoding --------------------------------------------------------------------------------

def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def zero_png(width: int, height: int) -> bytes:
    """A valid all-black RGB PNG without compressing width x height x 3 bytes: after a full flush
    deflate restarts, so one compressed block of rows is repeated; adler32 of n zeros is n << 16 | 1."""
    row = width * 3 + 1
    per = max(1, (1 << 22) // row)
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    first = comp.compress(bytes(row * per)) + comp.flush(zlib.Z_FULL_FLUSH)
    again = comp.compress(bytes(row * per)) + comp.flush(zlib.Z_FULL_FLUSH)
    full, rest = divmod(height, per)
    body = [first] + [again] * (full - 1) + [comp.compress(bytes(row * rest)) + comp.flush()]
    adler = ((row * height % 65521) << 16) | 1
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = b"\x78\xda" + b"".join(body) + adler.to_bytes(4, "big")
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def png_of(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def test_zero_png_is_a_valid_image():
    img = Image.open(io.BytesIO(zero_png(700, 500)))
    img.load()
    assert img.size == (700, 500) and img.getextrema() == ((0, 0),) * 3


def test_pixel_bombs_are_refused_from_the_header(encoder):
    bombs = {
        "strip": png_of(Image.new("L", (1, 65_535))),  # Resize(256) would make it 256 x 16.7M
        "square": zero_png(30_000, 30_000),  # 2.6 MB on the wire, 2.7 GB decoded
        "over-cap": zero_png(7_000, 6_000),  # 42 M pixels: over image_max_pixels, under Pillow's own limit
    }
    assert len(bombs["square"]) < 3_000_000
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for name, data in bombs.items():
        t0 = time.monotonic()
        with pytest.raises(EncodeError, match="pixels"):
            encoder.image.preprocess(data)
        assert time.monotonic() - t0 < 1.0, name
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before < 500_000  # KiB
    batch = encoder.encode([make_event("ok", image_url="file:mug-red-350.png"),
                            make_event("bomb", image_b64=base64.b64encode(bombs["square"]).decode())])
    assert [p.product_id for p in batch.products] == ["ok"]
    assert [p.product_id for p, _ in batch.failures] == ["bomb"]


def test_an_animated_gif_encodes_its_first_frame(encoder):
    frames = [Image.new("RGB", (64, 48), colour) for colour in ("red", "blue")]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    gif = buf.getvalue()
    assert Image.open(io.BytesIO(gif)).n_frames == 2
    tensor = encoder.image.preprocess(gif)
    assert tensor.shape == (3, 224, 224)
    assert torch.allclose(tensor, encoder.image.preprocess(png_of(frames[0])), atol=1e-5)
    batch = encoder.encode([make_event("gif", image_b64=base64.b64encode(gif).decode())])
    assert [p.product_id for p in batch.products] == ["gif"] and not batch.failures


def test_any_error_while_loading_an_image_fails_only_its_product(encoder, monkeypatch):
    real = encoder.image.preprocess
    marker = b"\x89PNG-odd"

    def flaky(data: bytes) -> torch.Tensor:
        if data == marker:
            raise RuntimeError("token=s3cr3t")  # not an EncodeError
        return real(data)

    monkeypatch.setattr(encoder.image, "preprocess", flaky)
    batch = encoder.encode([make_event("ok", image_url="file:mug-red-350.png"),
                            make_event("odd", image_b64=base64.b64encode(marker).decode())])
    assert [p.product_id for p in batch.products] == ["ok"]
    [(product, error)] = batch.failures
    assert product.product_id == "odd" and error.field == "image" and "s3cr3t" not in str(error)
    assert np.linalg.norm(batch.vectors[0]) > 0


# --- 7. one pool: decoding happens on the fetch threads ---------------------------------------

def test_images_decode_on_the_fetch_threads_only(encoder, monkeypatch):
    real = encoder.image.preprocess
    threads: list[str] = []

    def spy(data: bytes) -> torch.Tensor:
        threads.append(threading.current_thread().name)
        return real(data)

    monkeypatch.setattr(encoder.image, "preprocess", spy)
    encoder.encode([make_event(str(i), image_url="file:mug-red-350.png") for i in range(3)])
    encoder.image.encode([PNG, PNG])
    assert len(threads) == 5 and all(n.startswith("image-fetch") for n in threads[:3])
    assert not any(t.name.startswith("image-decode") for t in threading.enumerate())
