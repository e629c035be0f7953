"""Where trust lives in the imgtool home.

    <home>/keys/        the user's signing keys (see keys.py), 0700
    <home>/trust.json   trusted keys and policy per remote (see policy.py), 0600
"""

from __future__ import annotations

from imgtool.home import Home
from imgtool.trust.keys import KeyRing
from imgtool.trust.policy import TrustStore


def keyring(home: Home) -> KeyRing:
    return KeyRing(home.root / "keys")


def trust_store(home: Home) -> TrustStore:
    return TrustStore(home.root / "trust.json")
