"""Publish many versions of one disk through imgtool's library (run by scale.py, one process per slice).

    python -m benchlib.mkversions HOME DEFINITION DIGEST FIRST STOP EXCLUDE

publishes versions number(FIRST) .. number(STOP - 1) of DEFINITION, each with the already-stored disk
DIGEST (so only the version records and names are written: the cost measured is the metadata's, which is
what `version list` and `version resolve` read). Version number(EXCLUDE) is excluded from latest.
"""

from __future__ import annotations

import sys
from pathlib import Path

from imgtool.flows.publishing import publish_version as publish
from imgtool.gallery.image_versions import PublishRequest
from imgtool.home import Home
from imgtool.names import Version, parse_definition_ref


def number(i: int) -> str:
    """A spread of MAJOR.MINOR.PATCH numbers, unique for i < 100,000."""
    return f"{i // 1000}.{(i // 10) % 100}.{i % 10}"


def main(argv: list[str]) -> None:
    home_dir, definition, digest, first, stop, exclude = argv
    home = Home.at(Path(home_dir))
    ref = parse_definition_ref(definition)
    for i in range(int(first), int(stop)):
        # The benchmark's disk holds no guest OS the audit can read: published with the override.
        publish(home, PublishRequest(ref=ref, version=Version.parse(number(i)), os_disk=digest,
                                     exclude_from_latest=i == int(exclude), allow_unaudited=True))


if __name__ == "__main__":
    main(sys.argv[1:])
