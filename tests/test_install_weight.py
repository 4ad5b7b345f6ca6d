"""The base install is light: the breast-cancer data ships with the validators, scikit-learn,
matplotlib and pyarrow are extras, and a missing extra is named in the error."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from sdederive.validators import problems

import sdederive as sd


def test_bundled_breast_cancer_is_scikit_learns_bit_for_bit():
    from sklearn.datasets import load_breast_cancer

    A, y = load_breast_cancer(return_X_y=True)
    A2, y2 = problems._breast_cancer_data()
    assert A2.dtype == np.float64 and A2.shape == (569, 30)
    np.testing.assert_array_equal(A2, A)
    np.testing.assert_array_equal(y2, y)


def test_breast_cancer_needs_no_scikit_learn(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)  # any import of sklearn now raises ImportError
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    p = problems.breast_cancer(B=16)
    assert p.d == 30 and p.B == 16
    assert set(np.unique(p.y)) == {-1.0, 1.0} and int(np.sum(p.y == 1.0)) == 357  # benign = +1


def test_missing_matplotlib_names_the_extra(monkeypatch, tmp_path):
    from sdederive.validators._runs import CheckResult

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(sd.SdederiveError, match=r"sdederive\[plot\]"):
        CheckResult("x", True).plot(tmp_path / "x.png")


def test_import_loads_no_optional_dependency():
    code = ("import sys, sdederive, validators; "
            "print(sorted(m for m in ('matplotlib', 'sklearn', 'torch', 'pyarrow', 'pandas', 'jax') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_missing_pyarrow_names_the_sweep_extra(monkeypatch, tmp_path):
    from sdederive.sweep import store

    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(sd.SdederiveError, match=r"sdederive\[sweep\]"):
        store.write_row(tmp_path, {"cell_id": "a", "final_loss": 1.0})
