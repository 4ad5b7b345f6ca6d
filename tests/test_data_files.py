"""Logistic-regression data from CSV, NPZ and Parquet files, with the label conventions 0/1 and -1/+1
handled and every other coding refused; a problem JSON can point to a data file."""

from __future__ import annotations

import json

import numpy as np
import pytest

import sdederive as sd
from sdederive.errors import SdederiveError
from sdederive.problems import load

RNG = np.random.default_rng(0)
A = RNG.standard_normal((12, 3))
Y01 = (RNG.random(12) < 0.5).astype(int)
Y01[:2] = [0, 1]


def _csv(path, A, y, header=True):
    rows = [",".join(["f0", "f1", "f2", "label"])] if header else []
    rows += [",".join(repr(float(v)) for v in [*a, yy]) for a, yy in zip(A, y)]
    path.write_text("\n".join(rows) + "\n")
    return path


def test_csv_npz_parquet_give_the_same_problem(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    want = 2.0 * Y01 - 1.0
    p_csv = _csv(tmp_path / "d.csv", A, Y01)
    np.savez(tmp_path / "d.npz", X=A, y=Y01)
    pq.write_table(pa.table({"f0": A[:, 0], "f1": A[:, 1], "label": Y01, "f2": A[:, 2]}), tmp_path / "d.parquet")
    for f in (p_csv, tmp_path / "d.npz"):
        prob = sd.LogisticRegression.from_file(f, B=4)
        np.testing.assert_array_equal(prob.A, A)
        np.testing.assert_array_equal(prob.y, want)
        assert prob.B == 4
    prob = sd.LogisticRegression.from_file(tmp_path / "d.parquet")  # the label column found by name, not position
    np.testing.assert_array_equal(prob.A, A[:, [0, 1, 2]])
    np.testing.assert_array_equal(prob.y, want)
    # -1/+1 labels stay, a header-less CSV takes its last column
    prob = sd.LogisticRegression.from_file(_csv(tmp_path / "pm.csv", A, want, header=False))
    np.testing.assert_array_equal(prob.y, want)


def test_problem_file_points_to_data_and_cli_reads_a_csv(tmp_path):
    _csv(tmp_path / "train.csv", A, Y01)
    (tmp_path / "prob.json").write_text(json.dumps({"kind": "logistic", "data": "train.csv", "B": 3, "l2": 0.01}))
    prob = load(tmp_path / "prob.json")  # the data path is relative to the problem file
    assert (prob.B, prob.l2, prob.A.shape) == (3, 0.01, (12, 3))
    direct = load(tmp_path / "train.csv")
    assert (direct.B, direct.l2) == (1, 0.0)
    res = sd.compile("sgd", prob).run(paths=8, steps=5, eta=0.1, seed=0, save_every=5)
    assert np.isfinite(res.mean["loss"]).all()


@pytest.mark.parametrize("labels,needle", [
    ([0, 1, 2] * 4, "[0.0, 1.0, 2.0]"),  # three classes
    ([1, 2] * 6, "[1.0, 2.0]"),  # 1/2 coding
])
def test_other_label_codings_are_refused(tmp_path, labels, needle):
    with pytest.raises(SdederiveError, match="allowed: two classes coded 0/1 or -1/\\+1") as e:
        sd.LogisticRegression.from_file(_csv(tmp_path / "bad.csv", A, labels))
    assert needle in str(e.value)


def test_bad_files_get_named_errors(tmp_path):
    (tmp_path / "text.csv").write_text("a,b,label\n1,x,0\n2,3,1\n")
    with pytest.raises(SdederiveError, match="line 2: 'x' is not a number"):
        sd.LogisticRegression.from_file(tmp_path / "text.csv")
    np.savez(tmp_path / "obj.npz", A=np.array([{"a": 1}] * 3, dtype=object), y=np.array([0, 1, 1]))
    with pytest.raises(SdederiveError, match="numeric arrays"):  # never unpickled
        sd.LogisticRegression.from_file(tmp_path / "obj.npz")
    np.savez(tmp_path / "keys.npz", W=A, t=Y01)
    with pytest.raises(SdederiveError, match="needs arrays 'A'"):
        sd.LogisticRegression.from_file(tmp_path / "keys.npz")
    with pytest.raises(SdederiveError, match="unknown format .txt"):
        sd.LogisticRegression.from_file(_csv(tmp_path / "d.txt", A, Y01))
    with pytest.raises(SdederiveError, match="no column named 'target'"):
        sd.LogisticRegression.from_file(_csv(tmp_path / "d.csv", A, Y01), label="target")
    with pytest.raises(SdederiveError, match="does not exist"):
        load(tmp_path / "missing.csv")
