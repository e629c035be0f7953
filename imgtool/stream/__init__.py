"""Streaming boot: a VM runs from a remote version while its chunks arrive (issue 21)."""
