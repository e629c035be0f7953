"""The host side of the warm-start agent: one request, one answer, over the VM's virtio-serial port.

The guest agent (scripts/testimage/agent for the tiny test image) waits on the port named
`org.imgtool.agent`; QEMU exposes it as a unix socket. The request is one line,
`PERSONALIZE key=value ...`, every value from a closed alphabet (hex, base64, a validated
hostname, user or instance id), so nothing in it can be read as a second field or a second line.
The answer is one line: `OK <hex>` (32 bytes of the guest's /dev/urandom, read after the reseed)
or `FAIL <reason>`.
"""

from __future__ import annotations

import base64
import secrets
import socket
import time
from dataclasses import dataclass
from pathlib import Path

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

    def line(self) -> bytes:
        p = self.provisioning
        key = base64.b64encode(p.ssh_keys[0].encode()).decode() if p.ssh_keys else "-"
        user_data = base64.b64encode(p.user_data.encode()).decode() if p.user_data else "-"
        fields = [("hostname", p.hostname), ("instance", p.instance_id), ("machine_id", self.machine_id),
                  ("user", p.admin_user), ("key", key), ("seed", self.rng_seed.hex()), ("clock", str(self.clock)),
                  ("userdata", user_data)]
        return ("PERSONALIZE " + " ".join(f"{k}={v}" for k, v in fields) + "\n").encode()


def new_request(provisioning: seed.Provisioning, *, clock: int) -> Request:
    """A request with a fresh machine-id and RNG seed; the provisioning is validated first."""
    seed.validate(provisioning)
    return Request(provisioning, secrets.token_hex(16), secrets.token_bytes(SEED_BYTES), clock)


@dataclass(frozen=True)
class Answer:
    ok: bool
    detail: str  # the urandom sample (hex) when ok, else the agent's reason


def parse_answer(line: bytes) -> Answer:
    text = line.decode("utf-8", "replace").strip()
    verb, _, rest = text.partition(" ")
    if verb == "OK" and len(rest) == 64 and all(c in "0123456789abcdef" for c in rest):
        return Answer(True, rest)
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
                             hint="the image needs the imgtool agent (scripts/testimage/agent)") from None


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
