"""key import and key delete through the real command line: a key moved from one home to another signs
as the same key id; encrypted, foreign and duplicate keys are refused; a key a remote signs with is
kept unless --force (and then the remote stops signing by default)."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.cli import Cli


def test_a_key_moves_to_another_home(tmp_path: Path) -> None:
    laptop, ci = Cli(tmp_path / "laptop"), Cli(tmp_path / "ci")
    made = laptop.json("key", "generate", "release")
    assert isinstance(made, dict)
    key_file = tmp_path / "laptop" / "keys" / "release.key"
    imported = ci.json("key", "import", str(key_file))
    assert isinstance(imported, dict) and imported["name"] == "release" and imported["key_id"] == made["key_id"]
    assert stat.S_IMODE(os.stat(tmp_path / "ci" / "keys" / "release.key").st_mode) == 0o600
    assert ci("key", "export", "release").stdout == laptop("key", "export", "release").stdout
    again = ci("key", "import", str(key_file), "--name", "other", ok=False)  # one key, one name
    assert again.returncode == 4 and "already here as release" in again.stderr
    taken = ci("key", "import", str(key_file), ok=False)
    assert taken.returncode == 4


def test_foreign_encrypted_and_exposed_keys(tmp_path: Path) -> None:
    home = Cli(tmp_path / "home")
    ecdsa = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "p256.pem").write_bytes(ecdsa.private_bytes(serialization.Encoding.PEM,
                                                            serialization.PrivateFormat.PKCS8,
                                                            serialization.NoEncryption()))
    refused = home("key", "import", str(tmp_path / "p256.pem"), ok=False)
    assert refused.returncode == 2 and "not ed25519" in refused.stderr

    subprocess.run(["openssl", "genpkey", "-algorithm", "ed25519", "-out", str(tmp_path / "plain.pem")], check=True,
                   capture_output=True)
    subprocess.run(["openssl", "pkey", "-in", str(tmp_path / "plain.pem"), "-aes256", "-passout", "pass:x",
                    "-out", str(tmp_path / "locked.pem")], check=True, capture_output=True)
    refused = home("key", "import", str(tmp_path / "locked.pem"), ok=False)
    assert refused.returncode == 2 and "encrypted" in refused.stderr and "openssl pkey" in refused.stderr
    home("key", "generate", "mine")
    (tmp_path / "public.pem").write_text(home("key", "export", "mine").stdout)
    refused = home("key", "import", str(tmp_path / "public.pem"), ok=False)  # the public half: not a signing key
    assert refused.returncode == 2 and "not a PEM private key" in refused.stderr
    assert home("key", "import", str(tmp_path / "missing.key"), ok=False).returncode == 3

    os.chmod(tmp_path / "plain.pem", 0o644)
    done = home("key", "import", str(tmp_path / "plain.pem"), "--name", "ci")
    assert "readable by others" in done.stderr and "imported key ci" in done.stdout


def test_deleting_a_key_that_signs_a_remotes_pushes(tmp_path: Path) -> None:
    home = Cli(tmp_path / "home")
    made = home.json("key", "generate", "release")
    home("key", "generate", "spare")
    assert isinstance(made, dict)
    home("remote", "add", "origin", "http://127.0.0.1:9/team")
    home("trust", "signing-key", "origin", "release")
    refused = home("key", "delete", "release", ok=False)
    assert refused.returncode == 5 and "signs the pushes to origin" in refused.stderr and "--force" in refused.stderr
    assert "release" in home("key", "list").stdout

    by_id = home.json("key", "delete", str(made["key_id"])[:20], "--force")  # by an id prefix
    assert by_id == {"deleted": "release", "key_id": made["key_id"], "stopped_signing": ["origin"]}
    assert not (tmp_path / "home" / "keys" / "release.key").exists()
    trust = home.json("trust", "list", "origin")
    assert isinstance(trust, list) and trust[0]["signing_key"] is None
    assert home("key", "delete", "release", ok=False).returncode == 3
    assert home("key", "delete", "sha256:ffff", ok=False).returncode == 3
    home("key", "delete", "spare")
    assert home.json("key", "list") == []
