"""Turning image sources into disk manifests: the source grammar, file and overlay capture, VM capture."""
