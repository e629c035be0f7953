"""Push, pull, list and log in as the front ends call them: names in, results out."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import replace

from imgtool.errors import InvalidArgument, NotFound
from imgtool.flows import boot_profiles, revoking, signing
from imgtool.gallery.lookup import get_version
from imgtool.gallery.model import ImageVersion
from imgtool.gallery.versions import Verdict
from imgtool.home import Home
from imgtool.names import Version, parse_definition_ref, parse_image_ref
from imgtool.oci import media
from imgtool.oci.descriptor import Descriptor
from imgtool.oci.target import Target
from imgtool.remote import auth, catalog, remotes
from imgtool.remote import format as fmt
from imgtool.remote.connect import connected
from imgtool.remote.errors import RemoteFailed, TransferInterrupted
from imgtool.remote.pull import Checked, Checking, Judged, Puller, PullResult
from imgtool.remote.push import Pushed, PushResult, push
from imgtool.remote.registry import RegistryClient
from imgtool.trust import pins
from imgtool.trust.signatures import SignedName
from imgtool.vocab import PushStatus
from store.progress import Progress


def push_source(home: Home, source: str, remote_name: str, *, sign: str | None = None,
                progress: Progress | None = None, stats: dict[str, int] | None = None,
                with_revocation: bool = False) -> list[PushResult]:
    """Push `source` (gallery, definition or version) signed by `sign`, or by the remote's default signing
    key; versions already there get that key's signature if they lack it. With `with_revocation`, the
    signed revocation of every revoked version pushed is attached too."""
    if with_revocation:
        revoking.signing_key_for(home, remote_name, sign)  # no key, no statement: refused before anything moves
    results = _push_source(home, source, remote_name, sign=sign, progress=progress, stats=stats,
                           with_revocation=with_revocation)
    for result in results:
        if with_revocation and get_version(home, result.name)[0].revocation is not None:
            revoking.push_revocation(home, result.name, remote_name, key_name=sign)
    return results


def _push_source(home: Home, source: str, remote_name: str, *, sign: str | None, progress: Progress | None,
                 stats: dict[str, int] | None, with_revocation: bool) -> list[PushResult]:
    with connected(home, remote_name) as (remote, target):
        key_name = signing.signing_key(home, remote, sign)

        signed: dict[str, list[str]] = {}  # manifest digest -> key ids whose signatures the push attached

        def hook(event: Pushed) -> None:
            signed[event.manifest.digest] = signing.sign_pushed(home, remote, event.target, event.repository,
                                                                event.manifest, event.version, key_name=key_name)
            boot_profiles.attach(home, event.target, event.repository, event.manifest, event.version)

        try:
            with _interruptible(f"push {source} {remote_name}", remote_name, target, pushing=True):
                results = push(home, remote, target, source, progress=progress, hook=hook,
                               with_revocation=with_revocation)
            for result in results:
                result.signed_by = signed.get(result.manifest, [])
                if result.status == PushStatus.PRESENT:  # already there: signed now if this key has not signed it
                    ref = parse_image_ref(result.name, require_version=True)
                    name = SignedName(signing.registry_of(remote), result.repository, ref.gallery, ref.definition,
                                      result.tag)
                    key_id = signing.sign_present(home, target, result.repository, result.manifest, name,
                                                  key_name=key_name)
                    result.signed_by = [key_id] if key_id else []
                    _attach_profile(home, target, result.repository, result.name, result.manifest)
            return results
        finally:
            if stats is not None:
                stats.update(target.stats.to_json())


def _attach_profile(home: Home, target: Target, repo: str, name: str, digest: str) -> None:
    """A version already there gets the boot profile a check recorded since it was pushed."""
    version, _ = get_version(home, name)
    if not boot_profiles.has(home, version):
        return
    fetched = target.get_manifest(repo, digest)
    boot_profiles.attach(home, target, repo, Descriptor(media.OCI_MANIFEST, digest, len(fetched.data)), version)


def pull_ref(home: Home, text: str, *, as_ref: str | None = None, progress: Progress | None = None,
             stats: dict[str, int] | None = None) -> PullResult:
    name, rest, pinned = _split_pinned(text, as_ref)
    with connected(home, name) as (remote, target):
        try:
            with _interruptible(f"pull {text}", name, target, pushing=False):
                return puller(home, remote, target, pinned, progress=progress).pull(rest, as_ref=as_ref)
        finally:
            if stats is not None:
                stats.update(target.stats.to_json())


def _split_pinned(text: str, as_ref: str | None) -> tuple[str, str, pins.RemoteRef]:
    name, rest = remotes.split_ref(text)
    pinned = pins.parse_remote_ref(text)  # REMOTE:G/D@X.Y.Z@sha256:… pins the manifest digest
    if pinned.digest is not None:
        rest = rest.rsplit("@", 1)[0]
    if as_ref is not None:
        parse_definition_ref(as_ref)
    return name, rest, pinned


def puller(home: Home, remote: remotes.Remote, target: Target, pinned: pins.RemoteRef, *,
           progress: Progress | None = None) -> Puller:
    """A puller with this home's checks: pin, revocation, trust policy and signatures, latest's screen."""
    return Puller(home, remote, target, progress=progress,
                  check=lambda event: _check(home, remote, event, pinned),
                  screen=lambda repo, found: signing.screen(home, remote, target, repo, found))


@contextlib.contextmanager
def judged_remote(home: Home, text: str, *,
                  as_ref: str | None = None) -> Iterator[tuple[remotes.Remote, Target, Puller, Judged]]:
    """`REMOTE:G/D[@V][@sha256:…]` opened and judged exactly as `pull` judges it (nothing is stored);
    the connection stays open for the caller's fetches."""
    name, rest, pinned = _split_pinned(text, as_ref)
    with connected(home, name) as (remote, target):
        found = puller(home, remote, target, pinned)
        yield remote, target, found, found.judge(rest, as_ref=as_ref)


