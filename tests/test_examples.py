"""The example scripts run and reach their conclusions."""

from __future__ import annotations

import runpy
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_custom_optimizer_example(capsys):
    runpy.run_path(str(EXAMPLES / "custom_optimizer.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "SDE of rms_momentum" in out
    assert "wd    " in out or "wd ->" in out or "wd     ->" in out
    assert "one-step moments match: True" in out
