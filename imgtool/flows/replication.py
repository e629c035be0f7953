"""Replication, Azure style: a version's target remotes and each target's state.

The state lives OUTSIDE the immutable version record, one file per version:
`<home>/replication/<gallery>/<definition>/<version>.json`

    {"format": 1, "targets": {"R": {"state": "pending|replicating|completed|failed",
                                     "manifest": "sha256:…", "when": "…Z", "error": "…", "progress": N, ...}}}

(`TargetState` lists every field; docs/STORE-FORMAT.md, Home files, says the same.)

Changes are read-modify-write under `<home>/replication/.lock`. A replication that fails records why
and never touches the local version; `imgtool replicate` retries everything not completed. A state
left at `replicating` by a killed run is simply retried (push is idempotent and resumable).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict, cast

from imgtool.clock import stamp
from imgtool.errors import Corrupt, ImgtoolError, InvalidArgument
from imgtool.flows.sharing import push_source
from imgtool.gallery.galleries import VERSIONS
from imgtool.home import Home
from imgtool.names import Version, check_name, parse_image_ref, ref_fields
from imgtool.remote import remotes
from imgtool.vocab import ReplicationState
from store import atomic
from store.lock import file_lock
from store.progress import Progress, announce_total

FORMAT = 1


class TargetState(TypedDict, total=False):
    """One target's state in the file. A TypedDict, not a frozen record: each change merges its fields
    into the ones before (a field once set stays, `error` may be null), and the file keeps those bytes."""

    state: ReplicationState
    since: str
    progress: int  # bytes sent so far
    total: int  # bytes to send
    when: str
    manifest: str
    error: str | None
    retry: str  # the command that retries


_TEXTS = {"since", "when", "manifest", "retry"}
_COUNTS = {"progress", "total"}


def _target_state(obj: object, what: str) -> TargetState:
    """A target's state as the file holds it; unknown fields and mistyped values are Corrupt naming `what`."""
    if not isinstance(obj, dict):
        raise _damaged(what, "is not an object")
    unknown = set(obj) - set(TargetState.__annotations__)
    if unknown:
        raise _damaged(what, f"has unknown fields {sorted(unknown)}")
    if obj.get("state") not in set(ReplicationState):
        raise _damaged(what, f"has state {str(obj.get('state'))[:40]!r}, not one of {', '.join(ReplicationState)}")
    for key, value in obj.items():
        if (key in _TEXTS and not isinstance(value, str)) or (key == "error" and not isinstance(value, str | None)) \
                or (key in _COUNTS and (type(value) is not int or value < 0)):
            raise _damaged(what, f"has a mistyped {key} ({type(value).__name__})")
    return cast(TargetState, {**obj, "state": ReplicationState(obj["state"])})


def _damaged(what: str, why: str) -> Corrupt:
    return Corrupt(f"{what} {why}", hint="remove the file and set the targets again (imgtool version update "
                                         "G/D@V --replicate-to R)")


@dataclass(frozen=True)
class Outcome:
    version: str
    target: str
    state: ReplicationState
    manifest: str | None = None
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        body = dict(self.__dict__)
        return {**ref_fields(body.pop("version")), **body}


def _root(home: Home) -> Path:
    return home.root / "replication"


def _file(home: Home, gallery: str, definition: str, version: str) -> Path:
    return _root(home) / check_name(gallery, "gallery") / check_name(definition, "definition") / f"{version}.json"


@contextlib.contextmanager
def _locked(home: Home) -> Iterator[None]:
    _root(home).mkdir(parents=True, exist_ok=True, mode=0o700)
    with file_lock(_root(home) / ".lock"):
        yield


def read_state(home: Home, gallery: str, definition: str, version: str) -> dict[str, TargetState]:
    path = _file(home, gallery, definition, version)
    try:
        body = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise Corrupt(f"replication state {path} is unreadable: {exc}",
                      hint="remove the file and set the targets again") from None
    if not isinstance(body, dict) or body.get("format") != FORMAT or not isinstance(body.get("targets"), dict):
        raise Corrupt(f"replication state {path} has an unknown format", hint="upgrade imgtool")
    if set(body) != {"format", "targets"}:
        raise _damaged(f"replication state {path}", f"has unknown fields {sorted(set(body) - {'format', 'targets'})}")
    return {str(k): _target_state(v, f"replication state {path} target {k!r}") for k, v in body["targets"].items()}


def _write_state(home: Home, gallery: str, definition: str, version: str,
                 targets: dict[str, TargetState]) -> None:
    path = _file(home, gallery, definition, version)
    if not targets:
        path.unlink(missing_ok=True)
        return
    body = {"format": FORMAT, "targets": targets}
    atomic.replace(path, (json.dumps(body, indent=2, sort_keys=True) + "\n").encode())


def _update(home: Home, key: tuple[str, str, str], target: str, **fields: Any) -> None:
    with _locked(home):
        targets = read_state(home, *key)
        if target in targets:  # a target removed meanwhile stays removed
            targets[target] = cast(TargetState, {**targets[target], **fields})
            _write_state(home, *key, targets)


