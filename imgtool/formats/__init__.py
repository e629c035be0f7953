"""Inspect untrusted disk images before any qemu-img call touches them.

The reference is OpenStack's fix for CVE-2024-32498 (oslo.utils
format_inspector): an image is identified from its own bytes, and anything
that would make qemu open another host file (backing files, external data
files, VMDK extents, VHD/VHDX parents), read a device, or allocate absurd
virtual sizes is refused before qemu ever sees it.
"""

from ._common import ACCEPTED_FORMATS, DEFAULT_MAX_VIRTUAL_SIZE, ImageInfo
from ._inspect import inspect
from .detect import detect_format
from .nested import GUEST_PROBE, nested_formats, refuse_nested

__all__ = ["ACCEPTED_FORMATS", "DEFAULT_MAX_VIRTUAL_SIZE", "GUEST_PROBE", "ImageInfo", "detect_format", "inspect",
           "nested_formats", "refuse_nested"]
