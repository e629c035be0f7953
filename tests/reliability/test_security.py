"""Security of what is stored: private folders, private secrets, no secret in output, and no
name that becomes a path without validation.

- After a workload that touches every kind of folder (publish with a data disk, gc, a VM with
  user-data, a snapshot, verify --repair), run with umask 000 so nothing relies on the
  user's umask: every folder of the home is 0700, every file of a VM (disks, snapshots, record,
  seed) is 0600, and the only files that hold the user-data or the SSH key are the seed ISOs.
- The user-data secret and the key never appear in stdout, stderr (also with --debug), --json
  output or the name log; a private key passed by mistake is not echoed in the error.
- Path traversal through every name a command takes (gallery, definition, version, VM,
  snapshot, capture sources, digests): refused (exit 2, or 3 when another part of the reference
  is looked up first and does not exist), and nothing outside the home is
  created, changed or removed -- a sentinel folder beside the home stays byte for byte.
"""

from __future__ import annotations

import json
import random
import stat
from pathlib import Path

import pytest

from store.errors import InvalidArgument
from store.layout import Layout
from tests.conftest import require_tools
from tests.reliability.harness import Run, Zygote, fake_ssh_key, fingerprint, random_pieces, write_raw

pytestmark = [pytest.mark.integration, pytest.mark.campaign]

SECRET = f"s3cret-{random.Random(77).getrandbits(64):016x}"
USER_DATA = f"#cloud-config\nchpasswd:\n  list: |\n    admin:{SECRET}\n  expire: false\n"
TRAVERSALS = ["..", "../outside", "../../outside", "a/../../outside", "/tmp/outside", "./x", "x/.", "%2e%2e",
              "..\\outside", "\u2025", "\uff0e\uff0e", "x/../..", "../outside/victim", "\x00../x"]


def ok(run: Run) -> Run:
    assert run.status == 0, run.describe()
    return run


@pytest.fixture
def world(zygote: Zygote, tmp_path: Path) -> dict[str, Path]:
    """A home beside a sentinel folder, built with umask 000. The disks are random pieces, no guest OS the
    audit can read: g/d (generalized) takes them with --allow-unaudited."""
    require_tools("qemu-img")
    home, work, outside = tmp_path / "home", tmp_path / "work", tmp_path / "outside"
    work.mkdir()
    (outside / "victim").mkdir(parents=True)
    (outside / "victim" / "precious.txt").write_text("must survive\n")
    rng = random.Random(3)
    files = {"os": write_raw(work / "os.raw", 4 << 20, random_pieces(rng, 4 << 20, 5)),
             "data": write_raw(work / "data.raw", 2 << 20, random_pieces(rng, 2 << 20, 3)),
             "key": work / "id.pub", "user_data": work / "user-data"}
    files["key"].write_text(fake_ssh_key() + "\n")
    files["user_data"].write_text(USER_DATA)
    for argv in (["gallery", "create", "g"],
                 ["definition", "create", "g/d", "--publisher", "p", "--offer", "o", "--sku", "s",
                  "--os-type", "linux", "--os-state", "generalized"],
                 ["publish", "g/d", "--version", "1.0.0", "--os-disk", str(files["os"]), "--allow-unaudited",
                  "--data-disk", f"2={files['data']}"],
                 ["capture", str(files["data"])],
                 ["vm", "new", "web", "--image", "g/d@1.0.0", "--ssh-key", str(files["key"]),
                  "--user-data", str(files["user_data"]), "--admin-user", "admin"],
                 ["vm", "snapshot", "web", "before"],
                 ["version", "list", "g/d"],  # writes the version index cache
                 ["gc", "--keep-captures", "0"],
                 ["verify", "--repair"]):
        ok(zygote.run(argv, home=home, umask=0))
    return {"home": home, "work": work, "outside": outside, **files}


def test_folders_private_and_secrets_only_in_0600_seeds(world: dict[str, Path]) -> None:
    home = world["home"]
    key_blob = world["key"].read_text().split()[1].encode()
    holders = []
    for path in [home, *home.rglob("*")]:
        mode = stat.S_IMODE(path.lstat().st_mode)
        if path.is_dir() and not path.is_symlink():
            assert mode == 0o700, f"{path} is {mode:o}"
        elif path.is_file():
            data = path.read_bytes()
            if SECRET.encode() in data or key_blob in data:
                holders.append(path)
                assert mode == 0o600, f"{path} holds a secret with mode {mode:o}"
            if "vms" in path.relative_to(home).parts and not path.name.startswith("."):
                # VM disks (a booted guest writes keys into them), records, seeds, snapshots
                assert mode == 0o600, f"{path} is {mode:o}"
    # The seed, and the inputs it is rebuilt from at each start (networks and shares change it): both 0600.
    assert sorted(p.name for p in holders) == ["provisioning.json", "seed.iso"], holders


