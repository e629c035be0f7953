"""The error a remote adds to imgtool's categories: it could not be reached or kept failing."""

from __future__ import annotations

import httpx

from imgtool.errors import ImgtoolError


class RemoteFailed(ImgtoolError):
    """The registry could not be reached, or kept failing after bounded retries."""

    exit_code = 12
    category = "remote-failed"


class TransferBroken(RemoteFailed):
    """A body broke off mid-transfer (reset, closed): the request may succeed if sent again."""


# What a failed connection means, in words (the exception class names httpx uses mean nothing to people).
_TRANSPORT_WORDS = (
    (httpx.ConnectTimeout, "no answer to the connection attempt (timed out)"),
    (httpx.ReadTimeout, "no answer in time (read timed out)"),
    (httpx.WriteTimeout, "could not send in time (write timed out)"),
    (httpx.PoolTimeout, "no free connection in time"),
    (httpx.RemoteProtocolError, "the server closed the connection or answered something that is not HTTP"),
    (httpx.ProxyError, "the proxy refused the connection"),
    (httpx.ReadError, "the connection broke while reading"),
    (httpx.WriteError, "the connection broke while sending"),
)


def transport_words(exc: BaseException) -> str:
    """Why a request could not be made, for people: refused, unknown host, TLS, timed out, broken."""
    detail = str(exc).lower()
    if isinstance(exc, httpx.ConnectError):
        if "certificate" in detail or "ssl" in detail or "tls" in detail:
            return "its TLS certificate is not trusted here (or TLS failed)"
        if "name or service not known" in detail or "nodename nor servname" in detail or \
                "temporary failure in name resolution" in detail or "no address" in detail:
            return "the host name does not resolve"
        if "refused" in detail:
            return "the connection was refused (nothing listens there)"
        if "unreachable" in detail:
            return "the network or host is unreachable"
        return "could not connect"
    for kind, words in _TRANSPORT_WORDS:
        if isinstance(exc, kind):
            return words
    return "the connection failed"
