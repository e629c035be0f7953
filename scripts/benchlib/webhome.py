"""Build the home the web benchmark reads: one definition with many versions, plus the other things a page
shows (a second gallery, a revoked version, a version copied from another, a replication target).

    python -m benchlib.webhome HOME COUNT

The versions are real publishes through imgtool's library (benchlib.mkversions, two processes), all naming
one small disk stored from a `blake3:` source: what is measured is the cost of reading metadata, which is
what the pages read. Building 10,000 versions takes about 90 s; the result is reused while it exists.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from benchlib.mkversions import number
from imgtool.flows import replication
from imgtool.flows.publishing import publish_version as publish
from imgtool.gallery import galleries
from imgtool.gallery.image_versions import PublishRequest
from imgtool.gallery.model import Definition
from imgtool.gallery.revocation import revoke
from imgtool.home import Home
from imgtool.names import Version, parse_definition_ref
from imgtool.remote import remotes
from store.ingest import ingest

DEFINITION = "bench/many"
WORKERS = 2


def _disk(home: Home, size: int = 1 << 20) -> str:
    data = os.urandom(size)
    chunk = home.store.config.chunk_size
    with home.store.writing():
        return ingest(home.store, virtual_size=size, read=lambda o, n: data[o:o + n],
                      indexes=range((size + chunk - 1) // chunk)).digest


def build(root: Path, count: int) -> Home:
    root = root.absolute()
    home = Home.at(root)
    galleries.create_gallery(home, "bench", "10,000 versions of one definition")
    galleries.create_definition(home, Definition("bench", "many", "bench", "many", "v", "linux", "generalized"))
    galleries.create_gallery(home, "other", "a small second gallery")
    galleries.create_definition(home, Definition("other", "small", "other", "small", "v", "linux", "specialized"))
    digest = _disk(home)
    bounds = [count * w // WORKERS for w in range(WORKERS + 1)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    procs = [subprocess.Popen([sys.executable, "-m", "benchlib.mkversions", str(root), DEFINITION, digest,
                               str(bounds[w]), str(bounds[w + 1]), str(count - 1)], env=env)
             for w in range(WORKERS)]
    for proc in procs:
        if proc.wait() != 0:
            raise RuntimeError("mkversions failed")
    return extras(home, digest, count)


def extras(home: Home, digest: str, count: int) -> Home:
    """What else the pages show: a small second definition, a copied version, a revocation, a target."""
    small = parse_definition_ref("other/small")
    publish(home, PublishRequest(small, Version.parse("1.0.0"), os_disk=digest))
    publish(home, PublishRequest(small, Version.parse("1.1.0"), os_disk=f"{DEFINITION}@{number(count - 2)}"))
    revoke(home, f"{DEFINITION}@{number(count - 3)}", "benchmark: a revoked version")
    layout = home.root.parent / "layout"
    remotes.add(home, "mirror", f"oci-layout:{layout}")
    replication.set_targets(home, "other/small@1.0.0", add=["mirror"])
    return home


if __name__ == "__main__":
    build(Path(sys.argv[1]), int(sys.argv[2]))
