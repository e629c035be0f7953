"""imgtool pull REMOTE:G/D --all and imgtool pull REMOTE:G: every version, one by one."""

from __future__ import annotations

import typer

from imgtool.cli.output import ProgressBar, State, emit_json, table
from imgtool.errors import InvalidArgument
from imgtool.vocab import PullStatus


def is_gallery(ref: str) -> bool:
    """REMOTE:GALLERY (no definition): a whole gallery."""
    _, sep, rest = ref.partition(":")
    return bool(sep) and "/" not in rest and "@" not in rest


def pull_many(st: State, ref: str, as_ref: str | None) -> None:
    from imgtool.flows import pull_all

    if as_ref is not None:
        raise InvalidArgument("--as applies to one definition's single version",
                              hint=f"pull without --as, or one version: imgtool pull {ref}@X.Y.Z --as G/D")
    bar = ProgressBar(f"pulling {ref}", enabled=not st.json)

    def each(outcome: pull_all.Outcome) -> None:
        if not st.json:
            bar.close()
            print(f"{outcome.ref}: {outcome.status}" + (f" ({outcome.detail})" if outcome.status in
                                                         (PullStatus.SKIPPED, PullStatus.FAILED) else ""), flush=True)

    try:
        outcomes = pull_all.pull_all(st.home, ref, progress=bar, each=each)
    finally:
        bar.close()
    failed = [o for o in outcomes if o.status == PullStatus.FAILED]
    if st.json:
        emit_json({"versions": [o.to_json() for o in outcomes]})
    else:
        counts = {s: sum(o.status == s for o in outcomes) for s in PullStatus}
        table([str(s) for s in counts], [list(counts.values())])
    if failed:
        if not st.json:
            print(f"{len(failed)} version(s) failed; run the same command again to resume")
        raise typer.Exit(code=12)
