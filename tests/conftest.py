"""Shared fixtures. Integration tests skip when a tool is missing, except in CI."""

from __future__ import annotations

import os
import shutil

import pytest


def require_tools(*tools: str) -> None:
    """Skip (locally) or fail (CI: IMGTOOL_REQUIRE_TOOLS=1) when a tool is missing."""
    missing = [t for t in tools if shutil.which(t) is None]
    if not missing:
        return
    message = f"missing tools: {', '.join(missing)} (run ./scripts/setup)"
    if os.environ.get("IMGTOOL_REQUIRE_TOOLS") == "1":
        pytest.fail(message)
    pytest.skip(message)
