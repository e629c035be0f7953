"""qemu-img as data: argv builders, JSON parsers and thin runners.

Why this shape: argv is built by pure functions (unit-tested as lists) and run only
through `imgtool.run`, so the only thing between imgtool and an untrusted image is a
qemu-img process under resource limits. imgtool never decodes qcow2/vmdk/... itself.

Rules every builder follows:
- the format is always passed explicitly (`-f`/`-F`/`-O`): qemu-img never probes;
- image paths are made unambiguous (`./name` for relative paths), so a file named
  `json:{...}`, `nbd:...` or `-x` is opened as a plain file, not parsed as a protocol
  or an option.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imgtool.errors import Corrupt, InvalidArgument, NotFound, ToolFailed
from imgtool.tools import run

PathLike = str | os.PathLike[str]

# Wall-clock bounds; the CPU limit in run.UNTRUSTED is the real guard on hostile input.
INFO_TIMEOUT = 60.0
MAP_TIMEOUT = 600.0

FORMATS = ("raw", "qcow2", "vmdk", "vpc", "vhdx", "vdi", "qed", "parallels", "luks")


@dataclass(frozen=True)
class Extent:
    """One row of `qemu-img map --output=json`.

    data: the range is allocated as data somewhere in the chain; zero: it is known
    to read as zeros; depth: the chain layer that defines it (0 = the image itself);
    present: allocated in some layer (False = unallocated in the whole chain; qemu-img
    before 6.0 does not report it, and then every row counts as present).
    """

    start: int
    length: int
    data: bool
    zero: bool
    depth: int
    present: bool = True
    offset: int | None = None  # where the guest bytes lie, verbatim, in the layer's file (not for compressed data)

    @property
    def end(self) -> int:
        return self.start + self.length


@dataclass(frozen=True)
class Info:
    """The parts of `qemu-img info --output=json` imgtool relies on.

    backing_file is the name as recorded in the image (a relative name is relative
    to the image's directory); data_file is qcow2's external data file, if any.
    """

    format: str
    virtual_size: int
    actual_size: int | None
    backing_file: str | None
    backing_format: str | None
    data_file: str | None
    dirty: bool


# ---------------------------------------------------------------------------
# argv builders (pure)


def image_arg(path: PathLike) -> str:
    """Spell a path so qemu-img reads it as a plain file name (see module doc)."""
    text = os.fspath(path)
    if not text:
        raise InvalidArgument("empty image path", hint="pass the path of an image file")
    return text if text.startswith("/") else "./" + text


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise InvalidArgument(
            f"unsupported image format {fmt!r}",
            hint=f"use one of: {', '.join(FORMATS)}",
        )
    return fmt


def info_argv(path: PathLike, *, fmt: str | None, force_share: bool = True) -> list[str]:
    """`qemu-img info`; without fmt qemu-img probes, so only pass None for trusted files."""
    argv = ["qemu-img", "info",
            "--output=json"]
    if fmt is not None:
        argv += ["-f", check_format(fmt)]
    if force_share:
        # Images in use (a running VM) hold a write lock; -U reads without taking one.
        argv += ["-U"]
    return [*argv, image_arg(path)]


def map_argv(path: PathLike, *, fmt: str) -> list[str]:
    return ["qemu-img", "map",
            "--output=json",
            "-f", check_format(fmt),
            image_arg(path)]


def create_overlay_argv(
    overlay: PathLike, *, backing: PathLike, backing_fmt: str, size: int | None = None, unsafe: bool = False
) -> list[str]:
    """A qcow2 overlay on `backing`, recorded by absolute path with its format (-F); `unsafe` (-u, needs
    `size`): the backing is not opened, so it may not exist yet (a streamed VM's future base)."""
    argv = ["qemu-img", "create",
            "-q",
            *(["-u"] if unsafe else []),
            "-f", "qcow2",
            "-b", str(Path(backing).absolute()),
            "-F", check_format(backing_fmt),
            image_arg(overlay)]
    if size is not None:
        if size <= 0:
            raise InvalidArgument(f"overlay size must be positive, not {size}", hint="omit it to inherit")
        argv.append(str(size))
    return argv


def convert_argv(
    src: PathLike, dst: PathLike, *, src_fmt: str, dst_fmt: str, compress: bool = False,
    sparse: bool = True, options: tuple[str, ...] = (),
) -> list[str]:
    """`qemu-img convert`; sparse=False writes every zero (`-S 0`); `options` are the output
    format's creation options (`-o subformat=fixed`), one KEY=VALUE each."""
    argv = ["qemu-img", "convert",
            "-q",
            "-f", check_format(src_fmt),
            "-O", check_format(dst_fmt)]
    if options:
        argv += ["-o", ",".join(_check_option(o) for o in options)]
    if compress:
        argv += ["-c"]
    if not sparse:
        argv += ["-S", "0"]
    return [*argv, image_arg(src), image_arg(dst)]


def _check_option(option: str) -> str:
    key, eq, value = option.partition("=")
    if not eq or not key.replace("_", "").isalnum() or not value.replace("_", "").isalnum():
        raise InvalidArgument(f"qemu-img option '{option}' is not KEY=VALUE", hint="e.g. subformat=fixed")
    return option


def resize_argv(path: PathLike, *, fmt: str, size: int) -> list[str]:
    """`qemu-img resize` to `size` bytes, growing only (`qemu-img` needs --shrink to cut a disk)."""
    if size <= 0:
        raise InvalidArgument(f"a disk size must be positive, not {size}", hint="e.g. 20G")
    return ["qemu-img", "resize",
            "-q",
            "-f", check_format(fmt),
            image_arg(path),
            str(size)]


# ---------------------------------------------------------------------------
# parsers (pure)


def _load_json(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ToolFailed(
            f"{what} printed output that is not JSON ({exc.msg} at char {exc.pos})",
            hint="check the qemu-img version (imgtool needs qemu-img >= 5.0)",
        ) from exc


def _field(obj: dict[str, Any], key: str, kind: type, what: str) -> Any:
    value = obj.get(key)
    # bool is a subclass of int: a size must not be `true`.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ToolFailed(f"{what}: field {key!r} missing or not {kind.__name__}: {value!r}",
                         hint="check the qemu-img version (imgtool needs qemu-img >= 5.0)")
    return value


def _optional(obj: dict[str, Any], key: str, kind: type, what: str) -> Any:
    return None if obj.get(key) is None else _field(obj, key, kind, what)


def parse_info(text: str) -> Info:
    what = "qemu-img info"
    obj = _load_json(text, what)
    if not isinstance(obj, dict):
        raise ToolFailed(f"{what}: expected a JSON object, got {type(obj).__name__}",
                         hint="check the qemu-img version")
    specific = obj.get("format-specific")
    specific_data = specific.get("data") if isinstance(specific, dict) else None
    data_file = None
    if isinstance(specific_data, dict):
        data_file = _optional(specific_data, "data-file", str, what)
    return Info(
        format=_field(obj, "format", str, what),
        virtual_size=_field(obj, "virtual-size", int, what),
        actual_size=_optional(obj, "actual-size", int, what),
        backing_file=_optional(obj, "backing-filename", str, what),
        backing_format=_optional(obj, "backing-filename-format", str, what),
        data_file=data_file,
        dirty=bool(obj.get("dirty-flag", False)),
    )


def parse_map(text: str) -> list[Extent]:
    """Parse map JSON; the rows must tile [0, end) in order, else ToolFailed."""
    what = "qemu-img map"
    rows = _load_json(text, what)
    if not isinstance(rows, list):
        raise ToolFailed(f"{what}: expected a JSON list, got {type(rows).__name__}",
                         hint="check the qemu-img version")
    extents: list[Extent] = []
    expected = 0
    for row in rows:
        if not isinstance(row, dict):
            raise ToolFailed(f"{what}: row is not an object: {row!r}", hint="check the qemu-img version")
        extent = Extent(
            start=_field(row, "start", int, what),
            length=_field(row, "length", int, what),
            data=_field(row, "data", bool, what),
            zero=_field(row, "zero", bool, what),
            depth=_field(row, "depth", int, what),
            present=bool(row.get("present", True)),
            offset=_optional(row, "offset", int, what),
        )
        if extent.start != expected or extent.length <= 0:
            raise ToolFailed(
                f"{what}: extents do not tile the image: row at {extent.start} "
                f"(length {extent.length}) after {expected}",
                hint="check the qemu-img version",
            )
        expected = extent.end
        extents.append(extent)
    return extents


def data_ranges(extents: Iterable[Extent], *, own_only: bool = False) -> list[tuple[int, int]]:
    """Merged, sorted (start, length) ranges a capture must read.

    Default: every range not known to read as zeros (data, or unknown content).
    own_only=True: the ranges the top image defines itself (depth 0 and allocated),
    *including its explicit zero clusters*: in an overlay those hide base data, so an
    incremental capture must record them (reading them yields zeros).
    """
    ranges: list[tuple[int, int]] = []
    for extent in extents:
        wanted = (extent.depth == 0 and extent.present) if own_only else not extent.zero
        if not wanted:
            continue
        if ranges and ranges[-1][0] + ranges[-1][1] == extent.start:
            start, length = ranges[-1]
            ranges[-1] = (start, length + extent.length)
        else:
            ranges.append((extent.start, extent.length))
    return ranges


# ---------------------------------------------------------------------------
# runners


def require_file(path: PathLike) -> None:
    if not Path(path).exists():
        raise NotFound(f"image {os.fspath(path)} does not exist", hint="check the path")


def _run_untrusted(argv: list[str], *, what: str, limits: run.Limits | None, timeout: float) -> str:
    """Run qemu-img on a possibly hostile image; classify failures.

    "Could not open" means qemu-img rejected the file's content: Corrupt. Death by
    signal under limits (SIGXCPU, SIGKILL, SIGSEGV on ENOMEM) means the image needed
    more than an honest image would: ToolFailed saying so.
    """
    result = run.run(argv, limits=limits, timeout=timeout, check=False)
    if result.returncode == 0:
        return result.stdout
    failure = run.failure(result)
    if result.returncode < 0 and limits is not None:
        raise ToolFailed(
            f"{what} was killed by signal {-result.returncode} under resource limits",
            hint="the image may be hostile (it needed more CPU or memory than allowed)",
            argv=failure.argv, returncode=failure.returncode, stderr_tail=failure.stderr_tail,
        )
    if result.returncode == 1 and "Could not open" in result.stderr:
        raise Corrupt(f"{what}: {failure.stderr_tail}", hint="the file is not a valid image of that format")
    raise failure


def info(path: PathLike, *, fmt: str | None = None, limits: run.Limits | None = run.UNTRUSTED) -> Info:
    """`qemu-img info -U` parsed; works on images in use by a running VM."""
    require_file(path)
    out = _run_untrusted(info_argv(path, fmt=fmt), what="qemu-img info", limits=limits, timeout=INFO_TIMEOUT)
    return parse_info(out)


def map_extents(path: PathLike, *, fmt: str, limits: run.Limits | None = run.UNTRUSTED) -> list[Extent]:
    """Allocation map of the image and its backing chain, as tiling extents."""
    require_file(path)
    out = _run_untrusted(map_argv(path, fmt=fmt), what="qemu-img map", limits=limits, timeout=MAP_TIMEOUT)
    return parse_map(out)


def create_overlay(overlay: PathLike, *, backing: PathLike, backing_fmt: str, size: int | None = None,
                   unsafe: bool = False) -> None:
    """Create a qcow2 overlay (of `size` bytes, else the backing's); refuses to overwrite an existing file.
    With `unsafe` the backing need not exist yet and `size` is required."""
    if unsafe and size is None:
        raise InvalidArgument("an overlay over a backing that is not there yet needs its size",
                              hint="this is a bug in the caller")
    if not unsafe:
        require_file(backing)
    if Path(overlay).exists():
        raise InvalidArgument(f"overlay {os.fspath(overlay)} already exists", hint="pick a new path")
    run.run(create_overlay_argv(overlay, backing=backing, backing_fmt=backing_fmt, size=size, unsafe=unsafe))


def convert(
    src: PathLike, dst: PathLike, *, src_fmt: str, dst_fmt: str, compress: bool = False,
    limits: run.Limits | None = None, options: tuple[str, ...] = (),
) -> None:
    """Convert src to dst (sparse). Pass limits for untrusted sources."""
    require_file(src)
    run.run(convert_argv(src, dst, src_fmt=src_fmt, dst_fmt=dst_fmt, compress=compress, options=options),
            limits=limits)


def resize(path: PathLike, *, fmt: str, size: int) -> None:
    """Grow the image at `path` to `size` bytes (never shrinks: qemu-img refuses without --shrink)."""
    require_file(path)
    run.run(resize_argv(path, fmt=fmt, size=size))