@contextlib.contextmanager
def _interruptible(command: str, remote: str, target: Target, *, pushing: bool) -> Iterator[None]:
    """Ctrl-C says what was kept and that the same command resumes (both push and pull skip what the
    other side already holds, so a rerun moves only the rest)."""
    try:
        yield
    except KeyboardInterrupt:
        if pushing:
            done = target.stats.blobs_uploaded
            kept = (f"{done} blob{'s' if done != 1 else ''} ({_mib(target.stats.bytes_sent)}) had reached {remote} "
                    "and stay there, untagged" if done else f"nothing had reached {remote} yet")
            raise TransferInterrupted(
                f"interrupted: {kept}; no version was tagged unfinished",
                hint=f"run `imgtool {command}` again to resume: it sends only what {remote} lacks") from None
        raise TransferInterrupted(
            f"interrupted after {_mib(target.stats.bytes_received)} received: the chunks already stored are "
            "kept here, unnamed; no version was named unfinished",
            hint=f"run `imgtool {command}` again to resume: it fetches only what this store lacks "
                 "(imgtool gc frees the kept chunks if you do not)") from None


def _mib(count: int) -> str:
    return f"{count / (1 << 20):.1f} MiB"


def _check(home: Home, remote: remotes.Remote, event: Checking, pinned: pins.RemoteRef) -> Checked:
    """The pin, then the remote's trust policy, on the version about to be pulled (raises Refused)."""
    pins.check_pin(pinned, event.fetched.digest, where=f"{remote.name}:{event.repository}:{event.tag}")
    revoking.refuse_if_revoked(home, remote, event.target, event.repository, event.fetched.digest, event.version)
    found = signing.check_pull(home, remote, event.target, event.repository, event.tag, event.fetched, event.version)

    def keep(local: ImageVersion) -> None:
        signing.keep_pulled(home, remote, event.repository, event.tag, found, local)
        boot_profiles.keep_pulled(home, event.target, event.repository, event.fetched.digest, local)

    return Checked(found.acceptance.warnings, keep)


def pull_for_vm(home: Home, text: str, *, progress: Progress | None = None) -> tuple[str, list[str]]:
    """`vm new --image REMOTE:G/D[@V]`: pull what is missing; returns the local `G/D@X.Y.Z` and warnings.

    When the remote cannot be reached and REMOTE:G/D@X.Y.Z (an exact version) is here, pulled from that
    remote's URL under that tag (and with the pinned manifest digest, if one is given), the local copy
    is used with a warning: versions are immutable, and the caller re-verifies the local copy."""
    try:
        result = pull_ref(home, text, progress=progress)
    except RemoteFailed as exc:
        copy = _offline_copy(home, text)
        if copy is None:
            raise
        local, manifest = copy
        return local, [f"{exc.message}; using the copy of {local} pulled from it before (manifest {manifest[:19]}…): "
                       "a revocation made there since is not known here"]
    return result.name, result.warnings


def _offline_copy(home: Home, text: str) -> tuple[str, str] | None:
    """The local version REMOTE:G/D@X.Y.Z[@sha256:…] was pulled as, with its manifest digest, or None."""
    ref = pins.parse_remote_ref(text)
    if ref.version is None:
        return None  # latest is the remote's to say
    local = f"{ref.gallery}/{ref.definition}@{ref.version}"
    try:
        version, _ = get_version(home, local)
    except NotFound:
        return None
    pulled = version.pulled_from
    remote = remotes.get(home, ref.remote)
    if pulled is None or pulled.url != remote.url or pulled.tag != str(ref.version):
        return None
    if ref.digest is not None and pulled.manifest != ref.digest:
        return None
    return local, pulled.manifest


def versions(home: Home, text: str) -> tuple[list[catalog.RemoteVersion], Version | None, list[Verdict], str]:
    name, rest = remotes.split_ref(text)
    ref = parse_definition_ref(rest)
    with connected(home, name) as (remote, target):
        repo = fmt.repository(remote.prefix, ref.gallery, ref.definition)
        found = catalog.remote_versions(target, repo)
        revoked = revoking.revoked_tags(home, remote, target, repo,
                                      [(v.version, v.manifest, v.annotations) for v in found])
        refused = signing.screen(home, remote, target, repo, found)
    # A statement by a trusted key, else the revocation the publisher's record carries (never less strict).
    found = [replace(v, revoked=revoked.get(v.version) or v.revoked) for v in found]
    chosen, verdicts = catalog.resolve(found, refused=refused)
    return found, chosen, verdicts, repo


def login(home: Home, name: str, username: str, password: str) -> str:
    """Check the credentials against the registry, then keep them (0600); returns the host."""
    remote = remotes.get(home, name)
    if remote.kind != "registry":
        raise InvalidArgument(f"remote '{name}' is a layout folder; it has no login", hint="just use it")
    creds = auth.Credentials(username, password)
    verify: bool | str = False if remote.insecure else (remote.ca_file or True)
    client = RegistryClient(remote.base_url, label=name, credentials=creds, verify=verify)
    try:
        client.ping()
    finally:
        client.close()
    auth.save(home.root, remote.host, creds)
    return remote.host


def logout(home: Home, name: str) -> bool:
    remote = remotes.get(home, name)
    return auth.forget(home.root, remote.host) if remote.kind == "registry" else False

