"""The formats `version export` writes, as data: what qemu-img is asked for and why.

- qcow2, raw: the disk as it is.
- vhd: a *fixed* VHD as Azure requires for an uploaded disk: the virtual size a whole number of
  MiB (rounded up here, the added tail reads as zeros) and the footer's size field exact
  (`force_size=on`: without it qemu-img rounds the size to a CHS geometry, and Azure refuses a
  size that is not a MiB multiple). qemu-img calls the format "vpc"; both names are accepted.
- vmdk: streamOptimized, the compressed, sequential VMDK that VMware's OVF/OVA import and
  vSphere's upload expect.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from imgtool.errors import InvalidArgument

MiB = 1 << 20


@dataclass(frozen=True)
class ExportFormat:
    name: str  # what users type and what --json reports
    qemu_format: str  # qemu-img's name for it (-O)
    options: tuple[str, ...] = ()  # qemu-img creation options (-o)
    align: int = 1  # the virtual size is rounded up to a multiple of this

    def size_of(self, virtual_size: int) -> int:
        """The exported disk's virtual size (the disk's, rounded up to `align`)."""
        return -(-virtual_size // self.align) * self.align


FORMATS = {f.name: f for f in (
    ExportFormat("qcow2", "qcow2"),
    ExportFormat("raw", "raw"),
    ExportFormat("vhd", "vpc", ("subformat=fixed", "force_size=on"), MiB),
    ExportFormat("vmdk", "vmdk", ("subformat=streamOptimized",)),
)}
ALIASES = {"vpc": "vhd", "img": "raw"}
EXTENSIONS = {".qcow2": "qcow2", ".raw": "raw", ".img": "raw", ".vhd": "vhd", ".vmdk": "vmdk"}


def choose(out: Path, given: str | None) -> ExportFormat:
    """The export format: given (a name or alias), else from the output file's extension; never a guess."""
    if given is not None:
        name = ALIASES.get(given.lower(), given.lower())
        if name not in FORMATS:
            raise InvalidArgument(f"export format '{given}' is not supported",
                                  hint="use --format qcow2, raw, vhd or vmdk")
        return FORMATS[name]
    found = EXTENSIONS.get(Path(out).suffix.lower())
    if found is None:
        raise InvalidArgument(f"cannot tell the format of {out} from its extension",
                              hint="name it .qcow2, .raw, .img, .vhd or .vmdk, or give --format qcow2|raw|vhd|vmdk")
    return FORMATS[found]
