"""Publish, then boot-check, then replicate: one flow, whichever front end asks for it.

The boot check runs before any replication, so a version whose check fails is recorded as such
before a copy leaves the machine; a failed replication is an outcome, never a failed publish.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from imgtool.errors import InvalidArgument
from imgtool.gallery import galleries, image_versions
from imgtool.gallery.lifecycle_model import BootCheck, CheckResult
from imgtool.gallery.model import ImageVersion
from imgtool.guest import service as guest
from imgtool.home import Home
from store.progress import Progress

if TYPE_CHECKING:
    from imgtool.flows.replication import Outcome


@dataclass(frozen=True)
class Published:
    version: ImageVersion
    check: CheckResult | None = None
    replicas: list[Outcome] = field(default_factory=list)


def check_targets(home: Home, names: Sequence[str]) -> None:
    """Every replication target is a known remote (checked before any work)."""
    if not names:
        return  # without targets, publish need not load the remote layer (~70 ms of imports)
    from imgtool.remote import remotes  # noqa: PLC0415 - lazily: a publish without targets skips remote/

    for name in names:
        remotes.get(home, name)


def audit_gate(home: Home, source: str, *, firmware: str, allow_identity: bool,
               allow_unaudited: bool) -> dict[str, Any]:
    """image_versions.AuditGate over imgtool.guest: the audit of `source`, then the gate's refusals; the
    record keeps either override."""
    report = guest.audit(home, source, firmware=firmware)
    guest.gate(report, source=source, allow_identity=allow_identity, allow_unaudited=allow_unaudited)
    body = {**report.to_json(), "source": source,
            "allowed_identity": allow_identity and report.audited and not report.clean}
    if not report.audited:
        body["allowed_unaudited"] = True  # only --allow-unaudited lets this through the gate
    return body


def publish_version(home: Home, request: image_versions.PublishRequest, *,
                    progress: Progress | None = None) -> ImageVersion:
    """Publish `request` through the guest audit gate (no check, no replication)."""
    return image_versions.publish(home, request, audit_gate=audit_gate, progress=progress)


def need_boot_check(home: Home, request: image_versions.PublishRequest) -> None:
    """A check asked of a definition without a boot check fails before anything is published."""
    ref = request.ref
    if galleries.get_definition(home, ref).boot_check is None:
        raise InvalidArgument(f"definition {ref} asks for no boot check, so --check has nothing to run",
                              hint=f"set one: imgtool definition update {ref} --require-boot-check --boot-check "
                                   "console:TEXT")


def publish(home: Home, request: image_versions.PublishRequest, *, check: bool = False,
            targets: Sequence[str] = (), progress: Progress | None = None,
            started: Callable[[str, BootCheck], None] | None = None) -> Published:
    """Publish `request`; with `check`, boot-check it (`started` is told the throwaway VM's name once it
    boots: vm.checks.check_version); then replicate it to `targets`."""
    check_targets(home, targets)
    if check:
        need_boot_check(home, request)
    version = publish_version(home, request, progress=progress)
    result = None
    if check:
        from imgtool.vm import checks  # noqa: PLC0415 - lazily: boots a VM, loaded only when asked

        result = checks.check_version(home, version.label, started=started)
    replicas = []
    if targets:
        from imgtool.flows import replication  # noqa: PLC0415 - lazily, as remotes above

        replicas = replication.retarget(home, version.label, add=targets)
    return Published(version, result, replicas)
