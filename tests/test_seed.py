"""The NoCloud seed: documents, validation, and the ISO read back the way a guest would."""

from __future__ import annotations

import base64
import email
import io
import os
import re
import stat
from email.message import Message
from pathlib import Path

import blake3
import pycdlib
import pytest

from imgtool.errors import InvalidArgument
from imgtool.tools import run
from imgtool.vm import seed
from imgtool.vm.seed import Provisioning
from tests.conftest import require_tools


def pubkey(kind: str = "ssh-ed25519", comment: str = "alice@x", blob_kind: str | None = None) -> str:
    """A well-formed public key line (the blob starts with its type, like a real one)."""
    name = (blob_kind or kind).encode()
    blob = len(name).to_bytes(4, "big") + name + (32).to_bytes(4, "big") + bytes(range(32))
    return f"{kind} {base64.b64encode(blob).decode()} {comment}".rstrip()


def prov(**changes: object) -> Provisioning:
    fields: dict[str, object] = {
        "instance_id": "iid-0123abcd",
        "hostname": "web1",
        "admin_user": "alice",
        "ssh_keys": (pubkey(),),
    }
    fields.update(changes)
    return Provisioning(**fields)  # type: ignore[arg-type]


def parse(document: str) -> Message:
    return email.message_from_string(document)


def parts(document: str) -> list[Message]:
    message = parse(document)
    assert message.is_multipart()
    payload = message.get_payload()
    assert isinstance(payload, list)
    found = [part for part in payload if isinstance(part, Message)]
    assert len(found) == len(payload)
    return found


def body(part: Message) -> str:
    raw = part.get_payload(decode=True)
    assert isinstance(raw, bytes)
    return raw.decode()


# --- documents --------------------------------------------------------------


def test_instance_ids_are_fresh_and_well_formed() -> None:
    ids = {seed.new_instance_id() for _ in range(50)}
    assert len(ids) == 50
    assert all(re.fullmatch(r"iid-[0-9a-f]{32}", i) for i in ids)


def test_meta_data_is_exactly_two_lines() -> None:
    assert seed.meta_data(prov()) == 'instance-id: "iid-0123abcd"\nlocal-hostname: "web1"\n'


def test_cloud_config_has_the_documented_shape() -> None:
    key = pubkey()
    expected = (
        "#cloud-config\n"
        'hostname: "web1"\n'
        "users:\n"
        '  - name: "alice"\n'
        '    sudo: "ALL=(ALL) NOPASSWD:ALL"\n'
        '    shell: "/bin/sh"\n'
        "    ssh_authorized_keys:\n"
        f'      - "{key}"\n'
    )
    assert seed.user_data(prov(ssh_keys=(key,))) == expected


def test_several_keys_one_line_each_and_no_key_list_without_keys() -> None:
    keys = (pubkey(), pubkey("ecdsa-sha2-nistp256", "bob"), pubkey("sk-ssh-ed25519@openssh.com", ""))
    text = seed.user_data(prov(ssh_keys=keys))
    assert [line for line in text.splitlines() if line.startswith("      - ")] == [f'      - "{k}"' for k in keys]
    assert "ssh_authorized_keys" not in seed.user_data(prov(ssh_keys=()))


# --- merging the user's own user-data ---------------------------------------


@pytest.mark.parametrize(
    ("document", "content_type"),
    [
        ("#cloud-config\npackages: [htop]\n", "text/cloud-config"),
        ("#!/bin/sh\necho hello\n", "text/x-shellscript"),
        ("#cloud-boothook\necho early\n", "text/cloud-boothook"),
        ("#include\nhttp://example.invalid/cfg\n", "text/x-include-url"),
        ("#include-once\nhttp://example.invalid/cfg\n", "text/x-include-once-url"),
        ("#cloud-config-archive\n- type: text/cloud-config\n", "text/cloud-config-archive"),
        ("#part-handler\ndef list_types(): return []\n", "text/part-handler"),
        ("## template: jinja\n#cloud-config\nhostname: {{ v1.local_hostname }}\n", "text/jinja2"),
    ],
)
def test_user_document_becomes_the_second_part_with_its_type(document: str, content_type: str) -> None:
    merged = seed.user_data(prov(user_data=document))
    top = parse(merged)
    assert top.get_content_type() == "multipart/mixed"
    assert top["MIME-Version"] == "1.0"  # cloud-init only treats user-data with this header as MIME
    ours, theirs = parts(merged)
    assert ours.get_content_type() == "text/cloud-config"
    assert body(ours) == seed.cloud_config(prov())
    assert theirs.get_content_type() == content_type
    assert body(theirs) == document


