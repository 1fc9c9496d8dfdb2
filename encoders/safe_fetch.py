"""Outbound connections for untrusted URLs: public addresses only, pinned, within one deadline.

An httpcore network backend, so the check sits exactly where the socket is opened: the host is
resolved once, every address is checked, and the socket connects to a checked address (a DNS
answer that changes afterwards cannot redirect it). TLS still verifies the URL's host name,
because httpcore hands the original host to ``start_tls``. Every connect, TLS handshake, read
and write is clamped to the fetch's overall deadline, so a server that trickles bytes cannot hold
a thread past it.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
import threading
import time
import typing
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout

import httpcore

__all__ = ["NAT64", "Blocked", "is_public", "remaining", "resolve", "DeadlineStream", "GuardedBackend"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
NAT64 = ipaddress.ip_network("64:ff9b::/96")


class Blocked(Exception):
    """The URL's host resolves to an address the policy refuses; never retried."""


def is_public(ip: IPAddress) -> bool:
    """Globally routable unicast. ``is_global`` alone lets multicast through on Python 3.11 and
    judges IPv6 forms that carry an IPv4 address (mapped, 6to4, NAT64) by the wrapper, not the target."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is None and ip in NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFF_FFFF)
        if embedded is not None:
            return is_public(embedded)
    return ip.is_global and not (ip.is_multicast or ip.is_reserved)


def remaining(deadline: float, timeout_exc: type[Exception] = httpcore.ReadTimeout) -> float:
    """Seconds left before the deadline; raises ``timeout_exc`` once it has passed."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise timeout_exc("image fetch deadline exceeded")
    return left


def resolve(host: str, port: int, timeout: float) -> list[IPAddress]:
    """getaddrinfo has no timeout of its own: run it on a daemon thread and wait at most ``timeout``."""
    box: Future[list[typing.Any]] = Future()

    def run() -> None:
        try:
            box.set_result(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        except BaseException as exc:  # handed to the waiting thread
            box.set_exception(exc)

    threading.Thread(target=run, name="image-dns", daemon=True).start()
    try:
        infos = box.result(timeout)
    except FutureTimeout:
        raise httpcore.ConnectTimeout(f"resolving {host} timed out") from None
    except socket.gaierror as exc:
        if exc.errno == socket.EAI_AGAIN:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc.strerror}") from None
        raise Blocked(f"cannot resolve {host}: {exc.strerror}") from None
    return list(dict.fromkeys(ipaddress.ip_address(info[4][0]) for info in infos))


class DeadlineStream(httpcore.NetworkStream):
    """Clamps every socket operation of one connection to the fetch deadline."""

    def __init__(self, inner: httpcore.NetworkStream, deadline: float) -> None:
        self._inner = inner
        self._deadline = deadline

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, self._clamp(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, self._clamp(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        tls = self._inner.start_tls(ssl_context, server_hostname, self._clamp(timeout, httpcore.ConnectTimeout))
        return DeadlineStream(tls, self._deadline)

    def get_extra_info(self, info: str) -> typing.Any:
        return self._inner.get_extra_info(info)

    def _clamp(self, timeout: float | None, exc: type[Exception]) -> float:
        left = remaining(self._deadline, exc)
        return left if timeout is None else min(timeout, left)


class GuardedBackend(httpcore.NetworkBackend):
    """Resolves, checks every address (all must pass), then connects to a checked address."""

    def __init__(self, deadline: float, *, allow_private: bool = False) -> None:
        self.deadline = deadline
        self.allow_private = allow_private
        self._sync = httpcore.SyncBackend()

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                    socket_options: typing.Iterable[typing.Any] | None = None) -> httpcore.NetworkStream:
        addresses = resolve(host, port, remaining(self.deadline, httpcore.ConnectTimeout))
        refused = [ip for ip in addresses if not is_public(ip)]
        if refused and not self.allow_private:
            raise Blocked(f"{host} resolves to a non-public address ({refused[0]})")
        error: Exception = Blocked(f"{host} has no address")
        for ip in addresses:
            try:
                stream = self._sync.connect_tcp(str(ip), port, remaining(self.deadline, httpcore.ConnectTimeout),
                                                local_address, socket_options)
                return DeadlineStream(stream, self.deadline)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
        raise error

    def connect_unix_socket(self, path: str, timeout: float | None = None,
                            socket_options: typing.Iterable[typing.Any] | None = None) -> httpcore.NetworkStream:
        raise Blocked("unix sockets are not fetched")

    def sleep(self, seconds: float) -> None:
        time.sleep(min(seconds, max(0.0, self.deadline - time.monotonic())))
