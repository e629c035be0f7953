"""The remote protocol over OCI image layout folders, for air-gapped moves.

A layout remote `oci-layout:/ROOT` holds one OCI image layout per repository, at ROOT/<repository>/
(`oci-layout`, `index.json`, `blobs/sha256/<hex>`), so `skopeo copy oci:ROOT/team/base:1.0.0 docker://…`
carries a version on, and a layout skopeo wrote is pulled the same way. Tags are the
`org.opencontainers.image.ref.name` annotations of index.json. Blobs are written to a temporary name,
checked against their digest, fsynced and renamed; index.json is replaced atomically under a lock
after the blobs it names, so a layout never names a missing blob.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from imgtool import strict
from imgtool.errors import Corrupt, NotFound
from imgtool.oci.descriptor import check_digest, sha256_of
from imgtool.oci.media import OCI_INDEX, REF_NAME
from imgtool.oci.target import MAX_MANIFEST, READ_SIZE, Fetched, Stats, verified_stream
from store import atomic
from store.lock import file_lock

LAYOUT_FILE = b'{"imageLayoutVersion":"1.0.0"}'


class LayoutTarget:
    def __init__(self, root: Path, *, label: str) -> None:
        self.root = root
        self.label = label
        self.stats = Stats()

    def _repo(self, repo: str) -> Path:
        parts = repo.split("/")
        if any(p in ("", ".", "..") for p in parts):
            raise Corrupt(f"repository {repo!r} cannot be a folder", hint="this is a bug")
        return self.root.joinpath(*parts)

    def _blob(self, repo: str, digest: str) -> Path:
        check_digest(digest, "a blob reference")
        return self._repo(repo) / "blobs" / "sha256" / digest.removeprefix("sha256:")

    def _index(self, repo: str) -> dict[str, Any]:
        path = self._repo(repo) / "index.json"
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}
        body = strict.load_object(data, what=str(path), limit=MAX_MANIFEST * 4)
        if not isinstance(body.get("manifests"), list):
            raise Corrupt(f"{path} is not an OCI index", hint="the layout folder is damaged")
        return body

    def has_repository(self, repo: str) -> bool:
        """Whether `repo` is a layout in the folder; NotFound when the folder itself is missing (an unmounted
        drive must not look like an empty remote)."""
        if not self.root.is_dir():
            raise NotFound(f"{self.label}: the layout folder {self.root} does not exist",
                           hint=f"mount or create it, or check the remote: imgtool remote show {self.label}")
        return (self._repo(repo) / "index.json").is_file()

    def tags(self, repo: str) -> list[str]:
        found = []
        for entry in self._index(repo)["manifests"]:
            name = (entry.get("annotations") or {}).get(REF_NAME) if isinstance(entry, dict) else None
            if isinstance(name, str):
                found.append(name)
        return found

    def repositories(self) -> list[str]:
        """The repositories of the folder: each gallery/definition folder with an index.json."""
        return sorted(f"{p.parent.parent.name}/{p.parent.name}" for p in self.root.glob("*/*/index.json"))

    def _resolve(self, repo: str, ref: str) -> str:
        if ref.startswith("sha256:"):
            return check_digest(ref, "a manifest reference")
        for entry in self._index(repo)["manifests"]:
            if isinstance(entry, dict) and (entry.get("annotations") or {}).get(REF_NAME) == ref:
                return check_digest(entry.get("digest"), f"{repo}:{ref} in index.json")
        raise NotFound(f"{self.label} has no {repo}:{ref}", hint=f"look at {self._repo(repo)}/index.json")

    def get_manifest(self, repo: str, ref: str) -> Fetched:
        digest = self._resolve(repo, ref)
        path = self._blob(repo, digest)
        try:
            size = path.stat().st_size
            if size > MAX_MANIFEST:
                raise Corrupt(f"manifest {repo}:{ref} is above the 4 MiB limit", hint="the layout is damaged")
            data = path.read_bytes()
        except FileNotFoundError:
            raise NotFound(f"{self.label} has no manifest {digest[:19]}… in {repo}",
                           hint="the layout folder is incomplete") from None
        self.stats.add(requests=1, received=len(data))
        if sha256_of(data) != digest:
            raise Corrupt(f"manifest {repo}:{ref} in {self.label} does not match its digest",
                          hint="the layout folder is damaged")
        media_type = json.loads(data).get("mediaType", "") if data.startswith(b"{") else ""
        return Fetched(data, digest, str(media_type))

    def put_manifest(self, repo: str, ref: str, data: bytes, media_type: str) -> str:
        digest = sha256_of(data)
        self.put_blob(repo, digest, data)
        if ref.startswith("sha256:"):
            return digest
        with file_lock(self._repo(repo) / ".index.lock"):
            index = self._index(repo)
            kept = [e for e in index["manifests"]
                    if not (isinstance(e, dict) and (e.get("annotations") or {}).get(REF_NAME) == ref)]
            kept.append({"mediaType": media_type, "digest": digest, "size": len(data),
                         "annotations": {REF_NAME: ref}})
            index["manifests"] = kept
            atomic.replace(self._repo(repo) / "index.json", json.dumps(index, indent=1).encode(), mode=0o644)
        self.stats.add(requests=1, sent=len(data))
        return digest

    def blob_size(self, repo: str, digest: str) -> int | None:
        try:
            return self._blob(repo, digest).stat().st_size
        except FileNotFoundError:
            return None

    def get_blob(self, repo: str, digest: str, *, size: int) -> Iterator[bytes]:
        return verified_stream(self._pieces(repo, digest), digest, size, f"blob {digest[:19]}… of {repo}")

    def _pieces(self, repo: str, digest: str) -> Iterator[bytes]:
        try:
            handle = self._blob(repo, digest).open("rb")
        except FileNotFoundError:
            raise NotFound(f"{self.label} has no blob {digest[:19]}… in {repo}",
                           hint="the layout folder is incomplete") from None
        self.stats.add(requests=1)
        with handle:
            while piece := handle.read(READ_SIZE):
                self.stats.add(received=len(piece))
                yield piece

    def get_range(self, repo: str, digest: str, start: int, length: int) -> bytes:
        try:
            fd = os.open(self._blob(repo, digest), os.O_RDONLY)
        except FileNotFoundError:
            raise NotFound(f"{self.label} has no blob {digest[:19]}… in {repo}",
                           hint="the layout folder is incomplete") from None
        try:
            data = os.pread(fd, length, start)
        finally:
            os.close(fd)
        self.stats.add(requests=1, received=len(data))
        if len(data) != length:
            raise Corrupt(f"blob {digest[:19]}… in {self.label} is truncated", hint="the layout folder is damaged")
        return data

    def put_blob(self, repo: str, digest: str, data: bytes) -> None:
        if sha256_of(data) != digest:
            raise Corrupt(f"refusing to write blob {digest[:19]}…: the bytes do not match", hint="this is a bug")
        self._ensure(repo)
        path = self._blob(repo, digest)
        if path.exists():
            return
        atomic.write_once(path, [data], mode=0o444)
        self.stats.add(requests=1, sent=len(data))
        with self.stats.lock:
            self.stats.blobs_uploaded += 1

    def mount_blob(self, repo: str, digest: str, source: str) -> bool:
        self._ensure(repo)
        target = self._blob(repo, digest)
        with contextlib.suppress(FileExistsError):
            try:
                os.link(self._blob(source, digest), target)
            except OSError:
                return False
        with self.stats.lock:
            self.stats.blobs_mounted += 1
        return True

    def _ensure(self, repo: str) -> None:
        base = self._repo(repo)
        (base / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        marker = base / "oci-layout"
        if not marker.exists():
            atomic.create(marker, LAYOUT_FILE, mode=0o644)

    def supports_referrers_api(self, repo: str) -> bool:
        return False

    def referrers_api(self, repo: str, digest: str) -> bytes | None:
        return None  # a layout has the fallback tag only

    def close(self) -> None:
        return None  # nothing held open between calls
