"""Same seed, same numbers across the restructure: a fixed set of runs (SDE and discrete, diagonal,
correlated and heavy-tailed quadratics, logistic regression) against the values recorded before it
(tests/golden_runs.py says how they were recorded)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests import golden_runs

GOLDEN = json.loads(golden_runs.PATH.read_text())
CASES = dict(golden_runs._cases())


@pytest.mark.filterwarnings("ignore::sdederive.analysis.regime_check.RegimeWarning")
@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_same_numbers_as_before(name):
    got = golden_runs.summary(CASES[name]())
    want = GOLDEN[name]
    for key in want:
        # rtol 1e-12: any change of an operation or a random number moves these by far more
        np.testing.assert_allclose(got[key], want[key], rtol=1e-12, atol=1e-14, err_msg=f"{name}: {key}")
