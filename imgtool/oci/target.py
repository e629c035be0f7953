"""What imgtool needs from an OCI store, whatever it is: a registry or an OCI image layout folder.

A repository holds manifests (by tag or digest) and blobs (by sha256 digest). Both kinds of remote
verify what they hand back: a manifest against its digest, a whole blob against its sha256 while it
streams. A range of a blob cannot be checked that way; its user checks what it holds (BLAKE3 of
every chunk).
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

from imgtool.errors import Corrupt

MAX_MANIFEST = 4 << 20  # distribution 2.8 and ACR accept up to 4 MiB; refuse larger from anyone
READ_SIZE = 1 << 20


@dataclass
class Stats:
    """What moved: requests made and bytes sent and received (bodies only)."""

    requests: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    blobs_uploaded: int = 0
    blobs_mounted: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, *, requests: int = 0, sent: int = 0, received: int = 0) -> None:
        with self.lock:
            self.requests += requests
            self.bytes_sent += sent
            self.bytes_received += received

    def to_json(self) -> dict[str, int]:
        return {"requests": self.requests, "bytes_sent": self.bytes_sent, "bytes_received": self.bytes_received,
                "blobs_uploaded": self.blobs_uploaded, "blobs_mounted": self.blobs_mounted}


@dataclass(frozen=True)
class Fetched:
    data: bytes
    digest: str
    media_type: str


class Target(Protocol):
    """One remote's storage (imgtool.remote implements it twice: RegistryClient, LayoutTarget).

    `repo` is a repository name already mapped by imgtool.remote.format. Referrers are not a method:
    imgtool.oci.referrers builds them on `referrers_api` and the fallback tag, once for both kinds.
    """

    label: str
    stats: Stats

    def tags(self, repo: str) -> list[str]: ...

    def has_repository(self, repo: str) -> bool:
        """Whether `repo` exists there; raises when the remote itself is missing or is not a registry."""
        ...

    def get_manifest(self, repo: str, ref: str) -> Fetched:
        """By tag or digest; NotFound when absent; Corrupt when a digest does not match."""
        ...

    def put_manifest(self, repo: str, ref: str, data: bytes, media_type: str) -> str: ...

    def blob_size(self, repo: str, digest: str) -> int | None: ...

    def get_blob(self, repo: str, digest: str, *, size: int) -> Iterator[bytes]:
        """The blob's bytes in pieces; raises Corrupt (after the last piece at the latest) unless they are
        exactly `size` bytes with that sha256."""
        ...

    def get_range(self, repo: str, digest: str, start: int, length: int) -> bytes: ...

    def put_blob(self, repo: str, digest: str, data: bytes) -> None: ...

    def mount_blob(self, repo: str, digest: str, source: str) -> bool:
        """Link a blob of repository `source` into `repo` without moving bytes; False if not done."""
        ...

    def supports_referrers_api(self, repo: str) -> bool:
        """Whether the registry answers `GET /v2/<repo>/referrers/<digest>` (probed once per repository)."""
        ...

    def referrers_api(self, repo: str, digest: str) -> bytes | None:
        """The referrers API's index of `digest` (at most MAX_MANIFEST bytes), or None without the API."""
        ...

    def close(self) -> None: ...


def verified_stream(pieces: Iterator[bytes], digest: str, size: int, what: str) -> Iterator[bytes]:
    """Pass pieces through, refusing more than `size` bytes and checking the sha256 at the end."""
    hasher = hashlib.sha256()
    seen = 0
    for piece in pieces:
        seen += len(piece)
        if seen > size:
            raise Corrupt(f"{what} is longer than its {size} bytes", hint="the remote serves wrong data")
        hasher.update(piece)
        yield piece
    if seen != size or "sha256:" + hasher.hexdigest() != digest:
        raise Corrupt(f"{what} does not match its digest {digest[:19]}… ({seen} of {size} bytes)",
                      hint="the remote serves wrong or truncated data; try again, or ask its admin")


def read_all(pieces: Iterator[bytes]) -> bytes:
    return b"".join(pieces)
