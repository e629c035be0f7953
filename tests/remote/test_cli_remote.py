"""The remote commands end to end, through the real command line, against real registries."""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import re
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli import Cli
from tests.conftest import require_tools
from tests.remote.conftest import PASSWORD, USER
from tests.remote.helpers import disk_bytes, make_home, publish_bytes
from tests.remote.registry import Registry, running

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def cli_for(home_root: Path, tmp_path: Path) -> Cli:
    # A private HOME: no auth file of the machine's user is ever read or written.
    return Cli(home_root, env={"HOME": str(tmp_path / "user"), "XDG_RUNTIME_DIR": str(tmp_path / "run"),
                               "REGISTRY_AUTH_FILE": ""})


def test_push_pull_versions_show_through_the_cli(registry: Registry, tmp_path: Path) -> None:
    src = make_home(tmp_path / "a")
    publish_bytes(src, "team/base", "1.0.0", disk_bytes(2 << 20, seed=20))
    publish_bytes(src, "team/base", "1.1.0", disk_bytes(2 << 20, seed=21), exclude_from_latest=True)
    a = cli_for(src.root, tmp_path)
    a("remote", "add", "origin", f"{registry.url}/cli")
    assert a.json("remote", "list")[0]["url"] == f"{registry.url}/cli"  # type: ignore[index]
    pushed = a.json("push", "team", "origin")
    assert [v["status"] for v in pushed["versions"]] == ["pushed", "pushed"]  # type: ignore[index]
    assert [v["ref"] for v in pushed["versions"]] == ["team/base@1.0.0", "team/base@1.1.0"]  # type: ignore[index]
    again = a.json("push", "team", "origin")
    assert [v["status"] for v in again["versions"]] == ["present", "present"]  # type: ignore[index]
    assert again["transfer"]["bytes_sent"] == 0  # type: ignore[index]

    listed = a.json("remote", "versions", "origin:team/base", "--explain")
    assert listed["latest"] == "1.0.0"  # type: ignore[index]
    assert "excluded" in a("remote", "versions", "origin:team/base", "--explain").stdout

    b = cli_for(tmp_path / "b", tmp_path)
    b("remote", "add", "origin", f"{registry.url}/cli")
    b("trust", "policy", "origin", "any")  # unsigned versions, accepted explicitly (tests/trust covers signed)
    pulled = b.json("pull", "origin:team/base")
    assert pulled["tag"] == "1.0.0" and pulled["status"] == "pulled"  # type: ignore[index]
    assert (pulled["ref"], pulled["version"]) == ("team/base@1.0.0", "1.0.0")  # type: ignore[index]
    shown = b("version", "show", "team/base@1.0.0").stdout
    assert "pulled from" in shown and pulled["manifest"][:19] in shown  # type: ignore[index]
    assert b.json("definition", "show", "team/base")["publisher"] == "acme"  # type: ignore[index]
    b("pull", "origin:team/base@1.1.0", "--as", "copy/base")
    assert b("verify", "--deep").returncode == 0


def test_errors_are_one_clear_line(registry: Registry, tmp_path: Path) -> None:
    a = cli_for(tmp_path / "a", tmp_path)
    bad = a("remote", "add", "x", "http://example.com/p", ok=False)
    assert bad.returncode == 2 and "--insecure" in bad.stderr
    a("remote", "add", "origin", registry.url)
    missing = a("pull", "origin:nobody/nothing@1.0.0", ok=False)
    assert missing.returncode == 3 and missing.stderr.startswith("imgtool: error: ")
    assert "Traceback" not in missing.stderr
    unknown = a("pull", "nope:team/base", ok=False)
    assert unknown.returncode == 3 and "remote add" in unknown.stderr


