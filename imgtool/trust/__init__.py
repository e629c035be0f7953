"""Trust: signing keys, signatures over a version's content and name, and per-remote trust policy.

keys.py        ed25519 signing keys under <home>/keys/, public-key files, key ids
signatures.py  the signed payload, the envelope, its OCI referrer manifest, strict parsing (pure)
referrers.py   finding, attaching and copying signatures on a registry (the client is passed in)
policy.py      which keys a remote (and gallery) trusts, and the verdict on one version
pins.py        pinned references REMOTE:G/D@X.Y.Z@sha256:… re-checked on every use (pure)
gate.py        where imgtool.remote calls in: sign on push, judge on pull, keep, re-verify offline
strict.py      strict JSON reading of what a remote sent (pure); homes.py: paths

The model, and where it follows or leaves Notary Project / cosign: docs/SHARING.md (Trust).
"""
