"""The stored signature set (docs/STORE-FORMAT.md, Signature set) round-trips and is read strictly."""

from __future__ import annotations

import pytest

from imgtool.errors import Corrupt
from imgtool.flows.signing import SignatureSet
from imgtool.oci.descriptor import sha256_of
from imgtool.trust.referrers import Attached
from imgtool.trust.signatures import SignedName

NAME = SignedName("registry.test", "team/base", "team", "base", "1.0.0")
SIGNATURE = Attached(sha256_of(b'{"m": 1}'), b'{"m": 1}', b'{"e": 1}')


def _record() -> dict[str, object]:
    return SignatureSet("hub", NAME, "sha256:" + "a" * 64, b"{}", b"{}", (SIGNATURE,)).to_record()


def test_the_set_round_trips() -> None:
    assert SignatureSet.from_record(_record(), "signature set") == SignatureSet(
        "hub", NAME, "sha256:" + "a" * 64, b"{}", b"{}", (SIGNATURE,))


@pytest.mark.parametrize("change", [{"surprise": 1}, {"tag": 1}, {"manifest": "not base64!"},
                                    {"referrers": [{"manifest": "e30=", "envelope": "e30=", "extra": "x"}]},
                                    {"referrers": [{"manifest": "e30="}]}])
def test_a_damaged_set_is_refused_naming_it(change: dict[str, object]) -> None:
    with pytest.raises(Corrupt, match="signature set"):
        SignatureSet.from_record({**_record(), **change}, "signature set team/base@1.0.0")
