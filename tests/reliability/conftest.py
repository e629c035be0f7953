"""Fixtures of the reliability campaigns.

The default run is sized for CI; IMGTOOL_CAMPAIGN=1 runs the full campaigns
(several hundred kill points). IMGTOOL_CAMPAIGN_REPORT=FILE collects every
campaign's figures as JSON lines (docs/RELIABILITY.md quotes them).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.reliability.harness import Zygote


@pytest.fixture(scope="session")
def zygote(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Zygote]:
    server = Zygote(tmp_path_factory.mktemp("zygote"))
    try:
        yield server
    finally:
        server.close()