def test_user_cloud_config_appends_lists_so_our_admin_survives() -> None:
    _, theirs = parts(seed.user_data(prov(user_data="#cloud-config\nusers: [{name: bob}]\n")))
    assert theirs["Merge-Type"] == "list(append)+dict(recurse_array)+str()"
    _, script = parts(seed.user_data(prov(user_data="#!/bin/sh\ntrue\n")))
    assert script["Merge-Type"] is None


def test_non_ascii_user_data_round_trips() -> None:
    document = "#!/bin/sh\necho 'héllo wörld ✓'\n"
    _, theirs = parts(seed.user_data(prov(user_data=document)))
    assert body(theirs) == document


def test_our_part_stays_readable_text() -> None:
    merged = seed.user_data(prov(user_data="#!/bin/sh\ntrue\n"))
    ours = parts(merged)[0]
    assert ours["Content-Transfer-Encoding"] == "7bit"
    assert seed.cloud_config(prov()) in merged


def test_user_multipart_parts_are_passed_through_after_ours() -> None:
    user_mime = seed.user_data(prov(hostname="inner", user_data="#!/bin/sh\necho inner\n"))
    with_merge = user_mime.replace(
        "Content-Type: text/cloud-config", "Merge-Type: dict()\nContent-Type: text/cloud-config"
    )
    merged = seed.user_data(prov(user_data=with_merge))
    ours, inner_config, inner_script = parts(merged)
    assert 'hostname: "web1"' in body(ours)
    assert 'hostname: "inner"' in body(inner_config)
    assert inner_config["Merge-Type"] == "dict()"  # the user's own choice is kept
    assert body(inner_script) == "#!/bin/sh\necho inner\n"

    plain = seed.user_data(prov(user_data=user_mime))
    assert parts(plain)[1]["Merge-Type"] == "list(append)+dict(recurse_array)+str()"


def test_single_part_mime_is_attached_as_is() -> None:
    document = "Content-Type: text/x-shellscript\nMIME-Version: 1.0\n\n#!/bin/sh\necho one\n"
    _, theirs = parts(seed.user_data(prov(user_data=document)))
    assert theirs.get_content_type() == "text/x-shellscript"
    assert body(theirs) == "#!/bin/sh\necho one\n"


@pytest.mark.parametrize("document", ["", "  \n", "packages: [htop]\n", "echo hi\n"])
def test_user_data_without_a_cloud_init_header_is_refused(document: str) -> None:
    with pytest.raises(InvalidArgument):
        seed.user_data(prov(user_data=document))


# --- validation -------------------------------------------------------------


@pytest.mark.parametrize("hostname", ["a", "web-1", "A0", "x" * 63, "1host"])
def test_good_hostnames(hostname: str) -> None:
    assert f'"{hostname}"' in seed.meta_data(prov(hostname=hostname))


