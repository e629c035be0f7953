"""Remote URL rules and where credentials come from (pure files, no network)."""

from __future__ import annotations

import base64
import json
import stat
from pathlib import Path

import pytest

from imgtool.errors import AlreadyExists, InvalidArgument, NotFound
from imgtool.home import Home
from imgtool.remote import auth, remotes


@pytest.mark.parametrize(("url", "insecure", "normalised"), [
    ("https://GHCR.io/My-org", False, None),  # prefix must be lower case
    ("https://ghcr.io/my-org/", False, "https://ghcr.io/my-org"),
    ("http://127.0.0.1:5000", False, "http://127.0.0.1:5000"),
    ("http://localhost:5000/p", False, "http://localhost:5000/p"),
    ("http://[::1]:5000", False, "http://[::1]:5000"),
    ("http://registry.lan:5000", False, None),
    ("http://registry.lan:5000", True, "http://registry.lan:5000"),
    ("https://user:pw@ghcr.io", False, None),
    ("https://ghcr.io?x=1", False, None),
    ("ftp://ghcr.io", False, None),
    ("https://ghcr.io:99999", False, None),
    ("oci-layout:/media/usb/images/", False, "oci-layout:/media/usb/images"),
    ("oci-layout:relative", False, None),
])
def test_url_rules(url: str, insecure: bool, normalised: str | None) -> None:
    if normalised is None:
        with pytest.raises(InvalidArgument):
            remotes.check_url(url, insecure=insecure)
    else:
        assert remotes.check_url(url, insecure=insecure) == normalised


def test_remote_records(tmp_path: Path) -> None:
    home = Home.at(tmp_path / "h")
    added = remotes.add(home, "origin", "https://ghcr.io/org")
    assert (added.host, added.prefix, added.kind) == ("ghcr.io", "org", "registry")
    with pytest.raises(AlreadyExists):
        remotes.add(home, "origin", "https://ghcr.io/other")
    with pytest.raises(NotFound):
        remotes.add(home, "ca", "https://ghcr.io", ca_file=str(tmp_path / "missing.pem"))
    assert remotes.get(home, "origin").url == "https://ghcr.io/org"
    assert remotes.split_ref("origin:team/base@1.0.0") == ("origin", "team/base@1.0.0")
    with pytest.raises(InvalidArgument):
        remotes.split_ref("team/base")
    remotes.remove(home, "origin")
    with pytest.raises(NotFound, match="remote add"):
        remotes.get(home, "origin")


def _auth_file(path: Path, host: str, user: str, password: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    path.write_text(json.dumps({"auths": {host: {"auth": token}}}))


def test_credentials_lookup_order_and_own_file_mode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    user_home = tmp_path / "user"
    monkeypatch.setenv("HOME", str(user_home))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(tmp_path / "registry-auth.json"))
    home_root = tmp_path / "imgtool"
    assert auth.lookup("reg.example:5000", home_root) is None
    _auth_file(user_home / ".docker" / "config.json", "https://reg.example:5000/v1/", "docker", "d")
    assert auth.lookup("reg.example:5000", home_root) == auth.Credentials("docker", "d")
    _auth_file(tmp_path / "run" / "containers" / "auth.json", "reg.example:5000", "podman", "p")
    assert auth.lookup("reg.example:5000", home_root) == auth.Credentials("podman", "p")
    _auth_file(tmp_path / "registry-auth.json", "reg.example:5000", "skopeo", "s")
    assert auth.lookup("reg.example:5000", home_root) == auth.Credentials("skopeo", "s")
    path = auth.save(home_root, "REG.example:5000", auth.Credentials("mine", "m"))
    assert auth.lookup("reg.example:5000", home_root) == auth.Credentials("mine", "m")  # imgtool's own first
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert auth.forget(home_root, "reg.example:5000") and not auth.forget(home_root, "reg.example:5000")
    assert auth.lookup("reg.example:5000", home_root) == auth.Credentials("skopeo", "s")
    (tmp_path / "registry-auth.json").write_text("not json")  # another tool's broken file is skipped
    assert auth.lookup("reg.example:5000", home_root) == auth.Credentials("podman", "p")


def test_push_sources_name_the_versions_they_mean(tmp_path: Path) -> None:
    from imgtool.remote.push import versions_of
    from tests.remote.helpers import disk_bytes, make_home, publish_bytes

    home = make_home(tmp_path / "home")
    publish_bytes(home, "team/base", "1.0.0", disk_bytes(1 << 18, seed=1))
    publish_bytes(home, "team/base", "1.1.0", disk_bytes(1 << 18, seed=2))
    publish_bytes(home, "team/base", "2.0.0", disk_bytes(1 << 18, seed=3), exclude_from_latest=True)

    def names(source: str) -> list[str]:
        return [v.version for v, _ in versions_of(home, source)]

    assert names("team/base@latest") == ["1.1.0"]  # the one latest picks, not every version
    assert names("team/base@2.0.0") == ["2.0.0"]
    assert names("team/base") == names("team") == ["1.0.0", "1.1.0", "2.0.0"]
    with pytest.raises(NotFound):
        versions_of(home, "team/base@3.0.0")
