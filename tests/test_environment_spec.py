"""imgtool.yaml validation: good files become typed records; each bad one is refused naming file, line and key."""

from __future__ import annotations

import textwrap
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from imgtool.environment import spec
from imgtool.environment.nodes import SpecError
from imgtool.errors import InvalidArgument, NotFound
from imgtool.vm.record import Forward
from imgtool.vm.shares import Share

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl alice@test\n"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    folder = tmp_path / "demo"
    (folder / "src").mkdir(parents=True)
    (folder / "docs").mkdir()
    (folder / "id.pub").write_text(KEY)
    (folder / "user-data").write_text("#cloud-config\npackages: [make]\n")
    (tmp_path / "home").mkdir()
    return folder


def load(project: Path, text: str, **kw: object) -> spec.EnvironmentSpec:
    file = project / "imgtool.yaml"
    file.write_text(textwrap.dedent(text))
    return spec.load(file, home=project.parent / "home", **kw)  # type: ignore[arg-type]


def problems(project: Path, text: str, **kw: object) -> list[str]:
    with pytest.raises(SpecError) as caught:
        load(project, text, **kw)
    assert str(caught.value.problems[0]) in caught.value.message
    return [f"{p.line} {p.key}: {p.message}" for p in caught.value.problems]


FULL = """\
name: ci
networks:
  lan: {subnet: 10.91.7.0/24}
  back:
vms:
  web:
    image: team/base@latest
    cpus: 2
    memory: 1024
    disk_size: 20G
    hostname: web-1
    admin_user: alice
    ssh_key: id.pub
    user_data: user-data
    share: [./src:/srv/src, "docs:/srv/docs:ro"]
    forward: [8080:80, "8443:443"]
    network: [lan, "back"]
    provision: |
      make test
  db:
    image: origin:team/db@1.2.0
    allow_revoked: true
    network: ["lan:10.91.7.20"]
"""


def test_a_full_file_becomes_records(project: Path) -> None:
    env = load(project, FULL)
    assert env.project == "ci" and env.file == project / "imgtool.yaml"
    assert [(n.name, n.full_name, n.subnet, n.line) for n in env.networks] == [
        ("lan", "ci-lan", IPv4Network("10.91.7.0/24"), 3), ("back", "ci-back", None, 4)]
    web, db = env.vms
    assert (web.name, web.full_name, web.line, web.image) == ("web", "ci-web", 6, "team/base@latest")
    assert (web.cpus, web.memory_mib, web.disk_size, web.hostname, web.admin_user) == (2, 1024, 20 << 30, "web-1",
                                                                                      "alice")
    assert web.ssh_key == project / "id.pub" and web.user_data == project / "user-data"
    assert web.user_data_digest is not None and len(web.user_data_digest) == 64
    assert web.shares == (Share((project / "src").resolve(), "/srv/src"), Share((project / "docs").resolve(),
                                                                               "/srv/docs", True))
    assert web.forwards == (Forward(8080, 80), Forward(8443, 443))  # 8080:80 is text, never YAML 1.1's 482480
    assert [str(a) for a in web.networks] == ["lan", "back"] and web.provision == "make test\n"
    assert db.image == "origin:team/db@1.2.0" and db.allow_revoked and db.cpus is None
    assert db.networks[0].address == IPv4Address("10.91.7.20")


def test_the_project_defaults_to_the_folder_name(project: Path) -> None:
    env = load(project, "vms:\n  a: {image: team/base}\n")
    assert env.project == "demo" and env.vms[0].full_name == "demo-a" and env.networks == ()


def test_a_folder_name_that_cannot_be_a_project(tmp_path: Path) -> None:
    folder = tmp_path / "my project"
    folder.mkdir()
    (tmp_path / "home").mkdir()
    assert problems(folder, "vms:\n  a: {image: team/base}\n") == [
        "1 name: is missing and the folder name 'my project' is not a usable project name: add name: with a plain "
        "name"]


