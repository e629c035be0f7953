"""Accelerator choice: the probe guest really runs, the answer is cached and re-probed when the host changes."""

from __future__ import annotations

import json
import os
import signal
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from imgtool.errors import InvalidArgument, ToolMissing
from imgtool.tools import accel, run
from imgtool.tools.ports import free_port
from tests.conftest import require_tools

# --- the boot sector --------------------------------------------------------


def test_boot_sector_is_a_bootable_mbr_carrying_the_marker() -> None:
    sector = accel.boot_sector()
    assert len(sector) == 512
    assert sector[510:] == b"\x55\xaa"
    assert accel.MARKER + b"\r\n\x00" in sector
    assert accel.WORK_LOOPS.to_bytes(4, "little") in sector  # the work loop is there
    with pytest.raises(ValueError, match="too long"):
        accel.boot_sector(b"x" * 500)


@pytest.mark.integration
@pytest.mark.boot
def test_probe_guest_prints_the_marker_under_tcg(tmp_path: Path) -> None:
    require_tools("qemu-system-x86_64")
    assert accel.probe("tcg", tmp_path)
    assert accel.MARKER in (tmp_path / "accel-probe.out").read_bytes()


@pytest.mark.integration
def test_probe_with_an_unknown_accelerator_is_false(tmp_path: Path) -> None:
    require_tools("qemu-system-x86_64")
    assert not accel.probe("bogus", tmp_path)


def test_probe_never_passes_option_strings_to_qemu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_spawn(argv: Sequence[run.Arg], **kwargs: Any) -> run.Background:
        raise AssertionError(f"spawned {argv}")

    monkeypatch.setattr(run, "spawn", no_spawn)
    assert not accel.probe("tcg,thread=single", tmp_path)
    assert not accel.probe("", tmp_path)


@pytest.mark.integration
@pytest.mark.boot
def test_probe_is_false_when_the_guest_dies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    require_tools("qemu-system-x86_64")
    real_spawn = run.spawn

    def spawn_and_kill(argv: Sequence[run.Arg], **kwargs: Any) -> run.Background:
        guest = real_spawn(argv, **kwargs)
        os.kill(guest.pid, signal.SIGKILL)
        return guest

    monkeypatch.setattr(run, "spawn", spawn_and_kill)
    assert not accel.probe("tcg", tmp_path)


@pytest.mark.integration
@pytest.mark.boot
def test_probe_is_false_when_the_guest_is_too_slow(tmp_path: Path) -> None:
    require_tools("qemu-system-x86_64")
    # No guest prints within zero seconds: this is the path a crippled KVM takes.
    assert not accel.probe("tcg", tmp_path, timeout=0.0)


# --- choosing and caching ---------------------------------------------------


