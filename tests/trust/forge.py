"""Forging lies about a real imgtool version held by the hostile test registry (tests/remote/liar.py).

`Forged` reads a version that `imgtool push` wrote into the liar, lets a test change its config,
chunk indexes or packs with the real format code (imgtool.remote.format), and republishes it under
a tag with every digest re-computed, so that only the lie itself is wrong: what imgtool must then
catch is the lie, not a careless digest.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from imgtool.oci.descriptor import Descriptor
from imgtool.remote import format as fmt
from store import canonical
from store import digest as store_digest
from store.disks import DiskManifest
from tests.remote.liar import Liar


@dataclass
class Forged:
    liar: Liar
    repo: str
    manifest: dict[str, Any]

    @classmethod
    def of(cls, liar: Liar, repo: str, tag: str) -> Forged:
        repository = liar.repo(repo)
        _media, data = repository.manifests[repository.tags[tag]]
        return cls(liar, repo, json.loads(data))

    def blob(self, digest: str) -> bytes:
        return self.liar.repo(self.repo).blobs[digest]

    def _layers(self, media_type: str) -> list[dict[str, Any]]:
        return [d for d in self.manifest["layers"] if d["mediaType"] == media_type]

    # -- config -----------------------------------------------------------------------------------------------------

    def config(self) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads(self.blob(self.manifest["config"]["digest"]))
        return loaded

    def set_config(self, body: dict[str, Any]) -> None:
        data = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
        self.manifest["config"] = {**self.manifest["config"], "digest": self.liar.put_blob(self.repo, data),
                                   "size": len(data)}

    # -- indexes and packs ------------------------------------------------------------------------------------------

    def packs(self) -> dict[str, Descriptor]:
        return {d["digest"]: Descriptor(d["mediaType"], d["digest"], d["size"])
                for d in self._layers(fmt.PACK_TYPE)}

    def index(self, number: int = 0) -> fmt.DiskIndex:
        layer = self._layers(fmt.INDEX_TYPE)[number]
        return fmt.decode_index(self.blob(layer["digest"]), self.packs(), "forged index")

    def set_index(self, index: fmt.DiskIndex, number: int = 0) -> None:
        data = fmt.encode_index(index)
        layer = self._layers(fmt.INDEX_TYPE)[number]
        layer["digest"], layer["size"] = self.liar.put_blob(self.repo, data), len(data)

    def replace_pack(self, old: str, data: bytes) -> str:
        """Serve `data` as a pack in place of `old`, re-pointing every index at the new digest."""
        new = self.liar.put_blob(self.repo, data)
        for layer in self._layers(fmt.PACK_TYPE):
            if layer["digest"] == old:
                layer["digest"], layer["size"] = new, len(data)
        for layer in self._layers(fmt.INDEX_TYPE):
            patched = self.blob(layer["digest"]).replace(bytes.fromhex(old[7:]), bytes.fromhex(new[7:]))
            layer["digest"], layer["size"] = self.liar.put_blob(self.repo, patched), len(patched)
        return new

    def publish(self, tag: str) -> str:
        data = json.dumps(self.manifest, sort_keys=True, separators=(",", ":")).encode()
        return self.liar.put_manifest(self.repo, data, tag=tag)


def disk_digest(index: fmt.DiskIndex) -> str:
    """The local store's digest of the disk manifest an index rebuilds (what a version record names)."""
    disk = DiskManifest(index.virtual_size, index.chunk_size, {e.chunk: e.blake3.hex() for e in index.entries})
    return store_digest.of(canonical.dumps(disk.to_json()))
