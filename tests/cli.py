"""Run the real imgtool command line in a subprocess against a private home."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


class Cli:
    def __init__(self, home: Path, env: dict[str, str] | None = None, *, cwd: Path | None = None) -> None:
        self.home = home
        self.env = env or {}
        self.cwd = cwd

    def env_for(self) -> dict[str, str]:
        """The environment the command line runs in (for a test that starts it itself)."""
        return {**os.environ, "IMGTOOL_HOME": str(self.home), **self.env}

    def __call__(self, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        env = self.env_for()
        done = subprocess.run([sys.executable, "-m", "imgtool", *args], env=env, capture_output=True, text=True,
                              check=False, cwd=self.cwd,
                              timeout=300)
        if ok and done.returncode != 0:
            raise AssertionError(f"imgtool {' '.join(args)} failed ({done.returncode}):\n{done.stderr}{done.stdout}")
        return done

    def json(self, *args: str) -> object:
        return json.loads(self("--json", *args).stdout)
