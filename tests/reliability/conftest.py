"""Fixtures of the reliability campaigns.

The default run is sized for CI; IMGTOOL_CAMPAIGN=1 runs the full campaigns
(several hundred kill points). IMGTOOL_CAMPAIGN_REPORT=FILE collects every
campaign's figures as JSON lines (docs/RELIABILITY.md quotes them).
"""

from __future__ import annotations

# The `zygote` fork server these campaigns use is a fixture of tests/conftest.py (the remote kill tests
# use it too).