def test_no_secret_in_output_or_logs(zygote: Zygote, world: dict[str, Path]) -> None:
    home = world["home"]
    key_blob = world["key"].read_text().split()[1]
    outputs = [
        ok(zygote.run(["--json", "--debug", "vm", "new", "api", "--image", "g/d@1.0.0", "--ssh-key",
                       str(world["key"]), "--user-data", str(world["user_data"])], home=home)),
        ok(zygote.run(["--json", "vm", "show", "api"], home=home)),
        ok(zygote.run(["vm", "show", "api"], home=home)),
        ok(zygote.run(["--json", "vm", "list"], home=home)),
        ok(zygote.run(["--json", "--debug", "verify", "--deep"], home=home)),
    ]
    for run in outputs:
        for text in (run.stdout, run.stderr):
            assert SECRET not in text and key_blob not in text, run.describe()
    json.loads(outputs[1].stdout)  # really JSON
    log = (home / "store" / "log" / "names.log").read_text()
    assert SECRET not in log and key_blob not in log
    # A private key given by mistake is refused without being echoed.
    private = world["work"] / "id"
    private.write_text(f"-----BEGIN OPENSSH PRIVATE KEY-----\n{SECRET}\n-----END OPENSSH PRIVATE KEY-----\n")
    refused = zygote.run(["--json", "vm", "new", "oops", "--image", "g/d@1.0.0", "--ssh-key", str(private)],
                         home=home)
    assert refused.status == 2 and refused.one_line_error(), refused.describe()
    assert SECRET not in refused.stdout + refused.stderr


def test_no_name_becomes_a_path_without_validation(zygote: Zygote, world: dict[str, Path]) -> None:
    home, outside = world["home"], world["outside"]
    root = home.parent
    around = {p.name for p in root.iterdir()}
    sentinel = fingerprint(outside)
    before = fingerprint(home)
    for bad in TRAVERSALS:
        for argv in (["gallery", "create", bad], ["gallery", "delete", bad], ["gallery", "show", bad],
                     ["definition", "create", f"g/{bad}", "--publisher", "p", "--offer", "t", "--sku", "s",
                      "--os-type", "linux", "--os-state", "generalized"],
                     ["definition", "delete", f"g/{bad}"], ["definition", "show", f"{bad}/d"],
                     ["version", "delete", f"g/d@{bad}"], ["version", "show", f"{bad}/d@1.0.0"],
                     ["publish", f"g/{bad}", "--version", "2.0.0", "--os-disk", str(world["os"])],
                     ["vm", "new", bad, "--image", "g/d@1.0.0", "--ssh-key", str(world["key"])],
                     ["vm", "delete", bad], ["vm", "start", bad], ["vm", "stop", bad], ["vm", "show", bad],
                     ["vm", "console", bad], ["vm", "snapshot", "web", bad], ["vm", "snapshot", bad, "s"],
                     ["capture", f"vm:{bad}"], ["capture", f"snapshot:web/{bad}"],
                     ["capture", f"snapshot:{bad}/before"], ["capture", f"blake3:{bad}"],
                     ["publish", "g/d", "--version", "2.0.0", "--os-disk", f"blake3:{bad}"]):
            done = zygote.run(argv, home=home)
            # refused as malformed (2) or, where another part is looked up first, as not found (3)
            assert done.status in (2, 3) and done.one_line_error(), done.describe()
        assert fingerprint(outside) == sentinel, f"{bad!r} reached outside the home"
        assert {p.name for p in root.iterdir()} == around, f"{bad!r} created something beside the home"
        after = fingerprint(home)
        assert {k for k in before.keys() ^ after.keys() if not k.startswith("vms/.")} == set(), bad
    # The store's own path builders validate too (names and digests from records, not only from users).
    layout = Layout(home / "store")
    for bad in TRAVERSALS:
        with pytest.raises(InvalidArgument):
            layout.name("versions", "g", bad)
        with pytest.raises(InvalidArgument):
            layout.manifest(bad)
