"""Every media type and artifact type imgtool writes or reads, in one place (regclient's mediatype.go habit).

docs/STORE-FORMAT.md, Remote format, lists the same strings; tests/test_store_format_doc.py compares them.
"""

from __future__ import annotations

# OCI image-spec 1.1
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
# Docker's, accepted on reads only (a registry may answer a tag with them; imgtool refuses them later)
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MANIFEST_ACCEPT = ", ".join([OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST])

# imgtool's artifacts
VERSION = "application/vnd.imgtool.version.v1+json"  # artifactType of a version manifest
CONFIG = "application/vnd.imgtool.config.v1+json"
CHUNK_INDEX = "application/vnd.imgtool.chunk-index.v1"
PACK = "application/vnd.imgtool.pack.v1.zstd-frames"
SIGNATURE = "application/vnd.imgtool.signature.v1+json"  # artifactType and layer of a signature referrer
SIGNATURE_PAYLOAD = "application/vnd.imgtool.signature-payload.v1+json"  # DSSE payloadType
REVOCATION = "application/vnd.imgtool.revocation.v1+json"  # artifactType and layer of a revocation referrer
REVOCATION_PAYLOAD = "application/vnd.imgtool.revocation-payload.v1+json"
BOOT_PROFILE = "application/vnd.imgtool.boot-profile.v1+json"  # artifactType and layer of a boot profile referrer

# Annotations
REF_NAME = "org.opencontainers.image.ref.name"  # a tag in an OCI layout's index.json
CREATED = "org.opencontainers.image.created"