@contextlib.contextmanager
def web_page_server() -> Iterator[str]:
    """An HTTP server on 127.0.0.1 that is not a registry: every path is a 404 web page."""
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(404)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(b"<html>no such page</html>")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_a_missing_definition_layout_or_registry_is_not_an_empty_remote(registry: Registry, tmp_path: Path) -> None:
    src = make_home(tmp_path / "a")
    publish_bytes(src, "team/base", "1.0.0", disk_bytes(1 << 20, seed=22))
    a = cli_for(src.root, tmp_path)
    a("remote", "add", "origin", f"{registry.url}/missing")
    a("trust", "policy", "origin", "any")
    a("push", "team/base@1.0.0", "origin")
    assert [v["version"] for v in a.json("remote", "versions", "origin:team/base")["versions"]] == ["1.0.0"]  # type: ignore[index]
    typo = a("remote", "versions", "origin:team/bsae", ok=False)
    assert typo.returncode == 3 and "origin has no definition team/bsae" in typo.stderr
    assert a("pull", "origin:team/bsae", ok=False).returncode == 3
    a("remote", "add", "usb", f"oci-layout:{tmp_path / 'unmounted'}")
    gone = a("remote", "versions", "usb:team/base", ok=False)
    assert gone.returncode == 3 and "layout folder" in gone.stderr and "does not exist" in gone.stderr
    (tmp_path / "unmounted").mkdir()
    assert "usb has no definition team/base" in a("remote", "versions", "usb:team/base", ok=False).stderr
    with web_page_server() as url:
        a("remote", "add", "web", url)
        page = a("remote", "versions", "web:team/base", ok=False)
    assert page.returncode == 12 and "does not answer as an OCI registry" in page.stderr
    assert "Traceback" not in typo.stderr + gone.stderr + page.stderr


def test_htpasswd_login_wrong_password_and_missing_login(auth_registry: Registry, tmp_path: Path) -> None:
    src = make_home(tmp_path / "a")
    publish_bytes(src, "team/base", "1.0.0", disk_bytes(1 << 20, seed=22))
    a = cli_for(src.root, tmp_path)
    a("remote", "add", "secure", auth_registry.url)
    a("trust", "policy", "secure", "any")  # unsigned versions, accepted explicitly (tests/trust covers signed)
    anonymous = a("push", "team", "secure", ok=False)
    assert anonymous.returncode == 5 and "imgtool remote login secure" in anonymous.stderr

    def login(password: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "IMGTOOL_HOME": str(src.root), "HOME": str(tmp_path / "user")}
        return subprocess.run([sys.executable, "-m", "imgtool", "remote", "login", "secure", "--username", USER,
                               "--password-stdin"], input=password + "\n", env=env, capture_output=True,
                              text=True, timeout=60, check=False)

    wrong = login("not-the-password")
    assert wrong.returncode == 5 and "rejected the credentials" in wrong.stderr
    assert "not-the-password" not in wrong.stderr + wrong.stdout
    assert not (src.root / "auth.json").exists()
    assert login(PASSWORD).returncode == 0
    assert stat.S_IMODE((src.root / "auth.json").stat().st_mode) == 0o600
    assert a.json("push", "team", "secure")["versions"][0]["status"] == "pushed"  # type: ignore[index]
    import base64

    a("trust", "policy", "secure", "any")  # unsigned versions, accepted explicitly (tests/trust covers signed)
    for shown in (a("--debug", "--json", "push", "team", "secure"), a("--debug", "pull", "secure:team/base")):
        text = shown.stdout + shown.stderr
        assert "remote GET" in text or "remote HEAD" in text  # --debug logs the requests...
        assert PASSWORD not in text and base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode() not in text
        assert "authorization" not in text.lower()  # ...never a header
    debug = a("--debug", "--json", "remote", "show", "secure")
    assert PASSWORD not in debug.stdout + debug.stderr
    assert json.loads(debug.stdout)["logged_in_as"] == USER
    a("remote", "logout", "secure")
    assert a("pull", "secure:team/base", ok=False).returncode == 5


def test_docker_config_credentials_are_used(auth_registry: Registry, tmp_path: Path) -> None:
    import base64

    user_home = tmp_path / "user"
    (user_home / ".docker").mkdir(parents=True)
    token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    (user_home / ".docker" / "config.json").write_text(json.dumps({"auths": {auth_registry.host: {"auth": token}}}))
    src = make_home(tmp_path / "a")
    publish_bytes(src, "team/base", "1.0.0", disk_bytes(1 << 20, seed=23))
    a = cli_for(src.root, tmp_path)
    a("remote", "add", "secure", auth_registry.url + "/docker")
    assert a.json("push", "team", "secure")["versions"][0]["status"] == "pushed"  # type: ignore[index]


