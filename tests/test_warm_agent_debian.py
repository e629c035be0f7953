"""The Debian guest agent (scripts/debian/imgtool-agent) against the host's requests, without a VM: the
parts that touch nothing (parsing, and the user-data it refuses before running anything)."""

from __future__ import annotations

import base64
import importlib.machinery
import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

from imgtool.vm import seed, warm_agent

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl a@b"
AGENT = Path(__file__).resolve().parent.parent / "scripts" / "debian" / "imgtool-agent"


def load_agent() -> ModuleType:
    loader = importlib.machinery.SourceFileLoader("debian_imgtool_agent", str(AGENT))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def request(user_data: str | None = None, user: str = "alice") -> warm_agent.Request:
    p = seed.Provisioning("iid-0123456789abcdef0123456789abcdef", "Web-1", user,
                          ssh_keys=(KEY,),
                          user_data=user_data)
    return warm_agent.new_request(p, clock=1_800_000_000)


def test_the_agent_reads_every_field_of_the_hosts_request() -> None:
    agent = load_agent()
    req = request("#cloud-config\nruncmd: [[touch, /x]]\n")
    fields = agent.parse(req.line().decode().rstrip("\n"))
    assert set(fields) == set(agent.FIELDS)
    assert fields["hostname"] == "Web-1" and fields["machine_id"] == req.machine_id
    assert bytes.fromhex(fields["seed"]) == req.rng_seed and fields["clock"] == "1800000000"
    assert base64.b64decode(fields["hostkey"]).startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")


def test_the_agent_refuses_malformed_requests() -> None:
    agent = load_agent()
    line = request().line().decode().rstrip("\n")
    with pytest.raises(agent.Failed, match="unknown request"):
        agent.parse("HELLO x=1")
    with pytest.raises(agent.Failed, match="hostkey missing"):
        agent.parse(line.replace(" hostkey=", " other="))
    with pytest.raises(agent.Failed, match="machine_id is malformed"):
        agent.parse(line.replace("machine_id=", "machine_id=zz"))
    with pytest.raises(agent.Failed, match="malformed field"):
        agent.parse(line + " seed=00")


@pytest.mark.parametrize(("document", "why"), [
    ("#cloud-config\npackages: [nginx]\n", "packages are not applied by a warm start"),
    ("#include\nhttp://127.0.0.1/x\n", "only a #cloud-config"),
    ("#cloud-config\nwrite_files:\n- {path: /etc/x, content: x, source: {uri: y}}\n", "write_files entry"),
    ("#cloud-config\nwrite_files:\n- {path: relative, content: x}\n", "write_files entry"),
    ("#cloud-config\nwrite_files:\n- {path: /etc/x, content: x, encoding: zip}\n", "encoding 'zip'"),
    ("#cloud-config\n- a list\n", "not a mapping"),
])
def test_user_data_the_agent_cannot_apply_honestly_is_refused(document: str, why: str) -> None:
    agent = load_agent()
    with pytest.raises(agent.Failed, match=why):
        agent.apply_user_data(base64.b64encode(document.encode()).decode())
