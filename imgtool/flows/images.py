"""Use an image for a VM: local `G/D[@V]`, or remote `REMOTE:G/D[@V]` pulled first (only missing chunks
travel); a pulled version is re-verified from the local store every time (signature, manifest and
config chain, chunks present). A streamed disk is the other way to use a remote image: `vm new --stream`
calls imgtool.stream.vms instead of `image_for_vm` (docs/DESIGN.md, Where the new capabilities plug in)."""

from __future__ import annotations

from dataclasses import dataclass

from imgtool.flows import sharing, signing
from imgtool.home import Home
from store.progress import Progress


@dataclass(frozen=True)
class ImageForVm:
    """The local version to create the VM from, and the warnings the user must see (policy `any`, …)."""

    ref: str
    warnings: tuple[str, ...]


def is_remote_image(image: str) -> bool:
    return ":" in image


def image_for_vm(home: Home, image: str, *, progress: Progress | None = None) -> ImageForVm:
    """Pull a remote image (what is missing; offline, an exact version pulled before from that remote is
    used from here: sharing.pull_for_vm), then verify the local version it is; raises Refused when its
    remote's policy refuses it now, Corrupt when what is stored does not add up."""
    warnings: tuple[str, ...] = ()
    if is_remote_image(image):
        image, pulled_warnings = sharing.pull_for_vm(home, image, progress=progress)
        warnings = tuple(pulled_warnings)
    verdict = signing.verify_local(home, image, deep=False)
    return ImageForVm(image, warnings or (verdict.acceptance.warnings if verdict else ()))
