"""Hostile images through the real commands: every one refused, nothing stored, no host file read.

The corpus is fixtures/hostile/ (scripts/make-hostile-fixtures) plus what cannot be committed
or must name this test's canary: images whose backing file, external data file or VMDK extent
is a canary file of random bytes, a FIFO, symlinks to devices and to a hostile image, a folder.

For each, through `imgtool capture` and `imgtool publish` (as OS disk and as data disk):
- a refusal (exit 5, or 2 for a folder) with one clear line naming the file;
- the whole home byte for byte unchanged (nothing stored, not even the good OS disk of a
  publish whose data disk is hostile);
- qemu-img and qemu-nbd never started: a PATH shim logs every call they get;
and afterwards no byte sequence of the canary (or of /etc/passwd, which the committed corpus
names) appears in any file of the home, in any decompressed chunk, or in a VM's disks.
Positive controls prove the shim and the canary search can fail: a good image does reach
qemu-img -- under the CPU and memory limits of run.UNTRUSTED -- and an image that really
contains the canary is found by the search. In-process, the seam shows inspection running
before the first qemu-img call.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from imgtool import formats
from imgtool.capture import sources
from imgtool.errors import UnsafeImage
from imgtool.gallery.lookup import version_disks
from imgtool.home import Home
from imgtool.tools import nbd, run
from tests.conftest import require_tools
from tests.reliability.harness import (
    Zygote,
    fake_ssh_key,
    fingerprint,
    random_pieces,
    record_figures,
    stored_bytes_contain,
    write_raw,
)

pytestmark = [pytest.mark.integration, pytest.mark.campaign]

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT / "fixtures" / "hostile"
DISK = 4 << 20
SHIM = """#!/bin/sh
# Logs the call and the limits it runs under, then runs the real tool.
printf '%s\\t%s\\t%s\\n' "$(ulimit -t)" "$(ulimit -v)" "$*" >> "$IMGTOOL_TEST_SHIM_LOG"
exec {real} "$@"
"""


def make_shims(folder: Path) -> Path:
    folder.mkdir()
    for tool in ("qemu-img", "qemu-nbd"):
        real = shutil.which(tool)
        assert real is not None
        shim = folder / tool
        shim.write_text(SHIM.format(real=real))
        shim.chmod(0o755)
    return folder


def canary_images(folder: Path, canary: Path) -> list[Path]:
    """Hostile images pointing at the canary, plus what git cannot hold."""
    folder.mkdir()
    made = []

    def qemu_img(*args: str) -> None:
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", *args], check=True, capture_output=True)

    backing = folder / "backing-canary.qcow2"
    qemu_img("-u", "-b", str(canary), "-F", "raw", str(backing), "1M")
    made.append(backing)
    data_file = folder / "data-file-canary.qcow2"
    external = folder / "canary-data.raw"
    qemu_img("-o", f"data_file={external}", str(data_file), "1M")
    shutil.copyfile(canary, external)  # the external data file now holds the canary's bytes
    made.append(data_file)
    for create_type, extent in (("monolithicFlat", f'RW 2048 FLAT "{canary}" 0'),
                                ("twoGbMaxExtentFlat", f'RW 2048 FLAT "{canary}" 0\nRW 2048 FLAT "s002.vmdk" 0'),
                                ("vmfs", f'RW 2048 VMFS "{canary}"')):
        vmdk = folder / f"vmdk-{create_type}-canary.vmdk"
        vmdk.write_text(f'# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\n'
                        f'createType="{create_type}"\n\n# Extent description\n{extent}\n')
        made.append(vmdk)
    fifo = folder / "fifo.img"
    os.mkfifo(fifo)
    made.append(fifo)
    for device in ("/dev/zero", "/dev/null", "/dev/urandom"):
        link = folder / f"link-to-{Path(device).name}.img"
        link.symlink_to(device)
        made.append(link)
    indirect = folder / "link-to-hostile.qcow2"
    indirect.symlink_to(backing)
    made.append(indirect)
    directory = folder / "a-folder.img"
    directory.mkdir()
    made.append(directory)
    return made


def corpus() -> list[Path]:
    return sorted(p for p in CORPUS.iterdir() if p.name != "README.md")


def shim_calls(log: Path) -> list[list[str]]:
    if not log.exists():
        return []
    return [line.split("\t") for line in log.read_text().splitlines()]


@pytest.fixture
def env(zygote: Zygote, tmp_path: Path) -> Iterator[dict[str, Any]]:
    require_tools("qemu-img", "qemu-nbd")
    home, work = tmp_path / "home", tmp_path / "work"
    work.mkdir()
    canary = work / "canary.bin"
    canary.write_bytes(random.Random(99).randbytes(256 << 10))
    # Random pieces, no guest OS the audit can read: every publish into g/d (generalized) gives
    # --allow-unaudited, so what refuses a hostile image below is the check meant for it, not the audit.
    good = write_raw(work / "good.raw", DISK, random_pieces(random.Random(2), DISK, 6))
    key = work / "id.pub"
    key.write_text(fake_ssh_key() + "\n")
    for argv in (["gallery", "create", "g"],
                 ["definition", "create", "g/d", "--publisher", "p", "--offer", "o", "--sku", "s",
                  "--os-type", "linux", "--os-state", "generalized"],
                 ["publish", "g/d", "--version", "1.0.0", "--os-disk", str(good), "--allow-unaudited"],
                 ["vm", "new", "web", "--image", "g/d@1.0.0", "--ssh-key", str(key)]):
        done = zygote.run(argv, home=home)
        assert done.status == 0, done.describe()
    log = work / "shim.log"
    shims = make_shims(work / "shims")
    yield {"home": home, "work": work, "canary": canary, "good": good, "log": log,
           "env": {"PATH": f"{shims}:{os.environ['PATH']}", "IMGTOOL_TEST_SHIM_LOG": str(log)},
           "images": [*corpus(), *canary_images(work / "canary-images", canary)]}


def needles(canary: Path) -> list[bytes]:
    data = canary.read_bytes()
    passwd = Path("/etc/passwd").read_bytes()
    return [data[i:i + 64] for i in range(0, len(data), len(data) // 8)] + [passwd[:48]]


def test_every_hostile_image_is_refused_and_nothing_is_read(zygote: Zygote, env: dict[str, Any]) -> None:
    home, log = env["home"], env["log"]
    before = fingerprint(home)
    refused = 0
    for n, image in enumerate(env["images"]):
        for argv in (["capture", str(image)],
                     ["publish", "g/d", "--version", f"9.0.{n}", "--os-disk", str(image), "--allow-unaudited"],
                     ["publish", "g/d", "--version", f"9.1.{n}", "--os-disk", str(env["good"]), "--allow-unaudited",
                      "--data-disk", f"0={image}"]):
            done = zygote.run(argv, home=home, env=env["env"], kill_after=120)
            assert done.status in (2, 5) and done.one_line_error(), done.describe()
            assert image.name in done.stderr, done.describe()
            assert fingerprint(home) == before, f"{image.name}: {argv[0]} changed the home"
            assert shim_calls(log) == [], f"{image.name}: a QEMU tool ran: {shim_calls(log)}"
            refused += 1
    assert stored_bytes_contain(home, needles(env["canary"])) == []
    record_figures("hostile images", {"images": len(env["images"]), "refusals (capture + publish x2)": refused})
    assert len(env["images"]) >= 68


def nested_images(folder: Path, canary: Path) -> list[Path]:
    """Clean containers whose guest data is an image naming the canary (made by qemu-img convert)."""
    folder.mkdir()
    descriptor = (f'# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\n'
                  f'createType="monolithicFlat"\nRW 512 FLAT "{canary}" 0\n').encode()
    inner = folder / "inner.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-u", "-b", str(canary), "-F", "raw", str(inner),
                    "1M"], check=True, capture_output=True)
    made = []
    for outer, content in (("qcow2", descriptor), ("vmdk", inner.read_bytes()), ("vpc", descriptor),
                           ("vhdx", inner.read_bytes())):
        raw = write_raw(folder / f"guest-{outer}.raw", DISK, {0: content})
        image = folder / f"nested-in-{outer}.{outer}"
        subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", outer, str(raw), str(image)], check=True)
        raw.unlink()
        made.append(image)
    inner.unlink()
    return made


def test_nested_images_are_refused_and_what_they_name_is_never_opened(zygote: Zygote,
                                                                       env: dict[str, Any]) -> None:
    """A container whose guest data is an image naming the canary: refused before anything is stored.

    qemu-img and qemu-nbd do run here (on the outer image only: the guest's first MiB is read
    through them), so the shim log must name no file but the image itself.
    """
    home, log, canary = env["home"], env["log"], env["canary"]
    images = nested_images(env["work"] / "nested", canary)
    for n, image in enumerate(images):
        for argv in (["capture", str(image)],
                     ["publish", "g/d", "--version", f"8.0.{n}", "--os-disk", str(image), "--allow-unaudited"],
                     ["publish", "g/d", "--version", f"8.1.{n}", "--os-disk", str(env["good"]), "--allow-unaudited",
                      "--data-disk", f"0={image}"]):
            before = fingerprint(home)
            done = zygote.run(argv, home=home, env=env["env"], kill_after=120)
            assert done.status == 5 and done.one_line_error(), done.describe()
            assert image.name in done.stderr and "nested image" in done.stderr, done.describe()
            changed = fingerprint(home).items() ^ before.items()
            # The nested check runs while each disk is captured, so a publish whose data disk is nested
            # has already leased its good OS disk; it takes the lease back, which only the log records.
            allowed = {"store/log/names.log"} if "--data-disk" in argv else set()
            assert {k for k, _ in changed} <= allowed, f"{image.name}: {argv[0]} changed the home: {changed}"
    calls = shim_calls(log)
    assert calls, "the outer images were never read: the check did not run through qemu"
    assert not [args for _cpu, _mem, args in calls if str(canary) in args]
    assert stored_bytes_contain(home, needles(canary)) == []
    record_figures("nested images", {"images": len(images), "refusals (capture + publish x2)": 3 * len(images)})


def test_controls_the_shim_limits_and_the_canary_search(zygote: Zygote, env: dict[str, Any]) -> None:
    home, log, work = env["home"], env["log"], env["work"]
    # A good (compressed qcow2) image reaches qemu-img and qemu-nbd, under run.UNTRUSTED's limits.
    compressible = b"imgtool hostile control " * 40000  # compressed clusters are decoded by qemu-nbd
    raw = write_raw(work / "control.raw", DISK, {0: env["canary"].read_bytes(), 1 << 20: compressible})
    image = work / "control.qcow2"
    subprocess.run(["qemu-img", "convert", "-c", "-f", "raw", "-O", "qcow2", str(raw), str(image)], check=True)
    done = zygote.run(["capture", str(image)], home=home, env=env["env"])
    assert done.status == 0, done.describe()
    calls = shim_calls(log)
    tools = {args.split(" ", 1)[0]: (cpu, memory) for cpu, memory, args in calls}
    assert {"map", "--read-only"} <= set(tools), calls
    untrusted = run.UNTRUSTED
    assert untrusted.cpu_seconds is not None and untrusted.address_space is not None
    assert tools["map"] == (str(untrusted.cpu_seconds), str(untrusted.address_space // 1024))
    nbd_limits = nbd.limits_for(DISK)
    assert tools["--read-only"] == (str(nbd_limits.cpu_seconds), str(untrusted.address_space // 1024))
    # The canary search finds the canary once an image that holds it is stored.
    assert stored_bytes_contain(home, needles(env["canary"]))[:1]


def test_inspection_comes_before_any_qemu_tool(env: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    order: list[str] = []
    inspect, real_run, real_spawn = formats.inspect, run.run, run.spawn

    def spy_inspect(*args: Any, **kwargs: Any) -> Any:
        order.append("inspect")
        return inspect(*args, **kwargs)

    def spy_run(argv: Any, **kwargs: Any) -> Any:
        order.append(f"run {run.argv_strings(argv)[0]}")
        return real_run(argv, **kwargs)

    def spy_spawn(argv: Any, **kwargs: Any) -> Any:
        order.append(f"spawn {run.argv_strings(argv)[0]}")
        return real_spawn(argv, **kwargs)

    monkeypatch.setattr(formats, "inspect", spy_inspect)
    monkeypatch.setattr(run, "run", spy_run)
    monkeypatch.setattr(run, "spawn", spy_spawn)
    home = Home.at(env["home"])
    sources.capture(home, str(env["good"]), versions=version_disks(home))
    assert order[0] == "inspect" and "run qemu-img" in order[1:], order
    order.clear()
    with pytest.raises(UnsafeImage):
        sources.capture(home, str(CORPUS / "qcow2-backing-passwd.qcow2"), versions=version_disks(home))
    assert order == ["inspect"]
