"""The OCI image-spec JSON schemas, as Debian ships them, behind the `jsonschema` validator.

The schemas come from Debian's golang-github-opencontainers-image-spec-dev (scripts/setup installs it);
they are never fetched: every `$ref` is resolved to a file of that folder by its name. That package is
image-spec 1.1.0-rc2, whose manifest schema predates two 1.1 fields; they are checked with the same
package's own definitions: `artifactType` as a media type (defs-descriptor.json) and `subject` as a
content descriptor (content-descriptor.json), on manifests and on index entries alike.
"""

from __future__ import annotations

import functools
import json
import os
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT4

SCHEMAS = Path("/usr/share/gocode/src/github.com/opencontainers/image-spec/schema")
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
REGISTERED = re.compile(r"^(?:sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128})$")


def require_schemas() -> None:
    """Skip (locally) or fail (CI: IMGTOOL_REQUIRE_TOOLS=1) when the Debian package is missing."""
    if (SCHEMAS / "image-manifest-schema.json").is_file():
        return
    message = f"no OCI image-spec schemas in {SCHEMAS} (run ./scripts/setup)"
    if os.environ.get("IMGTOOL_REQUIRE_TOOLS") == "1":
        pytest.fail(message)
    pytest.skip(message)


def _retrieve(uri: str) -> Resource[Any]:
    """Any `$ref` names a file of the schema folder by its last path component (`defs.json`, …)."""
    name = uri.rstrip("/").rsplit("/", 1)[-1]
    path = SCHEMAS / name
    if not name.endswith(".json") or not path.is_file():
        raise LookupError(f"the OCI schemas have no {name!r} (asked for {uri})")
    return Resource.from_contents(json.loads(path.read_text()), default_specification=DRAFT4)


@functools.cache
def validator(name: str) -> jsonschema.Draft4Validator:
    """A validator for one schema file, or for one `definitions` entry (`defs-descriptor.json#mediaType`)."""
    require_schemas()
    file, _, definition = name.partition("#")
    schema: dict[str, Any] = json.loads((SCHEMAS / file).read_text())
    if definition:
        schema = {"$ref": f"https://opencontainers.org/schema/{file}#/definitions/{definition}"}
    return jsonschema.Draft4Validator(schema, registry=Registry(retrieve=_retrieve))  # type: ignore[call-arg]


def problems(name: str, instance: object) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}"
            for e in validator(name).iter_errors(instance)]


def _descriptor_rules(descriptor: object, where: str) -> list[str]:
    """What rc2's schemas leave to the prose: `artifactType` (1.1) is a media type, and a digest is of a
    registered algorithm in its fixed form (descriptor.md; registries refuse other algorithms)."""
    if not isinstance(descriptor, dict):
        return []
    found = []
    prefix = f"{where}/" if where else ""
    if "artifactType" in descriptor:
        errors = validator("defs-descriptor.json#mediaType").iter_errors(descriptor["artifactType"])
        found += [f"{prefix}artifactType: {e.message}" for e in errors]
    digest = descriptor.get("digest")
    if isinstance(digest, str) and not REGISTERED.fullmatch(digest):
        found.append(f"{prefix}digest: {digest!r} is not a registered algorithm (sha256, sha512) followed by its "
                     "lower-case hex digits")
    return found


def manifest_problems(body: object) -> list[str]:
    found = problems("image-manifest-schema.json", body)
    if isinstance(body, dict):
        found += _descriptor_rules(body, "") + _descriptor_rules(body.get("config"), "config")
        for number, layer in enumerate(body.get("layers") or []):
            found += _descriptor_rules(layer, f"layers/{number}")
        if "subject" in body:
            found += [f"subject/{p}" for p in problems("content-descriptor.json", body["subject"])]
            found += _descriptor_rules(body["subject"], "subject")
        if body.get("mediaType") != OCI_MANIFEST:  # 1.1: MUST be present
            found.append(f"mediaType: {body.get('mediaType')!r} is not the image manifest's")
    return found


def index_problems(body: object) -> list[str]:
    found = problems("image-index-schema.json", body)
    if isinstance(body, dict):
        found += _descriptor_rules(body, "")
        for number, entry in enumerate(body.get("manifests") or []):
            found += _descriptor_rules(entry, f"manifests/{number}")
        if body.get("mediaType") != OCI_INDEX:  # 1.1: MUST be present
            found.append(f"mediaType: {body.get('mediaType')!r} is not the image index's")
    return found


def check_manifest_bytes(data: bytes, media_type: str, what: str) -> dict[str, Any]:
    """Parse and validate one manifest or index by its media type; fails the test with every problem."""
    body = json.loads(data)
    if media_type == OCI_MANIFEST:
        found = manifest_problems(body)
    elif media_type == OCI_INDEX:
        found = index_problems(body)
    else:
        found = [f"media type {media_type!r} is neither an OCI image manifest nor an index"]
    assert not found, f"{what} is not valid OCI: " + "; ".join(found)
    assert isinstance(body, dict)
    return body
