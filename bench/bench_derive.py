"""Benchmark: how long deriving each built-in SDE takes.

For every built-in optimizer in its natural regime (Gaussian noise, order 1):

* cold: ``sdederive.derive`` in a FRESH interpreter (so neither sdederive's result cache nor
  sympy's cache helps); the time of the ``derive`` call alone, measured inside that subprocess
  (interpreter start and imports excluded).  Repeated ``--runs`` times; median and max reported.
* cached: the same call repeated in that process (sdederive's ``lru_cache`` hit).
* baseline: the same derivation with every eta-expansion done by ``sympy.series`` instead of
  sdederive's truncated-series evaluator (``sdederive.derivation.expectation.eta_series`` monkeypatched to
  ``sdederive.derivation.series._sympy_series``, then ``clear_cache()``), also cold in a fresh subprocess, killed
  after ``--timeout`` seconds.  After timing, that subprocess checks that the baseline SDE equals
  sdederive's (column "same").
* eta-expansions: the part of each derivation spent inside ``eta_series`` (ours) or
  ``sympy.series`` (baseline), i.e. the step the two variants differ in.

Requirement checked: any built-in SDE derives in at most 2 s cold.

    python bench/bench_derive.py                  # full table (baseline included; minutes)
    python bench/bench_derive.py --no-baseline    # cold/cached only (seconds)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

LIMIT_S = 2.0


def worker(mode: str, name: str) -> None:
    """Run in a fresh subprocess; print one JSON line of timings."""
    import sdederive as sd
    import sdederive.derivation.expectation as ex
    import sdederive.derivation.series as se

    if mode == "sweep":  # name = "optimizer:regime:noise"
        opt, reg, noi = name.split(":")
        t0 = time.perf_counter()
        try:
            sd.derive(opt, noi, reg)
            status = "ok"
        except sd.SdederiveError:
            status = "refused"
        print(json.dumps({"t": time.perf_counter() - t0, "status": status}), flush=True)
        return
    regime = sd.optimizers.get(name).natural_regime
    spent = [0.0]
    fallbacks = [0]

    def timed(f):
        def g(expr, order):
            t = time.perf_counter()
            try:
                return f(expr, order)
            finally:
                spent[0] += time.perf_counter() - t
        return g

    if mode == "ours":
        real = se._sympy_series

        def counting(expr, order):  # how often the fast evaluator falls back to sympy.series
            fallbacks[0] += 1
            return real(expr, order)

        se._sympy_series = counting
        ex.eta_series = timed(ex.eta_series)
        t0 = time.perf_counter()
        sd.derive(name)
        t1 = time.perf_counter()
        sd.derive(name)
        t2 = time.perf_counter()
        print(json.dumps({"regime": regime, "cold": t1 - t0, "cached": t2 - t1, "series": spent[0],
                          "fallbacks": fallbacks[0]}), flush=True)
    else:
        fast = ex.eta_series
        ex.eta_series = timed(se._sympy_series)
        sd.clear_cache()
        t0 = time.perf_counter()
        try:
            base = sd.derive(name)
        except Exception as e:  # noqa: BLE001 - report, do not crash the table
            print(json.dumps({"regime": regime, "baseline": None, "error": f"{type(e).__name__}: {e}"[:200]}),
                  flush=True)
            return
        t1 = time.perf_counter()
        print(json.dumps({"regime": regime, "baseline": t1 - t0, "baseline_series": spent[0]}), flush=True)
        ex.eta_series = fast
        sd.clear_cache()
        same = base == sd.derive(name)
        print(json.dumps({"same": bool(same)}), flush=True)


def _spawn(mode: str, name: str, timeout: float | None) -> tuple[dict, bool]:
    """Run a worker; return (merged JSON lines, timed_out)."""
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", mode, name]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        out, timed_out = p.stdout, False
        if p.returncode != 0 and not out.strip():
            return {"error": p.stderr.strip().splitlines()[-1] if p.stderr.strip() else f"exit {p.returncode}"}, False
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        timed_out = True
    merged: dict = {}
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("{"):
            merged.update(json.loads(line))
    return merged, timed_out


def _fmt(t: float | None) -> str:
    if t is None:
        return "-"
    if t < 1e-3:
        return f"{t * 1e6:.0f} us"
    if t < 1:
        return f"{t * 1e3:.0f} ms"
    return f"{t:.2f} s"


def machine() -> str:
    import sympy

    model = platform.processor() or platform.machine()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{model}, {os.cpu_count()} cores; Python {platform.python_version()}, sympy {sympy.__version__}, "
            f"{platform.system()} {platform.release()}")


def sweep(names) -> int:
    """Every optimizer x regime x noise model, cold, one fresh process each; summary of the slowest."""
    import sdederive as sd

    rows = []
    for name in names:
        for reg in sd.regimes.names():
            for noi in sd.noise.names():
                r, _ = _spawn("sweep", f"{name}:{reg}:{noi}", None)
                rows.append((r.get("t", float("nan")), name, reg, noi, r.get("status", r.get("error"))))
    ok = [r for r in rows if r[4] == "ok"]
    refused = [r for r in rows if r[4] == "refused"]
    other = [r for r in rows if r[4] not in ("ok", "refused")]
    print(f"{len(rows)} configurations: {len(ok)} derived, {len(refused)} refused with an SdederiveError "
          f"(no limit in that regime), {len(other)} other outcomes")
    print("| optimizer | regime | noise | cold derive |")
    print("| --- | --- | --- | ---: |")
    for t, name, reg, noi, _ in sorted(ok, reverse=True)[:8]:
        print(f"| {name} | {reg} | {noi} | {_fmt(t)} |")
    for _t, name, reg, noi, st in other:
        print(f"| {name} | {reg} | {noi} | {st} |")
    worst = max((r[0] for r in ok), default=0.0)
    print(f"\nslowest derivable configuration: {_fmt(worst)} (requirement: <= {LIMIT_S:g} s) -> "
          f"{'met' if worst <= LIMIT_S else 'NOT met'}")
    return 0 if worst <= LIMIT_S and not other else 1


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3, help="fresh-process cold runs per optimizer (default 3)")
    ap.add_argument("--timeout", type=float, default=120.0, help="cap of the sympy.series baseline, s (default 120)")
    ap.add_argument("--no-baseline", action="store_true", help="skip the sympy.series baseline")
    ap.add_argument("--only", nargs="*", help="optimizers to run (default: all built-ins)")
    ap.add_argument("--sweep", action="store_true",
                    help="instead: cold time of every optimizer x regime x noise model (one fresh process each)")
    ap.add_argument("--worker", nargs=2, metavar=("MODE", "OPT"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(*args.worker)
        return 0

    import sdederive as sd

    names = args.only or sd.optimizers.names()
    print(f"# {machine()}", flush=True)
    if args.sweep:
        return sweep(names)
    print(f"| optimizer | natural regime | cold derive, median (max) of {args.runs} | cached | baseline derive "
          "(sympy.series) | baseline / ours | eta-expansions: ours | eta-expansions: sympy.series | same SDE | <= 2 s |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | :-: | :-: |")
    worst = 0.0
    t_start = time.perf_counter()
    for name in names:
        runs = []
        cached = fallbacks = series = None
        regime = "?"
        for _ in range(args.runs):
            r, _ = _spawn("ours", name, None)
            if "cold" not in r:
                print(f"| {name} | error: {r.get('error')} | | | | | | | | |", flush=True)
                break
            runs.append(r["cold"])
            cached, fallbacks, regime, series = r["cached"], r["fallbacks"], r["regime"], r["series"]
        if not runs:
            continue
        med, mx = statistics.median(runs), max(runs)
        worst = max(worst, mx)
        base_s, ratio, same, bseries = "skipped", "-", "-", "-"
        if not args.no_baseline:
            b, timed_out = _spawn("baseline", name, args.timeout)
            if timed_out and b.get("baseline") is None:
                base_s, ratio = f">{args.timeout:.0f} s", f">{args.timeout / med:.0f}x"
            elif b.get("baseline") is not None:
                base_s, ratio = _fmt(b["baseline"]), f"{b['baseline'] / med:.1f}x"
                same = {True: "yes", False: "NO"}.get(b.get("same"), "?")
                bseries = _fmt(b.get("baseline_series"))
            else:
                base_s = "error: " + str(b.get("error"))[:80]
        note = f" ({fallbacks} fallbacks)" if fallbacks else ""
        print(f"| {name} | {regime} | {_fmt(med)} ({_fmt(mx)}){note} | {_fmt(cached)} | {base_s} | {ratio} "
              f"| {_fmt(series)} | {bseries} | {same} | {'yes' if mx <= LIMIT_S else 'NO'} |", flush=True)
    print(f"\nslowest cold derivation: {_fmt(worst)} (requirement: <= {LIMIT_S:g} s) -> "
          f"{'met' if worst <= LIMIT_S else 'NOT met'}; benchmark wall time {time.perf_counter() - t_start:.0f} s")
    return 0 if worst <= LIMIT_S else 1


if __name__ == "__main__":
    sys.exit(main())
