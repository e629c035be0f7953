"""The host side of the warm-start agent: one request, one answer, over the VM's virtio-serial port.

The guest agent (scripts/testimage/agent for the tiny test image, scripts/debian/imgtool-agent for
the Debian one) waits on the port named `org.imgtool.agent`; QEMU exposes it as a unix socket. The
request is one line, `PERSONALIZE key=value ...`, every value from a closed alphabet (hex, base64,
a validated hostname, user or instance id), so nothing in it can be read as a second field or a
second line. The VM's SSH host key is made here, from host entropy, and sent as `hostkey` (the
private key, base64): the guest's RNG right after a restore is its siblings' until the reseed,
and the host then knows the key it must see (`known_hosts_line`). An agent ignores a field it
does not need (the tiny image has no sshd).
The answer is one line: `OK <hex>` (32 bytes of the guest's /dev/urandom, read after the reseed),
`OK <hex> hostkey` when the agent also installed the host key and restarted sshd, or `FAIL <reason>`.
"""

from __future__ import annotations

import base64
import secrets
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from imgtool.errors import ToolFailed
from imgtool.vm import seed

WAITING = "imgtool-agent: waiting"  # the console line of an agent ready for a request
SEED_BYTES = 64
MAX_ANSWER = 4096


@dataclass(frozen=True)
class Request:
    provisioning: seed.Provisioning
    machine_id: str  # 32 hex digits
    rng_seed: bytes  # fresh host randomness for the guest's pool
    clock: int  # seconds since the epoch, UTC
    host_key: Ed25519PrivateKey  # the VM's own SSH host key

    def host_public(self) -> str:
        """The host key's public half, as `ssh-ed25519 AAAA...`."""
        return self.host_key.public_key().public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH).decode()

    def line(self) -> bytes:
        p = self.provisioning
        key = base64.b64encode(p.ssh_keys[0].encode()).decode() if p.ssh_keys else "-"
        user_data = base64.b64encode(p.user_data.encode()).decode() if p.user_data else "-"
        fields = [("hostname", p.hostname), ("instance", p.instance_id), ("machine_id", self.machine_id),
                  ("user", p.admin_user), ("key", key), ("seed", self.rng_seed.hex()), ("clock", str(self.clock)),
                  ("userdata", user_data), ("hostkey", base64.b64encode(self._host_private()).decode())]
        return ("PERSONALIZE " + " ".join(f"{k}={v}" for k, v in fields) + "\n").encode()

    def _host_private(self) -> bytes:
        return self.host_key.private_bytes(Encoding.PEM, PrivateFormat.OpenSSH, NoEncryption())


def new_request(provisioning: seed.Provisioning, *, clock: int) -> Request:
    """A request with a fresh machine-id, RNG seed and SSH host key; the provisioning is validated first."""
    seed.validate(provisioning)
    return Request(provisioning, secrets.token_hex(16), secrets.token_bytes(SEED_BYTES), clock,
                   Ed25519PrivateKey.generate())


def known_hosts_line(alias: str, request: Request) -> str:
    """The known_hosts entry that pins the host key `request` gives the VM, under `alias`."""
    return f"{alias} {request.host_public()}\n"


@dataclass(frozen=True)
class Answer:
    ok: bool
    detail: str  # the urandom sample (hex) when ok, else the agent's reason
    host_key: bool = False  # the guest's sshd now serves the request's host key


def parse_answer(line: bytes) -> Answer:
    text = line.decode("utf-8", "replace").strip()
    verb, _, rest = text.partition(" ")
    sample, _, extra = rest.partition(" ")
    if verb == "OK" and len(sample) == 64 and all(c in "0123456789abcdef" for c in sample) and extra in ("", "hostkey"):
        return Answer(True, sample, extra == "hostkey")
    if verb == "FAIL":
        return Answer(False, rest[:200] or "no reason given")
    return Answer(False, f"unexpected answer {text[:80]!r}")


def exchange(sock_path: Path, request: Request, *, timeout: float) -> Answer:
    """Send the request to the agent and read its one-line answer within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(timeout)
        try:
            conn.connect(str(sock_path))
            conn.sendall(request.line())
            return parse_answer(_read_line(conn, deadline))
        except OSError as exc:
            raise ToolFailed(f"the guest agent did not answer on {sock_path}: {exc}",
                             hint="the image needs the imgtool agent (scripts/testimage/agent, "
                                  "scripts/debian/imgtool-agent)") from None


def _read_line(conn: socket.socket, deadline: float) -> bytes:
    data = b""
    while b"\n" not in data:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("timed out")
        conn.settimeout(left)
        chunk = conn.recv(MAX_ANSWER)
        if not chunk:
            raise ConnectionError("connection closed before an answer")
        data += chunk
        if len(data) > MAX_ANSWER:
            raise ConnectionError("answer too long")
    return data.partition(b"\n")[0]