@pytest.mark.parametrize(("text", "expected"), [
    ("vms: [a, b]\n", ["1 vms: must be a mapping (key: value lines), not a list"]),
    ("name: x\n", ["1 vms: is missing: name at least one VM"]),
    ("vms: {}\n", ["1 vms: names no VM"]),
    ("vm:\n  a: {image: t/b}\n", ["1 vm: is not a known key (did you mean 'vms'?)", "1 vms: is missing: name at "
                                  "least one VM"]),
    ("vms:\n  a:\n    image: t/b\n    cpu: 2\n", ["4 vms.a.cpu: is not a known key (did you mean 'cpus'?)"]),
    ("vms:\n  a:\n    image: t/b\n    disk-size: 2G\n",
     ["4 vms.a.disk-size: is not a known key (did you mean 'disk_size'?)"]),
    ("vms:\n  a:\n    cpus: 2\n", ["2 vms.a: has no image: (GALLERY/DEFINITION[@VERSION])"]),
    ("vms:\n  a:\n    image: t/b\n    cpus: two\n", ["4 vms.a.cpus: must be a whole number, not 'two'"]),
    ("vms:\n  a:\n    image: t/b\n    cpus: 0\n", ["4 vms.a.cpus: --cpus 0 is out of range: a VM has 1..255 vCPUs "
                                                   "(e.g. --cpus 2)"]),
    ("vms:\n  a:\n    image: t/b\n    memory: [1]\n", ["4 vms.a.memory: must be a text value, not a list"]),
    ("vms:\n  a:\n    image: t/b\n    disk_size: 20 gigs\n", ["4 vms.a.disk_size: disk_size '20 gigs' is not a size "
                                                              "like 20G, 512M or 1T (K, M, G, T are powers of 1024; a "
                                                              "plain number is bytes) (e.g. disk_size 20G)"]),
    ("vms:\n  a:\n    image: t/b\n    allow_revoked: yes\n", ["4 vms.a.allow_revoked: must be true or false, not "
                                                             "'yes'"]),
    ("vms:\n  a:\n    image: team\n", ["3 vms.a.image: 'team' is not GALLERY/DEFINITION (for example: team/base)"]),
    ("vms:\n  a:\n    image: t/b\n    hostname: web_1\n", ["4 vms.a.hostname: hostname 'web_1' is not a valid RFC "
                                                            "1123 label (use 1-63 letters, digits and '-', not "
                                                            "starting or ending with '-')"]),
    ("vms:\n  a:\n    image: t/b\n    admin_user: Root\n", ["4 vms.a.admin_user: admin user name 'Root' is invalid "
                                                             "(use a POSIX user name: [a-z_][a-z0-9_-]{0,31})"]),
    ("vms:\n  a:\n    image: t/b\n    image: t/c\n", ["4 vms.a.image: is given twice"]),
    ("vms:\n  a: {image: t/b}\n  a: {image: t/c}\n", ["3 vms.a: is given twice"]),
    ("vms:\n  a b: {image: t/b}\n", ["2 vms.a b: VM name 'a b' is not allowed (use 1-80 characters: letters, "
                                     "digits, '.', '_' and '-', starting and ending with a letter or digit, no '..')"]),
    ("vms:\n  a:\n    image: t/b\n    provision: ''\n", ["4 vms.a.provision: is empty: give the script's lines, or "
                                                         "leave provision out"]),
    ("vms:\n  a:\n    image: t/b\n    forward: 8080:80\n", ["4 vms.a.forward: must be a list ('- item' lines, or "
                                                            "[a, b]), not '8080:80'"]),
    ("vms:\n  a:\n    image: t/b\n    forward: [80:80]\n", ["4 vms.a.forward: --forward '80:80' is not HOST:GUEST "
                                                            "(HOST is a port 1024..65535 on 127.0.0.1, GUEST a port "
                                                            "1..65535 in the guest, e.g. --forward 8080:80)"]),
    ("vms:\n  a: {image: t/b, forward: [8080:80]}\n  b: {image: t/b, forward: [8080:81]}\n",
     ["3 vms.b.forward: host port 8080 is also forwarded by VM 'a'"]),
])  # fmt: skip
def test_bad_files_name_line_and_key(project: Path, text: str, expected: list[str]) -> None:
    assert problems(project, text) == expected


def test_yaml_errors_and_constructs_that_are_refused(project: Path) -> None:
    assert problems(project, "vms:\n  a: {image: t/b\n")[0].startswith("3 (file): is not valid YAML")
    assert problems(project, "vms:\n  a: {image: t/b}\n---\nvms: {}\n")[0].startswith("3 (file): is not valid YAML")
    assert problems(project, "")[0] == "1 (file): is empty; it needs at least vms:"
    assert problems(project, "base: &b {image: t/b}\nvms:\n  a: *b\n")[:1] == [
        "1 base: is not a known key; known: name, networks, vms"]
    aliased = "vms:\n  a: &b {image: t/b}\n  c: *b\n"
    assert problems(project, aliased) == ["2 vms.c: anchors and aliases (&, *) are not supported: write the value out"]
    assert problems(project, "vms:\n  a: !!python/object {image: t/b}\n") == [
        "2 vms.a: the tag tag:yaml.org,2002:python/object is not supported"]
    assert problems(project, "vms:\n  a:\n    <<: {image: t/b}\n") == [
        "3 vms.a: keys are plain names (merge keys '<<' are not supported)", "2 vms.a: has no image: "
        "(GALLERY/DEFINITION[@VERSION])"]


