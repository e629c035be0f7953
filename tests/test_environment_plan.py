"""Reconciliation as values: the file and what exists in, the plan of `up` and `down` out."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from imgtool.environment import plan, spec
from imgtool.environment.plan import Existing, NetworkSettings, VmSettings
from imgtool.errors import Corrupt

FILE = """\
name: ci
networks:
  lan: {subnet: 10.91.7.0/24}
vms:
  web:
    image: team/base@latest
    cpus: 2
    network: ["lan:10.91.7.20"]
    provision: make test
  db:
    image: team/db@1.0.0
"""


def load(tmp_path: Path, text: str = FILE) -> spec.EnvironmentSpec:
    folder = tmp_path / "proj"
    folder.mkdir(exist_ok=True)
    (tmp_path / "home").mkdir(exist_ok=True)
    (folder / "imgtool.yaml").write_text(textwrap.dedent(text))
    return spec.load(folder / "imgtool.yaml", home=tmp_path / "home")


def made(env: spec.EnvironmentSpec) -> list[Existing]:
    """Everything `up` would have made for `env`, as the records would say."""
    return [*(Existing("network", n.full_name, env.project, NetworkSettings(str(n.subnet or "10.91.0.0/24")))
              for n in env.networks),
            *(Existing("vm", v.full_name, env.project, VmSettings.of(v)) for v in env.vms)]


def summary(p: plan.Plan | tuple[plan.Action, ...]) -> list[tuple[str, str, str]]:
    return [(a.action, a.kind, a.name) for a in (p.actions if isinstance(p, plan.Plan) else p)]


def test_a_first_up_creates_networks_then_vms(tmp_path: Path) -> None:
    env = load(tmp_path)
    first = plan.reconcile(env, [])
    assert summary(first) == [("create", "network", "ci-lan"), ("create", "vm", "ci-web"), ("create", "vm", "ci-db")]
    assert first.actions[1].vm is env.vms[0] and first.actions[0].network is env.networks[0]
    assert not first.is_noop and first.conflicts == ()


def test_a_second_up_changes_nothing(tmp_path: Path) -> None:
    env = load(tmp_path)
    again = plan.reconcile(env, made(env))
    assert {a.action for a in again.actions} == {"unchanged"} and again.is_noop


def test_changed_settings_are_reported_with_what_differs(tmp_path: Path) -> None:
    before = load(tmp_path)
    after = load(tmp_path, FILE.replace("cpus: 2", "cpus: 4").replace("make test", "make check")
                 .replace("10.91.7.0/24", "10.91.8.0/24").replace("lan:10.91.7.20", "lan:10.91.8.20"))
    result = plan.reconcile(after, made(before))
    changed = {a.name: a for a in result.of("changed")}
    assert set(changed) == {"ci-lan", "ci-web"} and result.is_noop  # reported, never recreated
    web = {d.setting: (d.recorded, d.wanted) for d in changed["ci-web"].differences}
    assert web["cpus"] == (2, 4) and web["networks"] == (("lan:10.91.7.20",), ("lan:10.91.8.20",))
    assert set(web) == {"cpus", "networks", "provision_digest"}
    assert changed["ci-lan"].differences[0].wanted == "10.91.8.0/24"
    assert "delete the VM" in changed["ci-web"].reason


def test_a_network_without_a_subnet_in_the_file_takes_any(tmp_path: Path) -> None:
    env = load(tmp_path, "name: ci\nnetworks:\n  lan:\nvms:\n  a: {image: t/b, network: [lan]}\n")
    existing = [Existing("network", "ci-lan", "ci", NetworkSettings("10.91.3.0/24")),
                Existing("vm", "ci-a", "ci", VmSettings.of(env.vms[0]))]
    assert plan.reconcile(env, existing).is_noop


def test_things_made_elsewhere_are_conflicts(tmp_path: Path) -> None:
    env = load(tmp_path)
    existing = [Existing("vm", "ci-web", None), Existing("network", "ci-lan", "other")]
    result = plan.reconcile(env, existing)
    assert summary(result.conflicts) == [("conflict", "network", "ci-lan"), ("conflict", "vm", "ci-web")]
    assert "made by environment 'other'" in result.conflicts[0].reason
    assert "made by hand" in result.conflicts[1].reason


def test_removed_from_the_file_is_kept_unless_pruned(tmp_path: Path) -> None:
    full = load(tmp_path)
    smaller = load(tmp_path, FILE.split("  db:", maxsplit=1)[0])
    existing = [*made(full), Existing("vm", "ci-old", "ci", None), Existing("vm", "other-x", "other", None),
                Existing("vm", "mine", None)]
    kept = plan.reconcile(smaller, existing)
    assert summary(kept.of("keep")) == [("keep", "vm", "ci-db"), ("keep", "vm", "ci-old")] and kept.is_noop
    pruned = plan.reconcile(smaller, existing, prune=True)
    assert summary(pruned.of("delete")) == [("delete", "vm", "ci-db"), ("delete", "vm", "ci-old")]


def test_a_record_without_settings_is_a_change_not_a_guess(tmp_path: Path) -> None:
    env = load(tmp_path)
    result = plan.reconcile(env, [Existing("vm", "ci-db", "ci", None)])
    assert summary(result.of("changed")) == [("changed", "vm", "ci-db")]


def test_down_deletes_what_the_project_made_and_nothing_else(tmp_path: Path) -> None:
    env = load(tmp_path)
    existing = [*made(env), Existing("vm", "ci-old", "ci", None), Existing("vm", "ci-db", None),
                Existing("vm", "unrelated", None)]
    existing = [e for e in existing if not (e.name == "ci-db" and e.project == "ci")]
    down = plan.teardown(env, existing)
    assert summary(down) == [("keep", "vm", "ci-db"), ("delete", "vm", "ci-web"), ("delete", "network", "ci-lan")]
    pruned = plan.teardown(env, existing, prune=True)
    assert [a.name for a in pruned.of("delete")] == ["ci-old", "ci-web", "ci-lan"]  # VMs before networks


def test_settings_round_trip_and_strict_loading(tmp_path: Path) -> None:
    settings = VmSettings.of(load(tmp_path).vms[0])
    assert VmSettings.from_json(settings.to_json(), "s") == settings
    assert settings.to_json()["networks"] == ["lan:10.91.7.20"] and settings.provision_digest
    for bad in ({"image": 1}, {"cpus": 2}, {"image": "t/b", "colour": "red"}, {"image": "t/b", "shares": [1]},
                {"image": "t/b", "cpus": "2"}):
        with pytest.raises(Corrupt):
            VmSettings.from_json(bad, "VM 'x' settings")