def set_targets(home: Home, text: str, *, add: Sequence[str] = (),
                remove: Sequence[str] = ()) -> dict[str, TargetState]:
    """Add targets (as pending; additive) and remove others; returns the new state."""
    ref = parse_image_ref(text, require_version=True)
    key = (ref.gallery, ref.definition, str(ref.version))
    if home.store.get_name(VERSIONS, *key) is None:
        raise InvalidArgument(f"version {text} does not exist", hint="publish it first")
    for name in add:
        remotes.get(home, name)
    with _locked(home):
        targets = read_state(home, *key)
        for name in add:
            if name not in targets or targets[name].get("state") == ReplicationState.FAILED:
                targets[name] = {"state": ReplicationState.PENDING, "since": stamp()}
        for name in remove:
            targets.pop(name, None)
        _write_state(home, *key, targets)
    return targets


def retarget(home: Home, ref: str, *, add: Sequence[str], remove: Sequence[str] = (),
             progress: Progress | None = None) -> list[Outcome]:
    """Set a version's targets, then replicate it to those added (a failed target is an outcome: the
    version stays, `imgtool replicate` retries)."""
    if not add and not remove:
        return []
    set_targets(home, ref, add=add, remove=remove)
    return replicate(home, ref, progress=progress) if add else []


def parse_targets(text: str | None) -> list[str]:
    if not text:
        return []
    return [check_name(n.strip(), "remote") for n in text.split(",") if n.strip()]


def _in_scope(key: tuple[str, str, str], scope: str | None) -> bool:
    gallery, definition, version = key
    if scope is None:
        return True
    if "@" in scope:
        return f"{gallery}/{definition}@{version}" == scope
    if "/" in scope:
        return f"{gallery}/{definition}" == scope
    return gallery == scope


def _scoped(home: Home, scope: str | None) -> list[tuple[str, str, str]]:
    root = _root(home)
    if not root.is_dir():
        return []
    keys = [(p.parent.parent.name, p.parent.name, p.name.removesuffix(".json")) for p in root.glob("*/*/*.json")]
    found = [k for k in keys if _in_scope(k, scope) and _is_version(k[2])]
    # Lowest version first: a later version then reuses the packs an earlier one uploaded.
    return sorted(found, key=lambda k: (k[0], k[1], Version.parse(k[2])))


def _is_version(text: str) -> bool:
    try:
        Version.parse(text)
    except InvalidArgument:
        return False
    return True


def replicate(home: Home, scope: str | None = None, *, progress: Progress | None = None) -> list[Outcome]:
    """Bring every target of every version in scope (`G`, `G/D`, `G/D@V`, or all) up to date."""
    outcomes: list[Outcome] = []
    for key in _scoped(home, scope):
        name = f"{key[0]}/{key[1]}@{key[2]}"
        for target, state in sorted(read_state(home, *key).items()):
            if state.get("state") == ReplicationState.COMPLETED:
                outcomes.append(Outcome(name, target, ReplicationState.COMPLETED, state.get("manifest")))
                continue
            outcomes.append(replicate_one(home, key, target, progress=progress))
    return outcomes


def replicate_one(home: Home, key: tuple[str, str, str], target: str, *,
                  progress: Progress | None = None) -> Outcome:
    name = f"{key[0]}/{key[1]}@{key[2]}"
    _update(home, key, target, state=ReplicationState.REPLICATING, since=stamp(), progress=0)
    try:
        if home.store.get_name(VERSIONS, *key) is None:
            raise InvalidArgument(f"version {name} no longer exists here", hint="remove the target")
        [result] = push_source(home, name, target, progress=_Recorder(home, key, target, progress))
    except ImgtoolError as exc:
        _update(home, key, target, state=ReplicationState.FAILED, when=stamp(), error=exc.message,
                retry=f"imgtool replicate {name}")
        return Outcome(name, target, ReplicationState.FAILED, error=exc.message)
    _update(home, key, target, state=ReplicationState.COMPLETED, when=stamp(), manifest=result.manifest,
            error=None)
    return Outcome(name, target, ReplicationState.COMPLETED, result.manifest)


class _Recorder:
    """A push progress callback that also records the bytes done in the state file, at most every 2 s
    (so `version show` in another terminal sees a replication move), and passes them on."""

    INTERVAL = 2.0

    def __init__(self, home: Home, key: tuple[str, str, str], target: str, inner: Progress | None) -> None:
        self.home, self.key, self.target, self.inner = home, key, target, inner
        self.done = 0
        self.total = 0
        self.last = time.monotonic()

    def set_total(self, total: int) -> None:
        self.total = total
        announce_total(self.inner, total)

    def __call__(self, amount: int) -> None:
        self.done += amount
        if self.inner is not None:
            self.inner(amount)
        if time.monotonic() - self.last >= self.INTERVAL:
            self.last = time.monotonic()
            _update(self.home, self.key, self.target, progress=self.done, total=self.total)


def describe(home: Home, gallery: str, definition: str, version: str) -> list[dict[str, Any]]:
    """For `version show`: one entry per target."""
    return [{"target": t, **s} for t, s in sorted(read_state(home, gallery, definition, version).items())]
