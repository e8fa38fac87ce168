"""The conda environment for clusters pins what the lock installs here."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_conda_env_matches_lock() -> None:
    expected = subprocess.run([sys.executable, str(ROOT / "envs" / "export_conda_env.py")],
                              check=True, capture_output=True, text=True).stdout
    assert (ROOT / "envs" / "wsss.yaml").read_text() == expected, "run `make envs` after changing dependencies"
