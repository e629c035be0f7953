"""qemu-img as data: argv builders and parsers (unit), runners on real images (integration)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from imgtool.errors import Corrupt, InvalidArgument, ToolFailed
from imgtool.tools import qemu_img, run
from imgtool.tools.qemu_img import Extent, data_ranges
from tests.conftest import require_tools
from tests.images import identical

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30

# What every per-format test writes: data, data later overwritten by an explicit zero
# write (`write -z`), more data, and unallocated gaps in between.
DATA = [(0xAA, 1 * MiB, 64 * KiB), (0x55, 8 * MiB, 192 * KiB)]
ZEROED = (4 * MiB, 1 * MiB)
IMAGE_SIZE = 16 * MiB
FORMATS = ["qcow2", "vmdk", "vpc", "vhdx", "raw"]
CREATE_OPTIONS = {"vmdk": ["-o", "zeroed_grain=on"]}  # without it vmdk stores zero writes as data


def qemu_io(path: Path, fmt: str, *commands: str) -> None:
    argv: list[str] = ["qemu-io", "-f", fmt]
    for command in commands:
        argv += ["-c", command]
    result = run.run([*argv, path])
    assert "error" not in result.stdout.lower() + result.stderr.lower(), result


def make_image(path: Path, fmt: str, size: int = IMAGE_SIZE) -> Path:
    """Create `path` with the DATA / ZEROED pattern written by QEMU itself."""
    run.run(["qemu-img", "create", "-q", "-f", fmt, *CREATE_OPTIONS.get(fmt, []), path, size])
    zero_start, zero_len = ZEROED
    qemu_io(path, fmt,
            *(f"write -P {pattern:#x} {start} {length}" for pattern, start, length in DATA),
            f"write -P 0x77 {zero_start} {zero_len}",
            f"write -z {zero_start} {zero_len}")
    return path


def to_raw(path: Path, fmt: str, tmp_path: Path) -> bytes:
    out = tmp_path / f"{path.name}.as.raw"
    qemu_img.convert(path, out, src_fmt=fmt, dst_fmt="raw")
    return out.read_bytes()


def covers(ranges: list[tuple[int, int]], start: int, length: int) -> bool:
    return any(s <= start and start + length <= s + n for s, n in ranges)


def overlaps(ranges: list[tuple[int, int]], start: int, length: int) -> bool:
    return any(s < start + length and start < s + n for s, n in ranges)


# ---------------------------------------------------------------------------
# argv builders


def test_info_argv_forces_share_and_format() -> None:
    assert qemu_img.info_argv("/i/a.qcow2", fmt="qcow2") == [
        "qemu-img", "info", "--output=json", "-f", "qcow2", "-U", "/i/a.qcow2"]
    assert qemu_img.info_argv(Path("/i/a.raw"), fmt=None, force_share=False) == [
        "qemu-img", "info", "--output=json", "/i/a.raw"]


def test_relative_and_protocol_looking_paths_stay_plain_files() -> None:
    assert qemu_img.map_argv("json:{}", fmt="raw")[-1] == "./json:{}"
    assert qemu_img.map_argv("nbd:host:1", fmt="raw")[-1] == "./nbd:host:1"
    assert qemu_img.map_argv("-U", fmt="raw")[-1] == "./-U"
    with pytest.raises(InvalidArgument):
        qemu_img.map_argv("", fmt="raw")


def test_map_argv() -> None:
    assert qemu_img.map_argv(Path("/d/x.vmdk"), fmt="vmdk") == [
        "qemu-img", "map", "--output=json", "-f", "vmdk", "/d/x.vmdk"]


def test_create_overlay_argv_records_absolute_backing_and_format(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert qemu_img.create_overlay_argv("vm.qcow2", backing="base.raw", backing_fmt="raw") == [
        "qemu-img", "create", "-q", "-f", "qcow2", "-b", str(tmp_path / "base.raw"), "-F", "raw",
        "./vm.qcow2"]
    argv = qemu_img.create_overlay_argv("/v/vm.qcow2", backing="/b/base.qcow2", backing_fmt="qcow2",
                                        size=GiB)
    assert argv[-2:] == ["/v/vm.qcow2", str(GiB)]
    with pytest.raises(InvalidArgument):
        qemu_img.create_overlay_argv("/v/vm.qcow2", backing="/b", backing_fmt="qcow2", size=0)


def test_convert_argv() -> None:
    assert qemu_img.convert_argv("/a.vmdk", "/b.qcow2", src_fmt="vmdk", dst_fmt="qcow2") == [
        "qemu-img", "convert", "-q", "-f", "vmdk", "-O", "qcow2", "/a.vmdk", "/b.qcow2"]
    argv = qemu_img.convert_argv("/a", "/b", src_fmt="raw", dst_fmt="qcow2", compress=True, sparse=False)
    assert argv == ["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", "-c", "-S", "0", "/a", "/b"]


def test_convert_options_and_resize_argv() -> None:
    argv = qemu_img.convert_argv("/a", "/b.vhd", src_fmt="raw", dst_fmt="vpc",
                                 options=("subformat=fixed", "force_size=on"))
    assert argv == ["qemu-img", "convert", "-q", "-f", "raw", "-O", "vpc", "-o", "subformat=fixed,force_size=on",
                    "/a", "/b.vhd"]
    for bad in ("subformat", "a=b,backing_file=/etc/shadow", "=x"):  # one KEY=VALUE each, nothing smuggled
        with pytest.raises(InvalidArgument):
            qemu_img.convert_argv("/a", "/b", src_fmt="raw", dst_fmt="vpc", options=(bad,))
    assert qemu_img.resize_argv("disk.qcow2", fmt="qcow2", size=1 << 30) == [
        "qemu-img", "resize", "-q", "-f", "qcow2", "./disk.qcow2", str(1 << 30)]
    with pytest.raises(InvalidArgument):
        qemu_img.resize_argv("/d", fmt="qcow2", size=0)


def test_unknown_format_is_refused_before_running() -> None:
    with pytest.raises(InvalidArgument, match="unsupported image format"):
        qemu_img.map_argv("/a", fmt="qcow3")
    with pytest.raises(InvalidArgument):
        qemu_img.create_overlay_argv("/o", backing="/b", backing_fmt="host_device")


# ---------------------------------------------------------------------------
# parsers

INFO_OVERLAY = """{
    "backing-filename-format": "raw", "virtual-size": 16777216, "filename": "ov.qcow2",
    "cluster-size": 65536, "format": "qcow2", "actual-size": 397312,
    "format-specific": {"type": "qcow2", "data": {"compat": "1.1", "data-file": "ov.data",
                        "corrupt": false}},
    "full-backing-filename": "/tmp/base.raw", "backing-filename": "base.raw", "dirty-flag": true
}"""


def test_parse_info() -> None:
    assert qemu_img.parse_info(INFO_OVERLAY) == qemu_img.Info(
        format="qcow2", virtual_size=16 * MiB, actual_size=397312, backing_file="base.raw",
        backing_format="raw", data_file="ov.data", dirty=True)
    minimal = qemu_img.parse_info('{"format": "raw", "virtual-size": 512}')
    assert minimal == qemu_img.Info("raw", 512, None, None, None, None, False)


@pytest.mark.parametrize("text", [
    "qemu-img: oops", "[]", '{"format": "raw"}', '{"format": "raw", "virtual-size": "1"}',
    '{"format": "raw", "virtual-size": true}', '{"format": 1, "virtual-size": 1}'])
def test_parse_info_rejects_unexpected_output(text: str) -> None:
    with pytest.raises(ToolFailed, match="qemu-img info"):
        qemu_img.parse_info(text)


MAP_OVERLAY = """[{ "start": 0, "length": 65536, "depth": 1, "present": true, "zero": false, "data": true,
  "offset": 0},
{ "start": 65536, "length": 65536, "depth": 0, "present": true, "zero": false, "data": true, "offset": 327680},
{ "start": 131072, "length": 65536, "depth": 1, "present": true, "zero": true, "data": false},
{ "start": 196608, "length": 65536, "depth": 0, "present": true, "zero": true, "data": false},
{ "start": 262144, "length": 65536, "depth": 0, "present": true, "zero": false, "data": true},
{ "start": 327680, "length": 65536, "depth": 0, "present": false, "zero": true, "data": false},
{ "start": 393216, "length": 65536, "depth": 1, "present": true, "zero": false, "data": false}]"""


def test_parse_map_and_data_ranges() -> None:
    extents = qemu_img.parse_map(MAP_OVERLAY)
    assert extents[1] == Extent(start=65536, length=65536, data=True, zero=False, depth=0, offset=327680)
    assert extents[4].offset is None  # e.g. a compressed cluster: no verbatim bytes to read
    assert extents[5].present is False
    # Everything not known to be zero, merged; data=false zero=false (unknown) is kept.
    assert data_ranges(extents) == [(0, 131072), (262144, 65536), (393216, 65536)]
    # The top layer's own clusters, including its zero cluster (it hides base data).
    assert data_ranges(extents, own_only=True) == [(65536, 65536), (196608, 131072)]


def test_parse_map_without_present_field_counts_rows_as_present() -> None:
    extents = qemu_img.parse_map('[{"start": 0, "length": 512, "depth": 0, "zero": true, "data": false}]')
    assert extents[0].present
    assert data_ranges(extents) == []
    assert data_ranges(extents, own_only=True) == [(0, 512)]


@pytest.mark.parametrize("text", [
    "{}", "not json", "[1]",
    '[{"start": 0, "length": 512, "depth": 0, "zero": true}]',
    '[{"start": 512, "length": 512, "depth": 0, "zero": true, "data": false}]',
    '[{"start": 0, "length": 0, "depth": 0, "zero": true, "data": false}]',
    '[{"start": 0, "length": 512, "depth": 0, "zero": 1, "data": false}]'])
def test_parse_map_rejects_unexpected_output(text: str) -> None:
    with pytest.raises(ToolFailed, match="qemu-img map"):
        qemu_img.parse_map(text)


# ---------------------------------------------------------------------------
# runners, with the run seam replaced


def fake_run(monkeypatch: pytest.MonkeyPatch, returncode: int, stdout: str = "", stderr: str = "",
             ) -> list[dict[str, object]]:
    calls: list[dict[str, object]] = []

    def fake(argv: list[str], **kwargs: object) -> run.Result:
        calls.append({"argv": argv, **kwargs})
        result = run.Result(list(argv), returncode, stdout, stderr)
        if kwargs.get("check", True) and returncode != 0:
            raise run.failure(result)
        return result

    monkeypatch.setattr(run, "run", fake)
    return calls


def test_map_runs_under_untrusted_limits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    image = tmp_path / "a.qcow2"
    image.touch()
    calls = fake_run(monkeypatch, 0, '[{"start": 0, "length": 512, "depth": 0, "zero": false, "data": true}]')
    assert qemu_img.map_extents(image, fmt="qcow2") == [Extent(0, 512, True, False, 0)]
    assert calls[0]["limits"] == run.UNTRUSTED


def test_rejected_image_is_corrupt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    image = tmp_path / "a.qcow2"
    image.touch()
    fake_run(monkeypatch, 1, stderr="qemu-img: Could not open 'a.qcow2': Image is not in qcow2 format")
    with pytest.raises(Corrupt, match="not in qcow2 format"):
        qemu_img.info(image, fmt="qcow2")


def test_death_under_limits_says_hostile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    image = tmp_path / "a.qcow2"
    image.touch()
    fake_run(monkeypatch, -24)
    with pytest.raises(ToolFailed, match="signal 24 under resource limits") as caught:
        qemu_img.map_extents(image, fmt="qcow2")
    assert "hostile" in caught.value.hint


@pytest.mark.integration
def test_compare_identical_and_different(tmp_path: Path) -> None:
    require_tools("qemu-img", "qemu-io")
    image = make_image(tmp_path / "a.qcow2", "qcow2")
    copy = tmp_path / "a.vmdk"
    qemu_img.convert(image, copy, src_fmt="qcow2", dst_fmt="vmdk")
    assert identical(image, copy, "qcow2", "vmdk")
    qemu_io(copy, "vmdk", "write -P 0x01 15M 512")
    assert not identical(image, copy, "qcow2", "vmdk")


@pytest.mark.integration
def test_compressed_convert_keeps_content(tmp_path: Path) -> None:
    require_tools("qemu-img", "qemu-io")
    image = make_image(tmp_path / "a.qcow2", "qcow2")
    packed = tmp_path / "packed.qcow2"
    qemu_img.convert(image, packed, src_fmt="qcow2", dst_fmt="qcow2", compress=True)
    assert identical(image, packed, "qcow2", "qcow2")
    assert to_raw(packed, "qcow2", tmp_path) == to_raw(image, "qcow2", tmp_path)


@pytest.mark.integration
def test_info_works_on_an_image_in_use(tmp_path: Path) -> None:
    require_tools("qemu-img", "qemu-io", "qemu-nbd")
    image = make_image(tmp_path / "busy.qcow2", "qcow2")
    sock = tmp_path / "w.sock"
    # A writable qemu-nbd holds the image's write lock, as a running VM does.
    writer = run.spawn(["qemu-nbd", "--format=qcow2", f"--socket={sock}", image])
    try:
        for _ in range(500):
            if sock.exists() or not writer.alive():
                break
            time.sleep(0.01)
        assert writer.alive()
        locked = run.run(qemu_img.info_argv(image, fmt="qcow2", force_share=False), check=False)
        assert locked.returncode != 0 and "lock" in locked.stderr  # so -U is what makes info work
        assert qemu_img.info(image, fmt="qcow2").virtual_size == IMAGE_SIZE
    finally:
        writer.stop()


@pytest.mark.integration
def test_map_of_huge_sparse_images_fits_untrusted_limits(tmp_path: Path) -> None:
    require_tools("qemu-img", "qemu-io")
    big = tmp_path / "big.qcow2"
    run.run(["qemu-img", "create", "-q", "-f", "qcow2", big, "1T"])
    qemu_io(big, "qcow2", "write -P 1 0 64k", "write -P 2 500G 64k", f"write -P 3 {(1 << 40) - 65536} 64k")
    assert data_ranges(qemu_img.map_extents(big, fmt="qcow2", limits=run.UNTRUSTED)) == [
        (0, 64 * KiB), (500 * GiB, 64 * KiB), ((1 << 40) - 64 * KiB, 64 * KiB)]

    sparse = tmp_path / "sparse.raw"
    with sparse.open("wb") as f:
        f.truncate(8 * GiB)
        f.seek(7 * GiB)
        f.write(b"x" * 4096)
    ranges = data_ranges(qemu_img.map_extents(sparse, fmt="raw", limits=run.UNTRUSTED))
    assert [r for r in ranges if r[0] != 0] == [(7 * GiB, 4 * KiB)]


@pytest.mark.integration
def test_garbage_is_corrupt(tmp_path: Path) -> None:
    require_tools("qemu-img")
    junk = tmp_path / "junk.qcow2"
    junk.write_bytes(os.urandom(64 * KiB))
    with pytest.raises(Corrupt, match="not in qcow2 format"):
        qemu_img.info(junk, fmt="qcow2")
    with pytest.raises(Corrupt):
        qemu_img.map_extents(junk, fmt="vmdk")
    assert qemu_img.info(junk, fmt="raw").virtual_size == 64 * KiB  # as raw, any bytes are fine
