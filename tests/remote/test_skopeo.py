"""skopeo (an independent client) reads, copies and carries imgtool versions; imgtool pulls the copies."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest

from imgtool.remote import format as fmt
from imgtool.remote.pull import pull
from imgtool.remote.push import push
from store.verify import verify
from tests.conftest import require_tools
from tests.remote.helpers import add_remote, disk_bytes, exported, make_home, publish_bytes
from tests.remote.registry import Registry

pytestmark = pytest.mark.integration


def skopeo(*args: str) -> str:
    require_tools("skopeo")
    done = subprocess.run(["skopeo", "--insecure-policy", *args], capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_skopeo_inspects_copies_and_imgtool_pulls_the_copy(registry: Registry, registry_b: Registry,
                                                           tmp_path: Path) -> None:
    src = make_home(tmp_path / "a")
    data = disk_bytes(3 << 20, seed=30)
    publish_bytes(src, "team/base", "1.0.0", data)
    remote, target = add_remote(src, "a", f"{registry.url}/skopeo")
    [pushed] = push(src, remote, target, "team")
    repo = pushed.repository

    raw = skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{registry.host}/{repo}:1.0.0")
    assert "sha256:" + hashlib.sha256(raw.encode()).hexdigest() == pushed.manifest
    assert json.loads(raw)["artifactType"] == fmt.VERSION_TYPE

    skopeo("copy", "--src-tls-verify=false", "--dest-tls-verify=false",
           f"docker://{registry.host}/{repo}:1.0.0", f"docker://{registry_b.host}/{repo}:1.0.0")
    copied = skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{registry_b.host}/{repo}:1.0.0")
    assert "sha256:" + hashlib.sha256(copied.encode()).hexdigest() == pushed.manifest

    dst = make_home(tmp_path / "b", gallery_name="x")
    remote_b, target_b = add_remote(dst, "b", f"{registry_b.url}/skopeo")
    result = pull(dst, remote_b, target_b, "team/base@1.0.0")
    assert result.manifest == pushed.manifest
    assert exported(dst, "team/base@1.0.0", tmp_path / "b.raw") == bytes(data)


def test_skopeo_copies_to_a_layout_and_imgtool_pulls_from_it(registry: Registry, tmp_path: Path) -> None:
    src = make_home(tmp_path / "a")
    data = disk_bytes(2 << 20, seed=31)
    publish_bytes(src, "team/base", "1.0.0", data)
    remote, target = add_remote(src, "a", f"{registry.url}/tolayout")
    [pushed] = push(src, remote, target, "team")
    layout = tmp_path / "usb"
    (layout / "team").mkdir(parents=True)  # skopeo creates only the last folder
    skopeo("copy", "--src-tls-verify=false", f"docker://{registry.host}/{pushed.repository}:1.0.0",
           f"oci:{layout}/team/base:1.0.0")

    dst = make_home(tmp_path / "b", gallery_name="x")
    remote_l, target_l = add_remote(dst, "usb", f"oci-layout:{layout}")
    result = pull(dst, remote_l, target_l, "team/base@latest")
    assert result.manifest == pushed.manifest and result.tag == "1.0.0"
    assert exported(dst, "team/base@1.0.0", tmp_path / "b.raw") == bytes(data)
    assert verify(dst.store, deep=True).ok


def test_imgtool_layout_push_is_carried_on_by_skopeo(registry_b: Registry, tmp_path: Path) -> None:
    src = make_home(tmp_path / "a")
    data = disk_bytes(2 << 20, seed=32)
    publish_bytes(src, "team/base", "1.0.0", data)
    publish_bytes(src, "team/base", "1.1.0", disk_bytes(2 << 20, seed=33))
    layout = tmp_path / "usb"
    remote, target = add_remote(src, "usb", f"oci-layout:{layout}")
    first = push(src, remote, target, "team")
    assert [r.status for r in push(src, remote, target, "team")] == ["present", "present"]
    skopeo("copy", "--dest-tls-verify=false", f"oci:{layout}/team/base:1.0.0",
           f"docker://{registry_b.host}/fromusb/team/base:1.0.0")

    dst = make_home(tmp_path / "b", gallery_name="x")
    remote_b, target_b = add_remote(dst, "b", f"{registry_b.url}/fromusb")
    result = pull(dst, remote_b, target_b, "team/base@1.0.0")
    assert result.manifest == first[0].manifest
    assert exported(dst, "team/base@1.0.0", tmp_path / "b.raw") == bytes(data)