def test_every_problem_is_reported_at_once(project: Path) -> None:
    found = problems(project, "name: ci\nvms:\n  a:\n    image: nope\n    cpus: x\n  b:\n    image: t/b\n"
                              "    memory: lots\n")
    assert [line.split(":")[0] for line in found] == ["4 vms.a.image", "5 vms.a.cpus", "8 vms.b.memory"]


def test_network_problems(project: Path) -> None:
    assert problems(project, "networks:\n  lan: {subnet: 10.0.2.0/24}\nvms:\n  a: {image: t/b}\n") == [
        "2 networks.lan.subnet: subnet 10.0.2.0/24 overlaps 10.0.2.0/24, the subnet of every VM's first NIC (pick "
        "another range, e.g. 10.91.1.0/24)"]
    assert problems(project, "networks:\n  lan: {cidr: 10.1.0.0/24}\nvms:\n  a: {image: t/b}\n") == [
        "2 networks.lan.cidr: is not a known key; known: subnet"]
    text = ("networks:\n  lan: {subnet: 10.9.0.0/24}\n  open:\nvms:\n  a:\n    image: t/b\n    network: [wan, lan, "
            "lan, 'open:10.9.0.5']\n  b:\n    image: t/b\n    network: ['lan:10.9.0.1']\n  c:\n    image: t/b\n"
            "    network: ['lan:10.9.0.7']\n  d:\n    image: t/b\n    network: ['lan:10.9.0.7']\n")
    assert problems(project, text) == [
        "7 vms.a.network: network 'wan' is not one of networks: (lan, open)",
        "7 vms.a.network: network 'lan' is given twice: a VM has one NIC per network",
        "7 vms.a.network: an address on 'open' needs the network's subnet: give networks.open.subnet",
        "10 vms.b.network: address 10.9.0.1 is reserved on network 'lan' (the first host address) (give an "
        "address from 10.9.0.2 on)",
        "14 vms.d.network: address 10.9.0.7 on 'lan' is also VM 'c''s"]


def test_share_and_file_problems(project: Path) -> None:
    home = project.parent / "home"
    text = (f"vms:\n  a:\n    image: t/b\n    share:\n      - missing:/srv/m\n      - id.pub:/srv/k\n"
            f"      - {home}:/srv/h:ro\n      - src:/etc\n      - src:/srv/s\n      - docs:/srv/s/d\n"
            "    ssh_key: nothing.pub\n    user_data: src\n")
    found = problems(project, text)
    assert found[0] == f"5 vms.a.share: shared folder {project / 'missing'} does not exist (create it, or fix the path)"
    assert found[1].startswith("6 vms.a.share: shared path") and "is not a folder" in found[1]
    assert found[2].startswith("7 vms.a.share: shared folder") and "the imgtool home or inside it" in found[2]
    assert found[3].startswith("8 vms.a.share: guest path '/etc' would hide a system folder")
    assert found[4].startswith("5 vms.a.share: shares") and "overlapping guest paths" in found[4]
    assert found[5].startswith(f"11 vms.a.ssh_key: cannot read {project / 'nothing.pub'}")
    assert found[6].startswith(f"12 vms.a.user_data: cannot read {project / 'src'}")
    (project / "bad.pub").write_text("not a key\n")
    assert problems(project, "vms:\n  a: {image: t/b, ssh_key: bad.pub}\n")[0].startswith("2 vms.a.ssh_key: ")


def test_unknown_images_are_found_before_anything_happens(project: Path) -> None:
    def check(ref: str) -> None:
        if ref != "team/base@latest":
            raise NotFound(f"image {ref} does not exist", hint="imgtool version list")

    assert load(project, "vms:\n  a: {image: team/base@latest}\n", check_image=check).vms[0].image == \
        "team/base@latest"
    assert problems(project, "vms:\n  a: {image: team/other}\n", check_image=check) == [
        "2 vms.a.image: image team/other does not exist (imgtool version list)"]


def test_the_file_itself(project: Path) -> None:
    with pytest.raises(InvalidArgument, match="does not exist"):
        spec.load(project / "nope.yaml", home=project.parent / "home")
    (project / "imgtool.yaml").write_bytes(b"vms:\n  a: {image: t/b}\n\xff\n")
    with pytest.raises(SpecError, match="is not UTF-8"):
        spec.load(project / "imgtool.yaml", home=project.parent / "home")
    (project / "imgtool.yaml").write_text("#" * (spec.MAX_FILE + 1))
    with pytest.raises(SpecError, match="at most"):
        spec.load(project / "imgtool.yaml", home=project.parent / "home")


def test_the_error_lists_every_problem_with_the_file(project: Path) -> None:
    with pytest.raises(SpecError) as caught:
        load(project, "vms:\n  a: {image: x}\n  b: {image: y}\n")
    text = str(caught.value)
    assert text.count(str(project / "imgtool.yaml") + ":") == 2 and "(fix " in text
    assert "(and 1 more problem)" in caught.value.message
