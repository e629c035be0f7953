"""up/down executed against real records, without QEMU: what `up` records on a VM makes the next plan a
no-op, a changed file is reported with its differences, a same-named network made by hand refuses
`up` before anything is made, and `down` deletes what the environment made and nothing else."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from imgtool.environment import apply, spec
from imgtool.home import Home
from imgtool.net import networks
from imgtool.vm import lifecycle
from imgtool.vm.record import load
from tests.cli import Cli
from tests.test_seed import pubkey
from tests.test_vm_attachments import clock, home

__all__ = ["home"]  # the fixture

FILE = """\
name: ci
networks:
  lan: {subnet: 10.91.7.0/24}
vms:
  web:
    image: team/base@1.0.0
    memory: 256
    ssh_key: id.pub
    share: [./src]
    network: ["lan:10.91.7.20"]
  db:
    image: team/base@1.0.0
    memory: 256
    ssh_key: id.pub
    network: [lan]
"""


def project(tmp_path: Path, text: str = FILE) -> Path:
    folder = tmp_path / "ci"
    (folder / "src").mkdir(parents=True, exist_ok=True)
    (folder / "id.pub").write_text(pubkey() + "\n")
    (folder / "imgtool.yaml").write_text(textwrap.dedent(text).replace("[./src]", "[./src:/srv/src]"))
    return folder / "imgtool.yaml"


def make(home: Home, env: spec.EnvironmentSpec) -> None:
    """What `up` makes, without starting anything."""
    for network in env.networks:
        networks.create(home, network.full_name, subnet=str(network.subnet) if network.subnet else None, clock=clock,
                        project=env.project)
    for vm in env.vms:
        lifecycle.create(home, apply.new_vm(env, vm, vm.image))


def test_what_up_records_makes_the_next_plan_a_noop_and_a_change_is_reported(home: Home, tmp_path: Path) -> None:
    env = spec.load(project(tmp_path), home=home.root)
    make(home, env)
    web = load(home, "ci-web")
    assert web.environment is not None and web.environment["project"] == "ci"
    assert web.seed is not None and web.seed.hostname == "web"  # peers reach it as web and ci-web
    assert load(home, "ci-db").networks[0].address == "10.91.7.2"
    assert apply.plan_up(home, env).is_noop
    assert {a.action for a in apply.plan_up(home, env).actions} == {"unchanged"}

    changed = spec.load(project(tmp_path, FILE.replace("memory: 256\n    ssh_key: id.pub\n    network: [lan]",
                                                       "memory: 512\n    ssh_key: id.pub\n    network: [lan]")),
                        home=home.root)
    action, = apply.plan_up(home, changed).of("changed")
    assert action.name == "ci-db" and [(d.setting, d.recorded, d.wanted) for d in action.differences] == \
        [("memory_mib", 256, 512)]


def test_down_deletes_what_the_environment_made_and_nothing_else(home: Home, tmp_path: Path) -> None:
    env = spec.load(project(tmp_path), home=home.root)
    make(home, env)
    networks.create(home, "lan-by-hand", clock=clock)
    key = tmp_path / "ci" / "id.pub"
    lifecycle.create(home, lifecycle.NewVm(name="mine", image="team/base@1.0.0", memory_mib=256, ssh_key=key,
                                           networks=(("lan-by-hand", None),)))
    plan = apply.down(home, env)
    assert [(a.action, a.name) for a in plan.actions] == [("delete", "ci-db"), ("delete", "ci-web"),
                                                          ("delete", "ci-lan")]
    assert lifecycle.list_names(home) == ["mine"] and [n.name for n in networks.list_all(home)] == ["lan-by-hand"]


def test_a_network_made_by_hand_with_the_same_name_refuses_up_before_anything_is_made(
        home: Home, tmp_path: Path) -> None:
    file = project(tmp_path)
    networks.create(home, "ci-lan", clock=clock)
    done = Cli(home.root)("up", "-f", str(file), ok=False)
    assert done.returncode == 5 and "ci-lan" in done.stderr and "made by hand" in done.stderr
    assert lifecycle.list_names(home) == []
    status = Cli(home.root).json("status", "-f", str(file))
    assert isinstance(status, dict) and [v["state"] for v in status["vms"]] == ["absent", "absent"]
    assert {a["action"] for a in status["actions"]} == {"conflict", "create"}


def test_a_broken_file_names_file_line_and_key(home: Home, tmp_path: Path) -> None:
    file = project(tmp_path, FILE.replace("memory: 256", "memory: lots", 1))
    done = Cli(home.root)("up", "-f", str(file), ok=False)
    assert done.returncode == 2 and f"{file}:7" in done.stderr and "vms.web.memory" in done.stderr


@pytest.mark.parametrize("argv", [["up", "--dry-run"], ["status"], ["down"]])
def test_json_documents_of_the_environment_commands(home: Home, tmp_path: Path, argv: list[str]) -> None:
    body = Cli(home.root).json(*argv, "-f", str(project(tmp_path)))
    assert isinstance(body, dict) and {"project", "file", "actions"} <= set(body)
