"""What went wrong on the network, in words, and whether retrying can fix it.

A name that does not resolve, a refused connection or a TLS failure will not go away in the next 40
seconds: they fail at once, naming the host and the cause. Resets, timeouts and dropped connections are
worth a retry, as are 408, 429 and 5xx answers (the callers' RETRYABLE_STATUS).
"""

from __future__ import annotations

import random
import socket
import ssl
import urllib.parse
from dataclasses import dataclass

CONNECT_TIMEOUT = 10.0  # seconds to open a connection; a slow transfer has its own, longer read timeout


@dataclass(frozen=True)
class Failure:
    cause: str  # "could not resolve storage.googleapis.com", "connection refused by 127.0.0.1:9"
    retryable: bool


def _chain(exc: BaseException) -> list[BaseException]:
    """The exception and everything it wraps: __cause__, __context__, urllib3's `reason`, and exceptions in
    args (requests wraps urllib3's MaxRetryError, which wraps NewConnectionError, which wraps gaierror)."""
    seen: list[BaseException] = []
    todo = [exc]
    while todo and len(seen) < 32:
        e = todo.pop()
        if any(e is s for s in seen):
            continue
        seen.append(e)
        for nxt in (e.__cause__, e.__context__, getattr(e, "reason", None), *getattr(e, "args", ())):
            if isinstance(nxt, BaseException):
                todo.append(nxt)
    return seen


def describe(exc: BaseException, url: str) -> Failure:
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or "?"
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        port = 0
    chain = _chain(exc)
    text = " ".join(str(e) for e in chain)
    proxy = next((e for e in chain if type(e).__name__ == "ProxyError"), None)
    if proxy is not None:
        return Failure(f"the proxy for {host}:{port} failed ({_first_line(proxy)})", False)
    if "EOF occurred in violation of protocol" in text or "UNEXPECTED_EOF" in text:
        return Failure(f"the TLS connection to {host}:{port} was cut", True)
    dns = next((e for e in chain if isinstance(e, socket.gaierror)), None)
    if dns is not None or "Name or service not known" in text or "name resolution" in text.lower():
        why = dns.strerror if dns is not None and dns.strerror else "the name is not known"
        return Failure(f"could not resolve {host} ({why})", False)
    if any(isinstance(e, ConnectionRefusedError) for e in chain) or "Connection refused" in text:
        return Failure(f"connection refused by {host}:{port} (nothing listens there)", False)
    tls = next((e for e in chain if isinstance(e, ssl.SSLError)), None)
    if tls is not None or "CERTIFICATE_VERIFY_FAILED" in text:
        return Failure(f"TLS with {host}:{port} failed ({_first_line(tls or exc)})", False)
    down = next((e for e in chain if isinstance(e, OSError) and e.errno in (101, 113)), None)
    if isinstance(down, OSError):  # network or host unreachable
        return Failure(f"{host}:{port} is unreachable ({down.strerror})", False)
    if "timed out" in text.lower() or "timeout" in type(exc).__name__.lower():
        return Failure(f"{host}:{port} did not answer in time", True)
    if "reset" in text.lower() or "aborted" in text.lower() or "RemoteDisconnected" in text:
        return Failure(f"the connection to {host}:{port} was dropped", True)
    return Failure(f"{type(exc).__name__} talking to {host}:{port}: {_first_line(exc)}", True)


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:200] if lines else type(exc).__name__


class _Retryable:
    """`status in RETRYABLE_STATUS`: 408, 429 and every 5xx but 501 (what GCS documents as retryable)."""

    def __contains__(self, status: object) -> bool:
        return isinstance(status, int) and (status in (408, 429) or (500 <= status <= 599 and status != 501))


RETRYABLE_STATUS = _Retryable()


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter: attempt n waits up to min(maximum, initial * multiplier**n)."""

    attempts: int = 8
    initial: float = 0.5
    maximum: float = 20.0
    multiplier: float = 2.0

    def delay(self, attempt: int) -> float:
        return random.uniform(0.5, 1.0) * min(self.maximum, self.initial * self.multiplier**attempt)