class FakeHost:
    """The probe seam and the host facts choose_accel reads, under test control."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, *, kvm_works: bool = True) -> None:
        self.kvm_works = kvm_works
        self.kvm_present = True
        self.qemu = "QEMU emulator version 7.2.22"
        self.probes: list[str] = []
        monkeypatch.delenv(accel.ENV_VAR, raising=False)
        monkeypatch.setattr(accel, "probe", self.probe)
        monkeypatch.setattr(accel, "kvm_usable", lambda: self.kvm_present)
        monkeypatch.setattr(accel, "qemu_version", lambda arch="x86_64": self.qemu)
        if os.uname().machine != "x86_64":
            pytest.skip("the probe guest is x86")

    def probe(self, name: str, workdir: Path, *, timeout: float = accel.PROBE_TIMEOUT) -> bool:
        self.probes.append(name)
        assert workdir.is_dir()
        return self.kvm_works and name == "kvm"


@pytest.mark.parametrize("works", [True, False])
def test_kvm_is_chosen_exactly_when_its_probe_succeeds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, works: bool
) -> None:
    host = FakeHost(monkeypatch, kvm_works=works)
    assert accel.choose_accel(tmp_path) == ("kvm" if works else "tcg")
    assert host.probes == ["kvm"]
    assert [p.name for p in tmp_path.iterdir()] == ["accel.json"]  # the probe's workdir is gone


def test_cache_hit_does_not_probe_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    host = FakeHost(monkeypatch, kvm_works=False)
    assert accel.choose_accel(tmp_path) == "tcg"
    assert accel.choose_accel(tmp_path) == "tcg"
    assert host.probes == ["kvm"]
    cached = json.loads((tmp_path / "accel.json").read_text())
    assert cached["accel"] == "tcg"
    assert cached["key"]["kernel"] == os.uname().release
    assert cached["key"]["qemu"] == host.qemu


def test_qemu_upgrade_re_probes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    host = FakeHost(monkeypatch, kvm_works=False)
    assert accel.choose_accel(tmp_path) == "tcg"
    host.qemu, host.kvm_works = "QEMU emulator version 9.0.0", True
    assert accel.choose_accel(tmp_path) == "kvm"
    assert host.probes == ["kvm", "kvm"]


def test_kernel_change_re_probes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    host = FakeHost(monkeypatch)
    accel.choose_accel(tmp_path)
    record = json.loads((tmp_path / "accel.json").read_text())
    record["key"]["kernel"] = "0.0.0-old"
    (tmp_path / "accel.json").write_text(json.dumps(record))
    accel.choose_accel(tmp_path)
    assert host.probes == ["kvm", "kvm"]


@pytest.mark.parametrize("garbage", ["", "{", "[]", '{"key": {}, "accel": "kvm"}', '{"accel": "xen"}'])
def test_unreadable_cache_means_probe_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, garbage: str) -> None:
    host = FakeHost(monkeypatch)
    (tmp_path / "accel.json").write_text(garbage)
    assert accel.choose_accel(tmp_path) == "kvm"
    assert host.probes == ["kvm"]


def test_no_kvm_device_means_tcg_without_probing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    host = FakeHost(monkeypatch)
    host.kvm_present = False
    assert accel.choose_accel(tmp_path) == "tcg"
    assert host.probes == []


def test_non_x86_guests_get_tcg_without_probing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    host = FakeHost(monkeypatch)
    assert accel.choose_accel(tmp_path, arch="aarch64") == "tcg"
    assert host.probes == []
    with pytest.raises(InvalidArgument):
        accel.choose_accel(tmp_path, arch="sparc")


def test_request_beats_environment_beats_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    host = FakeHost(monkeypatch, kvm_works=False)
    monkeypatch.setenv(accel.ENV_VAR, "kvm")
    assert accel.choose_accel(tmp_path) == "kvm"
    assert accel.choose_accel(tmp_path, requested="tcg") == "tcg"
    monkeypatch.setenv(accel.ENV_VAR, "tcg")
    assert accel.choose_accel(tmp_path, requested="kvm") == "kvm"
    assert accel.choose_accel(tmp_path) == "tcg"
    assert host.probes == []


@pytest.mark.parametrize("source", ["argument", "environment"])
def test_kvm_override_without_kvm_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str) -> None:
    host = FakeHost(monkeypatch)
    host.kvm_present = False
    with pytest.raises(InvalidArgument, match="kvm"):
        if source == "argument":
            accel.choose_accel(tmp_path, requested="kvm")
        else:
            monkeypatch.setenv(accel.ENV_VAR, "kvm")
            accel.choose_accel(tmp_path)


@pytest.mark.parametrize("bad", ["xen", "KVM", "tcg,thread=single"])
def test_unknown_overrides_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bad: str) -> None:
    FakeHost(monkeypatch)
    with pytest.raises(InvalidArgument):
        accel.choose_accel(tmp_path, requested=bad)
    monkeypatch.setenv(accel.ENV_VAR, bad)
    with pytest.raises(InvalidArgument):
        accel.choose_accel(tmp_path)


@pytest.mark.integration
@pytest.mark.boot
def test_real_choice_is_kvm_only_if_the_kvm_probe_passed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On this development machine the answer is tcg (KVM crawls); other hosts may differ."""
    require_tools("qemu-system-x86_64")
    monkeypatch.delenv(accel.ENV_VAR, raising=False)
    real_probe = accel.probe
    outcomes: dict[str, bool] = {}

    def spy(name: str, workdir: Path, *, timeout: float = accel.PROBE_TIMEOUT) -> bool:
        outcomes[name] = real_probe(name, workdir, timeout=timeout)
        return outcomes[name]

    monkeypatch.setattr(accel, "probe", spy)
    chosen = accel.choose_accel(tmp_path)
    assert chosen in {"kvm", "tcg"}
    if chosen == "kvm":
        assert outcomes == {"kvm": True}
    if outcomes:  # a probe ran (a usable /dev/kvm exists): its answer was cached
        assert json.loads((tmp_path / "accel.json").read_text())["accel"] == chosen


# --- firmware and ports -----------------------------------------------------


def test_ovmf_paths_found_or_missing(tmp_path: Path) -> None:
    with pytest.raises(ToolMissing) as caught:
        accel.ovmf_paths(tmp_path)
    assert "apt-get install ovmf" in caught.value.hint
    (tmp_path / "OVMF_CODE_4M.fd").write_bytes(b"code")
    (tmp_path / "OVMF_VARS_4M.fd").write_bytes(b"vars")
    assert accel.ovmf_paths(tmp_path) == (tmp_path / "OVMF_CODE_4M.fd", tmp_path / "OVMF_VARS_4M.fd")


@pytest.mark.integration
def test_host_ovmf_is_found() -> None:
    if not accel.OVMF_DIR.is_dir() and os.environ.get("IMGTOOL_REQUIRE_TOOLS") != "1":
        pytest.skip("OVMF not installed (apt-get install ovmf)")
    code, template = accel.ovmf_paths()
    assert code.is_file() and template.is_file()


def test_free_port_is_bindable_on_loopback() -> None:
    port = free_port()
    assert 1024 <= port <= 65535
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", port))
