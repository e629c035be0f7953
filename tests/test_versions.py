"""Version numbers, names and the `latest` rule (pure)."""

import pytest

from imgtool.errors import InvalidArgument
from imgtool.gallery.versions import Candidate, resolve_latest
from imgtool.names import Version, check_name, parse_image_ref


@pytest.mark.parametrize("text", ["1.2", "1.2.3.4", "01.0.0", "4294967296.0.0", "-1.0.0", "1.0.0 ", "",
                                  "a.b.c", "1..0", "1.0.0\x00", "\u0661.\u0662.\u0663"])
def test_bad_versions_are_refused(text: str) -> None:
    with pytest.raises(InvalidArgument):
        Version.parse(text)


def test_versions_order_numerically() -> None:
    assert Version.parse("1.10.0") > Version.parse("1.9.99")
    assert Version.parse("4294967295.0.0").major == 2**32 - 1
    assert str(Version.parse("0.0.0")) == "0.0.0"


def test_latest_is_highest_not_excluded() -> None:
    winner, verdicts = resolve_latest([
        Candidate(Version(1, 0, 0), False),
        Candidate(Version(1, 1, 0), True),
        Candidate(Version(0, 9, 0), False, end_of_life="2020-01-01"),
    ], today="2026-01-01")
    assert winner == Version(1, 0, 0)
    reasons = {str(v.version): v.reason for v in verdicts}
    assert reasons["1.1.0"].startswith("dropped: excluded from latest")
    assert reasons["1.0.0"].startswith("chosen")
    assert "1.0.0 is higher" in reasons["0.9.0"] and "end of life" in reasons["0.9.0"]
    assert [str(v.version) for v in verdicts] == ["1.1.0", "1.0.0", "0.9.0"]


def test_latest_of_only_excluded_versions_is_none() -> None:
    winner, verdicts = resolve_latest([Candidate(Version(2, 0, 0), True)])
    assert winner is None
    assert not verdicts[0].chosen


@pytest.mark.parametrize("bad", ["", "a/b", "..", "a..b", "x" * 81, "-a", "a-", "a\x00", "a\nb", "a b", "é"])
def test_bad_names_are_refused_with_the_rule(bad: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        check_name(bad, "gallery")
    assert "gallery name" in info.value.message
    assert "letters, digits" in info.value.hint


def test_image_refs() -> None:
    ref = parse_image_ref("team/base@1.2.3")
    assert (ref.gallery, ref.definition, ref.version) == ("team", "base", Version(1, 2, 3))
    assert parse_image_ref("team/base@latest").version is None
    assert parse_image_ref("team/base").version is None
    for bad in ["team", "team/base/x@1.0.0", "../x@1.0.0", "team/base@1.2"]:
        with pytest.raises(InvalidArgument):
            parse_image_ref(bad)
    with pytest.raises(InvalidArgument):
        parse_image_ref("team/base", require_version=True)
