"""pull REMOTE:GALLERY through token auth (the REAL distribution registry and the test token server): the
gallery's definitions come from /v2/_catalog, whose token scope (registry:catalog:*) the registry names
in its challenge; a user whose token grants no catalog is told so, with the per-definition way."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.trust.test_token_imgtool import Site, site  # noqa: F401 - the module's registry, as a fixture

# real_clock: the Go registry checks token lifetimes against the real clock, which libfaketime cannot move.
pytestmark = [pytest.mark.integration, pytest.mark.real_clock]


def test_a_gallery_through_token_auth(site: Site, tmp_path: Path) -> None:  # noqa: F811
    writer = site.cli(tmp_path / "w", "writer")  # granted the catalog
    answer = writer.json("pull", "origin:team")
    assert isinstance(answer, dict) and [(v["ref"], v["status"]) for v in answer["versions"]] == [
        ("team/base@1.0.0", "pulled")]
    reader = site.cli(tmp_path / "r", "reader")  # pull on team/*, no catalog
    refused = reader("pull", "origin:team", ok=False)
    assert refused.returncode == 5, refused.stderr
    assert "/v2/_catalog" in refused.stderr and "GALLERY/DEFINITION --all" in refused.stderr, refused.stderr
    assert reader.json("pull", "origin:team/base", "--all")["versions"][0]["status"] == "pulled"  # type: ignore[index]
