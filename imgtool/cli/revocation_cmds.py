"""imgtool version unrevoke: lifting a revocation, here and (as a signed statement) on remotes."""

from __future__ import annotations

from typing import Annotated

import typer

from imgtool.cli.output import emit_json, state

Opt = typer.Option
Arg = typer.Argument


def version_unrevoke(
    ctx: typer.Context,
    ref: Annotated[str, Arg(help="GALLERY/DEFINITION@X.Y.Z")],
    reason: Annotated[str, Opt(help="Why it is fit again (kept in the signed statement).")],
    push: Annotated[list[str] | None, Opt("--push", metavar="REMOTE", help="Also attach a signed statement "
                                          "lifting the revocation to the version on this remote (repeatable).")] = None,
    sign: Annotated[str | None, Opt("--sign", metavar="KEY", help="With --push: the signing key (default: the remote's "
                                                   "signing key).")] = None,
) -> None:
    """Lift a version's revocation: it may be latest and used by vm new again, and its VMs are no longer
    flagged. With --push the lifting reaches a remote as a signed statement, like a revocation: pulls accept
    the version again and imgtool remote sync lifts other stores' copies. Statements are never removed: of a
    version's revocations and lifts the latest signed one decides (a revocation wins a tie). A version lifted
    here already can be pushed again with --push alone."""
    from imgtool.flows import revoking
    from imgtool.gallery import lookup, revocation

    st = state(ctx)
    current, _ = lookup.get_version(st.home, ref)
    lifted = None
    if current.revocation is not None or not push:  # lifted here already: --push alone sends the statement
        current, lifted = revocation.lift(st.home, ref)
    pushed = [revoking.push_lift(st.home, current.label, remote, reason, key_name=sign) for remote in push or []]
    if st.json:
        emit_json({"ref": current.label, "lifted": lifted and lifted.to_json(), "reason": reason, "pushed": pushed})
        return
    if lifted is not None:
        print(f"lifted the revocation of {current.label} (was: {lifted.reason})")
    for item in pushed:
        print(f"lifting attached on {item['remote']} ({item['repository']}, signed by {item['key_id'][:19]}...)")


def register(version_app: typer.Typer) -> None:
    version_app.command("unrevoke")(version_unrevoke)