def test_replication_targets_states_and_retry(registry: Registry, tmp_path: Path) -> None:
    src = make_home(tmp_path / "a")
    publish_bytes(src, "team/base", "1.0.0", disk_bytes(1 << 20, seed=24))
    a = cli_for(src.root, tmp_path)
    a("remote", "add", "good", f"{registry.url}/replicas")
    with running() as later:
        port = later.port
    a("remote", "add", "down", f"http://127.0.0.1:{port}")
    disk = src.store.list_names("versions", "team", "base")[0][1]
    version = json.loads(json.dumps(src.store.get_manifest(disk)))
    published = a.json("publish", "team/base", "--version", "2.0.0", "--os-disk", version["disks"][0]["digest"],
                       "--allow-unaudited",  # random bytes: no guest OS the audit can read
                       "--replicate-to", "good,down")
    states = {r["target"]: r["state"] for r in published["replication"]}  # type: ignore[index]
    assert states == {"good": "completed", "down": "failed"}
    shown = a.json("version", "show", "team/base@2.0.0")["replication"]  # type: ignore[index]
    failed = next(r for r in shown if r["target"] == "down")
    assert failed["retry"] == "imgtool replicate team/base@2.0.0" and failed["error"]
    assert a("version", "show", "team/base@2.0.0").stdout.count("replica ") == 2
    assert a("replicate", ok=False).returncode == 12  # still down: recorded, not fatal to the version
    assert a.json("version", "show", "team/base@2.0.0")["ref"] == "team/base@2.0.0"  # type: ignore[index]
    with running() as back:
        a("version", "update", "team/base@2.0.0", "--no-replicate-to", "down")
        a("remote", "add", "back", back.url)
        a("version", "update", "team/base@2.0.0", "--replicate-to", "back")
        again = a.json("replicate", "team/base")
        assert isinstance(again, list)
        assert {o["target"]: o["state"] for o in again} == {"good": "completed", "back": "completed"}


def test_vm_new_from_a_remote_image_pulls_first(registry: Registry, tmp_path: Path) -> None:
    from tests.conftest import require_tools

    require_tools("qemu-img")
    from imgtool.gallery.galleries import create_definition
    from imgtool.gallery.model import Definition

    src = make_home(tmp_path / "a")
    create_definition(src, Definition("team", "spec", "acme", "spec", "v1", "linux", "specialized"))
    publish_bytes(src, "team/spec", "1.0.0", disk_bytes(1 << 20, seed=25))
    a = cli_for(src.root, tmp_path)
    a("remote", "add", "origin", f"{registry.url}/vmnew")
    a("push", "team/spec", "origin")
    b = cli_for(tmp_path / "b", tmp_path)
    b("remote", "add", "origin", f"{registry.url}/vmnew")
    b("trust", "policy", "origin", "any")  # unsigned versions, accepted explicitly (tests/trust covers signed)
    made = b.json("vm", "new", "dev1", "--image", "origin:team/spec@latest")
    assert made["image"] == "team/spec@1.0.0"  # type: ignore[index]
    assert b.json("version", "show", "team/spec@1.0.0")["provenance"]["pulled_from"]["remote"] == "origin"  # type: ignore[index]
    b.json("vm", "new", "dev2", "--image", "origin:team/spec@1.0.0")  # already here: nothing pulled again


def test_a_pushed_record_carries_no_publisher_paths(tmp_path: Path) -> None:
    require_tools("qemu-img")
    private = tmp_path / "private-folder-of-the-publisher"
    private.mkdir()
    disk = private / "golden.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "4M"], check=True)
    a = cli_for(tmp_path / "a", tmp_path)
    a("gallery", "create", "team")
    a("definition", "create", "team/base", "--publisher", "p", "--offer", "o", "--sku", "s", "--os-type", "linux",
      "--os-state", "generalized")
    a("publish", "team/base", "--version", "1.0.0", "--os-disk", str(disk))
    assert str(private) in json.dumps(a.json("version", "show", "team/base@1.0.0"))  # kept locally
    layout = tmp_path / "layout"
    a("remote", "add", "usb", f"oci-layout:{layout}")
    a("push", "team/base@1.0.0", "usb")
    blobs = [p.read_bytes() for p in layout.rglob("blobs/sha256/*") if p.stat().st_size < 1 << 20]
    configs = [b for b in blobs if b"imgtool-version-config" in b]
    assert configs and not any(str(private).encode() in b or b"private-folder" in b for b in blobs)
    record = json.loads(configs[0])["version"]
    source = record["disks"][0]["source"]
    assert source["kind"] == "file" and source["format"] == "qcow2" and source["name"] == "golden.qcow2"
    assert source["digest"] == record["disks"][0]["digest"] and "path" not in source
    assert record["provenance"]["os_disk"] == source and record["audit"]["source"] == "golden.qcow2"
    b = cli_for(tmp_path / "b", tmp_path)
    b("remote", "add", "usb", f"oci-layout:{layout}")
    b("trust", "policy", "usb", "any")
    b("pull", "usb:team/base@1.0.0")
    shown = b.json("version", "show", "team/base@1.0.0")
    assert str(private) not in json.dumps(shown) and b("verify", "--deep").returncode == 0
    b("push", "team/base@1.0.0", "usb")  # pushed on as it came: the same record, nothing changes


