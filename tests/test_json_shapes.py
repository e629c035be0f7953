"""Every command's --json output is exactly one JSON document with the documented keys
(imgtool/flows/shapes.py KEYS, docs/GUIDE.md "JSON output"), on success and on error, with --json
before or after the command."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any

import pytest

from imgtool.flows.shapes import KEYS
from tests.cli import Cli
from tests.conftest import require_tools
from tests.reliability.harness import fake_ssh_key, random_pieces, write_raw

pytestmark = pytest.mark.integration

# The disks are random pieces, no guest OS the audit can read: publishes give --allow-unaudited.
DEFINE = ["--publisher", "p", "--offer", "o", "--sku", "s", "--os-type", "linux", "--os-state", "generalized"]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    require_tools("qemu-img")
    root = tmp_path_factory.mktemp("shapes")
    cli = Cli(root / "home")
    disk = write_raw(root / "os.raw", 4 << 20, random_pieces(random.Random(3), 4 << 20, 4))
    data = write_raw(root / "data.raw", 2 << 20, random_pieces(random.Random(4), 2 << 20, 2))
    key = root / "id.pub"
    key.write_text(fake_ssh_key() + "\n")
    for argv in (["gallery", "create", "g"], ["definition", "create", "g/d", *DEFINE],
                 ["publish", "g/d", "--version", "1.0.0", "--os-disk", str(disk), "--allow-unaudited",
                  "--data-disk", f"0={data}"],
                 ["vm", "new", "web", "--image", "g/d@1.0.0", "--ssh-key", str(key)],
                 ["vm", "snapshot", "create", "web", "s1"]):
        cli(*argv)
    return {"cli": cli, "disk": str(disk), "data": str(data), "key": str(key), "root": root}


def one_document(stdout: str) -> Any:
    """The output parses as one JSON value and nothing else."""
    decoder = json.JSONDecoder()
    value, end = decoder.raw_decode(stdout.lstrip())
    assert stdout.lstrip()[end:].strip() == "", f"more than one document:\n{stdout}"
    return value


def has_keys(value: Any, noun: str) -> None:
    assert isinstance(value, dict), value
    missing = [k for k in KEYS[noun] if k not in value]
    assert not missing, f"{noun} lacks {missing}: {sorted(value)}"
    if noun in ("version", "version_summary"):
        assert value["ref"] == f"{value['gallery']}/{value['definition']}@{value['version']}"
        assert re.fullmatch(r"[0-9]+\.[0-9]+\.[0-9]+", value["version"])
        assert isinstance(value["latest"], bool)
        for disk in value["disks"]:
            has_keys(disk, "disk")
            assert disk["digest"].startswith("blake3:") and isinstance(disk["virtual_size"], int)
    if noun == "vm":
        assert value["state"] in ("stopped", "running", "paused", "unresponsive")
        assert value["ssh_port"] is None or isinstance(value["ssh_port"], int)


# (argv, noun of the result: "list:NOUN" for a list of them)
SUCCESS: list[tuple[list[str], str]] = [
    (["gallery", "list"], "list:gallery"),
    (["gallery", "show", "g"], "gallery"),
    (["gallery", "update", "g", "--description", "x"], "gallery"),
    (["definition", "list", "g"], "list:definition"),
    (["definition", "show", "g/d"], "definition"),
    (["definition", "update", "g/d", "--description", "y"], "definition"),
    (["version", "list", "g/d"], "list:version_summary"),
    (["version", "show", "g/d@1.0.0"], "version"),
    (["version", "show", "g/d@latest"], "version"),
    (["version", "resolve", "g/d"], "resolve"),
    (["version", "update", "g/d@1.0.0", "--end-of-life", "2099-01-01"], "version"),
    (["capture", "{disk}"], "capture"),
    (["capture", "g/d@1.0.0:0"], "capture"),
    (["vm", "list"], "list:vm"),
    (["vm", "show", "web"], "vm"),
    (["vm", "stop", "web"], "vm"),
    (["vm", "update", "web", "--memory", "1024"], "vm"),
    (["vm", "snapshot", "list", "web"], "list:snapshot"),
    (["vm", "console", "web"], "console"),
    (["verify"], "verify"),
    (["du"], "du"),
    (["version", "list", "g/d", "--deleted"], "any"),
    (["version", "users", "g/d@1.0.0"], "any"),
    (["remote", "list"], "any"),
    (["key", "list"], "any"),
    (["trust", "list"], "any"),
]

FAILURE: list[list[str]] = [
    ["gallery", "show", "nope"],
    ["gallery", "create", "g"],
    ["definition", "show", "g/nope"],
    ["version", "show", "g/d@9.9.9"],
    ["version", "list", "g/a/b"],
    ["publish", "g/d", "--version", "1.0.0", "--os-disk", "{disk}"],
    ["publish", "g/d", "--version", "2.0.0", "--os-disk", "g/d@1.0.0", "--data-disk", "0={data}"],
    ["capture", "/nonexistent.raw"],
    ["capture", "https://example.com/disk.qcow2"],
    ["vm", "show", "nope"],
    ["vm", "new", "x", "--image", "g/d@1.0.0", "--cpus", "0"],
    ["vm", "new", "x", "--image", "g/d@1.0.0", "--forward", "80:80"],
    ["vm", "ssh", "web"],
    ["vm", "console", "web", "--until", "READY"],
    ["vm", "snapshot", "restore", "web", "nope"],
    ["version", "export", "g/d@1.0.0", "{root}/out.vhdx"],
    ["gallery", "create"],  # a usage error
    ["no-such-command"],
    ["vm"],  # a group without its command
    ["remote", "show", "nope"],
    ["pull", "nope:g/d"],
    ["version", "check", "g/d@1.0.0"],  # the definition asks for no boot check
    ["version", "revoke", "g/d@1.0.0"],  # --reason is required
    ["version", "restore", "g/d@1.0.0"],  # not deleted
    ["key", "export", "nope"],
    ["network", "show", "nope"],
    ["network", "create", "n", "--subnet", "8.8.8.0/24"],
    ["vm", "cp", "web:/etc/hostname", "{root}"],
    ["up", "-f", "{root}/no-such.yaml"],
]


def _fill(argv: list[str], env: dict[str, Any]) -> list[str]:
    return [a.format(**env) for a in argv]


@pytest.mark.parametrize("where", ["before", "after"])
@pytest.mark.parametrize(("argv", "noun"), SUCCESS, ids=[" ".join(a) for a, _ in SUCCESS])
def test_success_is_one_document_with_the_documented_keys(env: dict[str, Any], argv: list[str], noun: str,
                                                          where: str) -> None:
    argv = _fill(argv, env)
    done = env["cli"](*(["--json", *argv] if where == "before" else [*argv, "--json"]))
    value = one_document(done.stdout)
    if noun == "any":
        assert isinstance(value, list | dict)
    elif noun.startswith("list:"):
        assert isinstance(value, list) and value, value
        for item in value:
            has_keys(item, noun[5:])
    elif noun in KEYS:
        has_keys(value, noun)
    else:
        assert isinstance(value, list | dict)


@pytest.mark.parametrize("argv", FAILURE, ids=[" ".join(a) for a in FAILURE])
def test_an_error_is_one_document_with_the_error_keys(env: dict[str, Any], argv: list[str]) -> None:
    done = env["cli"](*_fill(argv, env), "--json", ok=False)
    assert done.returncode not in (0, 70), done.stderr
    value = one_document(done.stdout)
    has_keys(value["error"], "error")
    assert value["error"]["exit_code"] == done.returncode
    assert "imgtool: error:" in done.stderr  # people still get the one line on stderr


def test_verify_on_a_damaged_store_prints_one_document(tmp_path: Path) -> None:
    require_tools("qemu-img")
    cli = Cli(tmp_path / "home")
    disk = write_raw(tmp_path / "os.raw", 4 << 20, random_pieces(random.Random(5), 4 << 20, 4))
    cli("gallery", "create", "g")
    cli("definition", "create", "g/d", *DEFINE)
    cli("publish", "g/d", "--version", "1.0.0", "--os-disk", str(disk), "--allow-unaudited")
    packs = [p for p in (tmp_path / "home" / "store").rglob("*") if p.is_file() and p.stat().st_size > 65536]
    assert packs
    for pack in packs:
        with open(pack, "r+b") as handle:
            handle.seek(pack.stat().st_size // 2)
            handle.write(b"\xff" * 64)
    done = cli("verify", "--deep", "--json", ok=False)
    value = one_document(done.stdout)
    assert value["ok"] is False and value["problems"]
    has_keys(value["error"], "error")
    assert value["error"]["exit_code"] == done.returncode != 0


def test_every_documented_noun_is_in_the_guide() -> None:
    guide = (Path(__file__).parent.parent / "docs" / "GUIDE.md").read_text()
    for noun, keys in KEYS.items():
        for key in keys:
            assert f"`{key}`" in guide, f"docs/GUIDE.md does not document {noun}.{key}"
