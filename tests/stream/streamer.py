"""A second process streaming a version: `python -m tests.stream.streamer HOME REF OFFSET LENGTH AHEAD`.

It judges REF as a stream does, reads [OFFSET, OFFSET+LENGTH) of the OS disk (the first miss asking
for AHEAD chunks after it in the same request),
prints "read" and the sha256 of what it read, then waits for a line on stdin before it keeps what it
fetched into the store (so the test decides when its spool goes), and prints its counters as JSON.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

from imgtool.flows import sharing
from imgtool.home import Home
from imgtool.stream.hydration import DiskSource, Hydration
from imgtool.stream.serve import disks_of


def main(argv: list[str]) -> int:
    root, ref, offset, length, ahead = argv[0], argv[1], int(argv[2]), int(argv[3]), int(argv[4])
    home = Home.at(Path(root))
    with sharing.judged_remote(home, ref) as (_remote, target, puller, judged):
        disks = disks_of(puller, judged)
        sizes = {d: desc.size for d, desc in judged.manifest.packs.items()}
        hydration = Hydration(home.store, target, judged.repo, sizes, disks, lease_owner="second")
        data = DiskSource(hydration, disks[0], read_ahead=ahead).read(offset, length)
        print("read", hashlib.sha256(data).hexdigest(), flush=True)
        sys.stdin.readline()
        hydration.keep()
        hydration.drop_leases()
        hydration.close()
        print(json.dumps({"fetched_chunks": hydration.counters.fetched_chunks,
                          "joined_bytes": hydration.counters.joined_bytes}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
