"""The gallery domain: records (galleries, definitions, versions), version numbers and `latest`, lookups,
the version index, publishing and the version operations."""