@pytest.mark.parametrize("hostname", ["", "-web", "web-", "we_b", "web.example.com", "x" * 64, "web\n1", "wéb"])
def test_bad_hostnames_are_refused_with_the_rule(hostname: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        seed.meta_data(prov(hostname=hostname))
    assert "hostname" in str(caught.value)


@pytest.mark.parametrize("user", ["Alice", "1alice", "a" * 33, "al ice", "alice\n", "al:ice", ""])
def test_bad_user_names_are_refused(user: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        seed.user_data(prov(admin_user=user))
    assert "user" in str(caught.value)


@pytest.mark.parametrize("user", ["alice", "_svc", "a" * 32, "ops-1"])
def test_good_user_names(user: str) -> None:
    assert f'name: "{user}"' in seed.user_data(prov(admin_user=user))


@pytest.mark.parametrize(
    "key",
    [
        "ssh-ed25519",
        "AAAAC3NzaC1lZDI1NTE5AAAA",
        'from="10.0.0.1" ' + pubkey(),
        pubkey() + "\nssh-ed25519 AAAA evil",
        pubkey(comment="a\rb"),
        pubkey(blob_kind="ssh-rsa"),
        "ssh-ed25519 !!!notbase64",
        "rsa " + pubkey().split(" ")[1],
        "ssh-ed25519 AAAA",
    ],
)
def test_bad_keys_are_refused_without_echoing_them(key: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        seed.user_data(prov(ssh_keys=(pubkey(), key)))
    assert "SSH key #2" in str(caught.value)
    blob = key.split(" ")[1] if " " in key else key
    assert blob not in str(caught.value)


@pytest.mark.parametrize("instance_id", ["", "iid\n1", "-iid", "iid 1", "i" * 129])
def test_bad_instance_ids_are_refused(instance_id: str) -> None:
    with pytest.raises(InvalidArgument):
        seed.meta_data(prov(instance_id=instance_id))


# --- the ISO ----------------------------------------------------------------


def read_iso(path: Path) -> pycdlib.PyCdlib:
    iso = pycdlib.PyCdlib()
    iso.open(str(path))
    return iso


def iso_file(iso: pycdlib.PyCdlib, **where: str) -> str:
    out = io.BytesIO()
    iso.get_file_from_iso_fp(out, **where)
    return out.getvalue().decode()


def names(iso: pycdlib.PyCdlib, **where: str) -> set[str]:
    found = set()
    for child in iso.list_children(**where):
        if child.is_dot() or child.is_dotdot():
            continue
        if "rr_path" in where:
            found.add(child.rock_ridge.name().decode())
        elif "joliet_path" in where:
            found.add(child.file_identifier().decode("utf-16-be"))
        else:
            found.add(child.file_identifier().decode())
    return found


def test_seed_iso_reads_back_through_every_name_space(tmp_path: Path) -> None:
    p = prov(user_data="#!/bin/sh\necho secret-token\n")
    target = tmp_path / "seed.iso"
    seed.write_seed(target, p)
    iso = read_iso(target)
    try:
        assert iso.pvd.volume_identifier.decode().rstrip() == "cidata"
        assert names(iso, rr_path="/") == {"meta-data", "user-data"}
        assert names(iso, joliet_path="/") == {"meta-data", "user-data"}
        assert names(iso, iso_path="/") == {"METADATA.;1", "USERDATA.;1"}
        for where in ({"rr_path": "/meta-data"}, {"joliet_path": "/meta-data"}, {"iso_path": "/METADATA.;1"}):
            assert iso_file(iso, **where) == seed.meta_data(p)
        merged = iso_file(iso, rr_path="/user-data")
        assert iso_file(iso, joliet_path="/user-data") == merged
        assert body(parts(merged)[1]) == "#!/bin/sh\necho secret-token\n"
    finally:
        iso.close()


def test_seed_is_private_and_returns_only_its_digest(tmp_path: Path) -> None:
    old_umask = os.umask(0)  # a permissive umask must not widen the mode
    try:
        digest = seed.write_seed(tmp_path / "seed.iso", prov(user_data="#!/bin/sh\necho secret-token\n"))
    finally:
        os.umask(old_umask)
    mode = stat.S_IMODE((tmp_path / "seed.iso").stat().st_mode)
    assert mode == 0o600
    assert digest == "blake3:" + blake3.blake3((tmp_path / "seed.iso").read_bytes()).hexdigest()
    assert "secret-token" not in digest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seed.iso"]  # no temp file left


def test_rewriting_a_seed_replaces_it(tmp_path: Path) -> None:
    target = tmp_path / "seed.iso"
    first = seed.write_seed(target, prov(hostname="one"))
    second = seed.write_seed(target, prov(hostname="two"))
    assert first != second
    iso = read_iso(target)
    try:
        assert 'local-hostname: "two"' in iso_file(iso, rr_path="/meta-data")
    finally:
        iso.close()


def test_invalid_provisioning_writes_nothing(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument):
        seed.write_seed(tmp_path / "seed.iso", prov(hostname="bad_host"))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.integration
def test_linux_sees_the_cidata_label(tmp_path: Path) -> None:
    require_tools("blkid")
    seed.write_seed(tmp_path / "seed.iso", prov())
    result = run.run(["blkid", "-p", "-o", "export", tmp_path / "seed.iso"], timeout=30)
    fields = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    assert fields["TYPE"] == "iso9660"
    assert fields["LABEL"] == "cidata"


@pytest.mark.parametrize(("document", "found"), [
    ("#cloud-config\npackages:\n  - nginx\n runcmd: [ls\n", "YAML at line 4"),
    ("#cloud-config\nwrite_files:\n- path: /x\n  content: 'secret-token\n", "YAML at line"),
    ("#cloud-config\n- just\n- a list\n", "not a mapping"),
    ("Content-Type: text/cloud-config\nMIME-Version: 1.0\n\n#cloud-config\nusers: [a\n", "text/cloud-config part"),
])
def test_broken_cloud_config_is_refused_with_where_but_not_what(document: str, found: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        seed.user_data(prov(user_data=document))
    assert found in str(caught.value) and "secret-token" not in str(caught.value)


@pytest.mark.parametrize("document", ["#cloud-config\n", "#cloud-config\npackages: [htop]\n",
                                      "#!/bin/sh\nthis: is: not: yaml\n"])
def test_valid_or_non_yaml_user_data_passes(document: str) -> None:
    assert seed.user_data(prov(user_data=document))
