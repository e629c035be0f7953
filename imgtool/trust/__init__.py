"""Trust: signing keys, signatures over a version's content and name, and per-remote trust policy.

keys.py        ed25519 signing keys under <home>/keys/, public-key files, key ids
signatures.py  the signed payload, the signature envelope, its OCI referrer manifest, strict parsing
policy.py      which keys a remote (and gallery) trusts, and the decision for one version
pins.py        pinned references REMOTE:G/D@X.Y.Z@sha256:… re-checked on every use
"""