def test_a_revoked_version_travels_only_with_its_revocation(registry: Registry, tmp_path: Path) -> None:
    src = make_home(tmp_path / "a")
    publish_bytes(src, "team/base", "1.0.0", disk_bytes(1 << 20, seed=30))
    publish_bytes(src, "team/base", "1.1.0", disk_bytes(1 << 20, seed=31))
    publish_bytes(src, "team/base", "1.2.0", disk_bytes(1 << 20, seed=32))
    a = cli_for(src.root, tmp_path)
    url = f"{registry.url}/revoked-{os.getpid()}"
    a("remote", "add", "origin", url)
    a("key", "generate", "release")
    (tmp_path / "release.pub").write_text(a("key", "export", "release").stdout)
    a("trust", "signing-key", "origin", "release")
    a("push", "team/base@1.0.0", "origin")
    a("version", "revoke", "team/base@1.0.0", "--reason", "CVE-2026-0001 in openssl")  # pushed, then revoked
    a("version", "revoke", "team/base@1.2.0", "--reason", "broken boot")  # revoked, never pushed
    refused = a("push", "team/base", "origin", ok=False)
    assert refused.returncode == 5 and "team/base@1.0.0, team/base@1.2.0 are revoked here" in refused.stderr
    assert "--with-revocation" in refused.stderr
    assert [v["version"] for v in a.json("remote", "versions", "origin:team/base")["versions"]] == ["1.0.0"]  # type: ignore[index]
    pushed = a.json("push", "team/base", "origin", "--with-revocation")
    assert [v["status"] for v in pushed["versions"]] == ["updated", "pushed", "pushed"]  # type: ignore[index]

    b = cli_for(tmp_path / "b", tmp_path)
    b("remote", "add", "origin", url)
    b("trust", "add", "origin", str(tmp_path / "release.pub"))
    listed = b.json("remote", "versions", "origin:team/base", "--explain")
    assert listed["latest"] == "1.1.0"  # type: ignore[index]
    revoked = {v["version"]: v["revoked"] for v in listed["versions"]}  # type: ignore[index]
    assert "CVE-2026-0001" in revoked["1.0.0"] and "broken boot" in revoked["1.2.0"] and revoked["1.1.0"] is None
    assert b.json("pull", "origin:team/base@latest")["tag"] == "1.1.0"  # type: ignore[index]
    gone = b("pull", "origin:team/base@1.2.0", ok=False)
    assert gone.returncode == 5 and "revoked" in gone.stderr and "broken boot" in gone.stderr
    assert b("pull", "origin:team/base@1.0.0", ok=False).returncode == 5


def _documented_keys(row: str) -> set[str]:
    """The JSON keys a SHARING.md table row names (REF stands for ref, gallery, definition, version)."""
    keys = set(re.findall(r'"([a-z_]+)"', row.split("|", 2)[2]))
    return keys | ({"ref", "gallery", "definition", "version"} if "REF" in row else set())


def _keys(value: object) -> set[str]:
    if isinstance(value, dict):
        return set(value) | {k for v in value.values() for k in _keys(v)}
    if isinstance(value, list):
        return {k for v in value for k in _keys(v)}
    return set()


def test_sharing_md_json_table_matches_the_output(tmp_path: Path) -> None:
    rows = {line.split("`")[1]: line for line in (ROOT / "docs" / "SHARING.md").read_text().splitlines()
            if line.startswith("| `")}
    src = make_home(tmp_path / "a")
    publish_bytes(src, "team/base", "1.0.0", disk_bytes(1 << 20, seed=40))
    a = cli_for(src.root, tmp_path)
    layout = f"oci-layout:{tmp_path / 'layout'}"
    added = a.json("remote", "add", "usb", layout)
    b = cli_for(tmp_path / "b", tmp_path)
    b("remote", "add", "usb", layout)
    b("trust", "policy", "usb", "any")
    outputs = {"remote add": added, "push": a.json("push", "team", "usb"),
               "remote versions": a.json("remote", "versions", "usb:team/base"),
               "pull": b.json("pull", "usb:team/base"), "remote list": a.json("remote", "show", "usb")}
    for command, output in outputs.items():
        undocumented = _keys(output) - _documented_keys(rows[command])
        assert not undocumented, f"docs/SHARING.md does not name {undocumented} in `{command}`"
