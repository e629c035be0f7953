"""The real Debian image, built once a session (scripts/build-debian-image) and shared read-only by the
real-guest modules: each publishes it into a home of its own, none writes it."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import require_tools

ROOT = Path(__file__).resolve().parents[2]


def require_root_or_cache() -> None:
    # mmdebstrap needs root for the chroot; a cached image needs nothing.
    cache = Path(os.environ.get("IMGTOOL_TEST_IMAGE_CACHE", Path.home() / ".cache" / "imgtool-test-images"))
    if os.getuid() == 0 or any(cache.glob("debian12-bios-*.raw")):
        return
    message = "building the Debian image needs root (mmdebstrap)"
    if os.environ.get("IMGTOOL_REQUIRE_TOOLS") == "1":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_tools("mmdebstrap", "grub-mkimage", "mkfs.ext4", "sfdisk", "qemu-system-x86_64", "qemu-img",
                  "qemu-storage-daemon", "debugfs", "ssh", "ssh-keygen")
    require_root_or_cache()
    out = tmp_path_factory.mktemp("debian") / "debian12.raw"
    subprocess.run([str(ROOT / "scripts" / "build-debian-image"), str(out)], check=True, timeout=1200)
    return out
