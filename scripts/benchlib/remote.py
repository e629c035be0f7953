"""Sharing through a registry: imgtool push/pull against `skopeo copy` of the whole qcow2.

On the benchmark disk (v1, then v2 with the profile's share of its data rewritten), against a local
distribution registry (Debian's `docker-registry`, the one the tests start) on loopback:
  imgtool: push v1, push v2, pull v2 into a store that holds v1, pull v2 into an empty store;
  peer:    what users do today (podman machine): the whole v2 qcow2, zstd-compressed, as a single-layer
           artifact, `skopeo copy` to the registry and back.
Counted the same way for both, from the registry's side: requests = lines of its access log, bytes
received by the client = the response sizes it logs, bytes sent = the growth of its blob storage.
Wall time is one run each (the machine is shared; these are short runs, not medians).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchlib.disk import Disks
from benchlib.measure import log, sh, tree_size
from benchlib.peers import IMGTOOL

REPO = Path(__file__).resolve().parents[2]
ACCESS = re.compile(r'"(?:GET|HEAD|PUT|POST|PATCH|DELETE) [^"]*" (\d{3}) (\d+|-)')
NEEDS = ("docker-registry", "skopeo", "zstd")


def _blob_bytes(root: Path) -> int:
    return tree_size([root / "data" / "docker" / "registry" / "v2" / "blobs"])[0]


class Counter:
    """Requests and bytes as the registry saw them, between two marks."""

    def __init__(self, registry_root: Path) -> None:
        self.root = registry_root
        self.log = registry_root / "registry.log"

    def mark(self) -> tuple[int, int]:
        return (self.log.stat().st_size if self.log.exists() else 0), _blob_bytes(self.root)

    def since(self, mark: tuple[int, int]) -> dict[str, int]:
        time.sleep(0.2)  # the registry writes its access log line after the response
        with self.log.open("rb") as handle:
            handle.seek(mark[0])
            lines = handle.read().decode(errors="replace").splitlines()
        hits = [m for m in (ACCESS.search(line) for line in lines) if m]
        received = sum(int(m.group(2)) for m in hits if m.group(2) != "-")
        return {"requests": len(hits), "received": received, "sent": max(0, _blob_bytes(self.root) - mark[1])}


def _run(argv: list[str], env: dict[str, str]) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(argv, env={**os.environ, **env}, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr[-2000:]}")
    return wall, done.stdout


def _imgtool(home: Path, *args: str) -> tuple[float, str]:
    return _run([str(IMGTOOL), "--json", *args], {"IMGTOOL_HOME": str(home)})


def _step(counter: Counter, label: str, argv_runner: Any) -> dict[str, Any]:
    mark = counter.mark()
    wall, out = argv_runner()
    counts = counter.since(mark)
    log(f"remote: {label}: {wall:.2f} s, {counts['requests']} requests")
    return {"label": label, "wall": wall, **counts, "output": json.loads(out) if out.strip().startswith("{") else None}


def _layout_for_skopeo(qcow2: Path, folder: Path) -> tuple[Path, int]:
    """The podman-machine way: one zstd-compressed disk as the single layer of an OCI artifact."""
    folder.mkdir(parents=True)
    blobs = folder / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    packed = folder / "disk.zst"
    sh(["zstd", "-q", "-3", "-T0", "-o", packed, qcow2])

    def put(data: bytes | None, path: Path | None = None) -> dict[str, Any]:
        if path is not None:
            digest = hashlib.sha256()
            with path.open("rb") as handle:
                while piece := handle.read(1 << 20):
                    digest.update(piece)
            hexd, size = digest.hexdigest(), path.stat().st_size
            path.rename(blobs / hexd)
        else:
            assert data is not None
            hexd, size = hashlib.sha256(data).hexdigest(), len(data)
            (blobs / hexd).write_bytes(data)
        return {"digest": f"sha256:{hexd}", "size": size}

    layer = {"mediaType": "application/zstd", **put(None, packed),
             "annotations": {"org.opencontainers.image.title": "disk.qcow2.zst"}}
    config = {"mediaType": "application/vnd.oci.empty.v1+json", **put(b"{}")}
    manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "artifactType": "application/x-vm-disk", "config": config, "layers": [layer]}).encode()
    entry = {"mediaType": "application/vnd.oci.image.manifest.v1+json", **put(manifest),
             "annotations": {"org.opencontainers.image.ref.name": "v2"}}
    (folder / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [entry]}))
    (folder / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    return folder, int(layer["size"])


def run_remote(work: Path, disks: Disks) -> dict[str, Any]:
    missing = [p for p in NEEDS if shutil.which(p) is None]
    if missing:
        return {"skipped": f"missing: {', '.join(missing)}"}
    if str(REPO) not in sys.path:  # appended: imgtool itself still comes from the measured snapshot
        sys.path.append(str(REPO))
    from tests.remote.registry import running  # noqa: PLC0415 - the tests' registry: own config, loopback

    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    homes = {k: work / k for k in ("a", "b", "c")}
    a = homes["a"]
    for args in (["gallery", "create", "team"],
                 ["definition", "create", "team/base", "--publisher", "acme", "--offer", "base", "--sku", "v1",
                  "--os-type", "linux", "--os-state", "generalized"],
                 # ext4 disks of /usr files without /etc: no guest OS the audit can read, so the override
                 ["publish", "team/base", "--version", "1.0.0", "--os-disk", str(disks.v1_qcow2), "--allow-unaudited"],
                 ["publish", "team/base", "--version", "2.0.0", "--os-disk", str(disks.v2_raw), "--allow-unaudited"]):
        _imgtool(a, *args)
    du = json.loads(_imgtool(a, "du")[1])
    results: dict[str, Any] = {"store": du, "steps": []}
    with running(access_log=True) as registry:
        counter = Counter(registry.root)
        for home in homes.values():
            _imgtool(home, "remote", "add", "bench", f"{registry.url}/bench")
            _imgtool(home, "trust", "policy", "bench", "any")  # unsigned, accepted explicitly (as skopeo's is)
        steps = results["steps"]
        steps.append(_step(counter, "imgtool push v1", lambda: _imgtool(a, "push", "team/base@1.0.0", "bench")))
        steps.append(_step(counter, "imgtool push v2", lambda: _imgtool(a, "push", "team/base@2.0.0", "bench")))
        steps.append(_step(counter, "imgtool push v2 again", lambda: _imgtool(a, "push", "team/base", "bench")))
        _imgtool(homes["b"], "pull", "bench:team/base@1.0.0")
        steps.append(_step(counter, "imgtool pull v2 onto v1",
                           lambda: _imgtool(homes["b"], "pull", "bench:team/base@2.0.0")))
        steps.append(_step(counter, "imgtool pull v2 into an empty store",
                           lambda: _imgtool(homes["c"], "pull", "bench:team/base@2.0.0")))
        start = time.perf_counter()
        layout, layer_size = _layout_for_skopeo(disks.v2_flat, work / "skopeo-src")
        results["skopeo_compress_seconds"] = time.perf_counter() - start
        results["skopeo_layer_bytes"] = layer_size
        target = f"docker://{registry.host}/bench/podman-way/disk:v2"
        steps.append(_step(counter, "skopeo copy v2 qcow2.zst to the registry", lambda: _run(
            ["skopeo", "--insecure-policy", "copy", "--dest-tls-verify=false", f"oci:{layout}:v2", target], {})))
        (work / "skopeo-dst").mkdir()
        steps.append(_step(counter, "skopeo copy v2 qcow2.zst from the registry", lambda: _run(
            ["skopeo", "--insecure-policy", "copy", "--src-tls-verify=false", target,
             f"oci:{work / 'skopeo-dst'}:v2"], {})))
    results["changed_stored_bytes"] = _changed_bytes(a)
    shutil.rmtree(work, ignore_errors=True)
    return results


def _changed_bytes(home: Path) -> int:
    """Compressed bytes of the chunks v2 has and v1 lacks (what an ideal push of v2 sends)."""
    from imgtool.gallery.lookup import get_version  # noqa: PLC0415 - the measured snapshot's imgtool
    from imgtool.home import Home  # noqa: PLC0415

    h = Home.at(home)
    disks = [h.store.get_disk(get_version(h, f"team/base@{v}")[0].os_disk.digest) for v in ("1.0.0", "2.0.0")]
    new = disks[1].chunk_digests() - disks[0].chunk_digests()
    index = h.store.index
    return sum(loc.clen for d in new if (loc := index.get(bytes.fromhex(d))) is not None)


def render(res: dict[str, Any]) -> list[str]:
    rem = res.get("remote")
    if not rem:
        return []
    if "skipped" in rem:
        return ["## Sharing through a registry", "", f"Not run: {rem['skipped']}.", ""]
    by = {s["label"]: s for s in rem["steps"]}
    rows = [f"| {s['label']} | {s['wall']:.2f} | {s['sent'] / 2**20:.1f} | {s['received'] / 2**20:.1f} | "
            f"{s['requests']} |" for s in rem["steps"]]
    push2, skopeo_push = by["imgtool push v2"], by["skopeo copy v2 qcow2.zst to the registry"]
    pull2, skopeo_pull = by["imgtool pull v2 onto v1"], by["skopeo copy v2 qcow2.zst from the registry"]
    changed = rem["changed_stored_bytes"]
    ratios = [
        ("push v2 sends ≤ 1.2 x the compressed size of the changed chunks", push2["sent"] / max(changed, 1), 1.2),
        ("push v2 takes ≤ 0.3 x skopeo copy of the v2 qcow2", push2["wall"] / skopeo_push["wall"], 0.3),
        ("pull v2 onto v1 takes ≤ 0.3 x skopeo copy of the v2 qcow2", pull2["wall"] / skopeo_pull["wall"], 0.3),
    ]
    return ["## Sharing through a registry", "",
            "imgtool push/pull against a local distribution registry (Debian `docker-registry` 2.8, loopback), "
            "beside what users do today: the whole v2 qcow2 zstd-compressed as a single-layer artifact, copied "
            "by `skopeo copy` (the podman-machine way; compressing it took "
            f"{rem['skopeo_compress_seconds']:.1f} s, untimed, giving a {rem['skopeo_layer_bytes'] / 2**20:.1f} MiB "
            "layer). Requests and bytes are counted on the registry's side for both (access log lines, logged "
            "response sizes, growth of its blob storage). One run each on a shared machine: short runs, "
            "not medians.", "",
            "| step | wall s | sent MiB | received MiB | requests |", "|---|---|---|---|---|", *rows, "",
            f"The chunks v2 adds to v1 take {changed / 2**20:.1f} MiB compressed.", "",
            "| target | value | limit | verdict |", "|---|---|---|---|",
            *[f"| {what} | {value:.2f} | {limit} | {'met' if value <= limit else 'missed'} |"
              for what, value, limit in ratios], ""]
