"""The example scripts run and reach their conclusions."""

from __future__ import annotations

import runpy
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_custom_optimizer_example(capsys):
    runpy.run_path(str(EXAMPLES / "custom_optimizer.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "SDE of rms_momentum" in out
    assert "wd    " in out or "wd ->" in out or "wd     ->" in out
    assert "one-step moments match: True" in out


# -- the paper examples (validators.checks at reduced size): run as scripts, as a user would --------

@pytest.mark.parametrize("script, png", [
    ("malladi2022_sqrt_rule.py", "malladi2022_sqrt_rule.png"),
    ("compagnoni2025_signsgd_adamw.py", "compagnoni2025_signsgd_adamw.png"),
    ("li_tai_e_sme.py", "li_tai_e_sme_order1.png"),
    ("mccandlish2018_noise_scale.py", "mccandlish2018_noise_scale.png"),
    ("li2024_surge.py", "li2024_surge.png"),
    ("liu2024_adagrad_anisotropic.py", "liu2024_adagrad_anisotropic.png"),
])
def test_paper_example_quick(script, png, tmp_path):
    proc = subprocess.run([sys.executable, str(EXAMPLES / script), "--quick", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    conclusion = [ln for ln in proc.stdout.splitlines() if ln.startswith("CONCLUSION:")]
    assert len(conclusion) == 1 and conclusion[0].endswith(": yes"), proc.stdout[-3000:]
    assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / (script[:-3] + ".json")).exists()
