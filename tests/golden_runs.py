"""The fixed set of runs behind tests/test_golden_runs.py: the restructure of the simulate half
(issue "One pipeline") must not change a number for the same seed.

``python -m tests.golden_runs --write`` records tests/data/golden_runs.json from the code as it
is; it was recorded once, on commit 4bfd680 (before the restructure), and is not rewritten by the test. One
entry was re-recorded since, on purpose: ``signsgd/disc/student`` on 2026-12-06, when the Student-t filler
changed its variates (two polar attempts a Philox block, fdlibm's log and exp instead of libm's, so that it
vectorises; the law is the same, tests/test_rng.py checks it and its C twin). Each case is small (a few
hundred paths, tens of steps) and reuses kernels other tests build.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

PATH = Path(__file__).parent / "data" / "golden_runs.json"

H = [0.5, 1.0, 3.0]
SIG = [0.3, 1.0, 2.0]
X0 = [1.0, -2.0, 0.5]


def _cases():
    import sdederive as sd

    quad = sd.Quadratic(h=H, sigma=SIG, x0=X0)
    quad_t = sd.Quadratic(h=H, sigma=SIG, x0=X0, noise="student-t", nu=4)
    quad_c = sd.Quadratic(H=[[1.0, 0.2, 0.0], [0.2, 0.8, 0.1], [0.0, 0.1, 2.0]],
                          Sigma=[[1.0, 0.3, 0.0], [0.3, 0.5, 0.1], [0.0, 0.1, 0.7]], x0=X0)
    logi = sd.LogisticRegression.synthetic(n=64, d=3, B=4, seed=1)
    run = {"paths": 400, "steps": 40, "save_every": 10, "seed": 7}
    yield "sgd/sde/quad", lambda: sd.compile(sd.derive("sgd"), quad).run(eta=0.05, **run)
    yield "sgd/disc/quad", lambda: sd.compile("sgd", quad).run(eta=0.05, **run)
    yield "sgd/disc/corr", lambda: sd.compile("sgd", quad_c).run(eta=0.05, **run)
    yield "adam/sde/quad", lambda: sd.compile(sd.derive("adam"), quad).run(eta=0.01, **run)
    yield "adam/disc/quad", lambda: sd.compile("adam", quad).run(eta=0.01, **run)
    yield "rmsprop/sde/quad", lambda: sd.compile(sd.derive("rmsprop"), quad).run(eta=0.01, **run)
    yield "signsgd/sde/quad", lambda: sd.compile(sd.derive("signsgd"), quad).run(eta=0.01, **run)
    yield "signsgd/disc/student", lambda: sd.compile("signsgd", quad_t).run(eta=0.01, **run)
    yield "adagrad/disc/quad", lambda: sd.compile("adagrad", quad).run(eta=0.1, **run)
    yield "sgd/disc/logistic", lambda: sd.compile("sgd", logi).run(eta=0.1, **run)
    yield "sgd/sde/logistic", lambda: sd.compile(sd.derive("sgd", noise="minibatch"), logi).run(eta=0.1, **run)


def summary(res) -> dict:
    return {"loss": np.asarray(res.mean["loss"]).tolist(), "x": np.asarray(res.mean["x"])[-1].tolist(),
            "var_x": np.asarray(res.var["x"])[-1].tolist()}


def record() -> dict:
    return {name: summary(fn()) for name, fn in _cases()}


if __name__ == "__main__":
    if "--write" in sys.argv:
        PATH.write_text(json.dumps(record(), indent=1, sort_keys=True) + "\n")
        print("wrote", PATH)
