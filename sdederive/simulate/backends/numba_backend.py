r"""numba backend: one generated module per (kernel spec, problem kind, scheme, dtype).

The module holds the functions printed from the spec (`coef` or `upd`, and `obs`), the
problem's gradient/loss fragment, and one `@njit(cache=True, nogil=True)` kernel that advances
a range of fixed blocks of paths: every path goes through a chunk of steps with its state in local
arrays, and the snapshot statistics (Welford mean and M2 over the paths of the block) are
accumulated in the kernel.  `NumbaBackend` (the registered `"numba"` backend) spreads the blocks
over OS threads; the number of blocks depends only on the number of paths, so results are bit-identical
for any thread count.  Random numbers come from `sdederive.simulate.rng.philox` and the snapshot
update from `sdederive.simulate.backends.kernel_support` (imported; the module carries both files'
SHA-256, so editing either changes every kernel's content hash).

It is written to `<cache>/kernels/sdegen_<sha256[:16]>.py` (atomically: temporary file, then
`os.replace`) and executed from the source text in memory (never from the file or a `.pyc`, so a
damaged or edited file on disk cannot change what runs); numba's own cache (`cache=True`) then
keeps the machine code in `<cache>/kernels/__pycache__` (or under `NUMBA_CACHE_DIR`), so a
second process loads the compiled kernel instead of compiling it again.

Cache safety.  numba's cache index (`.nbi`) and data (`.nbc`) files are pickles: whoever can
write them can run code in the next process that loads a kernel.  `cache_dir` therefore
creates its folders private (`0700`) and refuses a cache folder owned by another user or writable
by others (group-writable ones only with `SDEDERIVE_CACHE_SHARED=1`, for a group that trusts its
members).  A damaged cache (truncated or garbage `.nbi`/`.nbc`, garbage in the kernel file) is
detected when the kernel is loaded: its entries are dropped and the kernel is compiled again.
Text from an SDE or a problem (optimizer names, notes) reaches the module only inside comments,
escaped to one line of ASCII by `_comment`; names in code are checked identifiers.
"""

from __future__ import annotations

import hashlib
import os
import stat
import sys
import threading
import types
import warnings
from pathlib import Path

from sdederive._atomic import atomic_write_text
from sdederive.errors import SdederiveError
from sdederive.simulate.backends import kernel_support
from sdederive.simulate.backends.base import AbstractBackend, KernelSource, RunArrays
from sdederive.simulate.backends.numba_printer import print_python
from sdederive.simulate.backends.registry import register_backend
from sdederive.simulate.lower import CodegenError
from sdederive.simulate.rng import philox as rng
from sdederive.simulate.spec import KernelSpec, check_names

__all__ = ["generate", "load_module", "cache_dir", "NumbaBackend", "default_threads"]

# Decorator of the kernel's helpers (spec functions, problem fragments; LLVM inlines them into the
# kernel): numpy's error model like the kernel, so x/0 gives inf, which the kernel's divergence
# check reports with its path and step, and no ZeroDivisionError branch blocks vectorisation.
# Only kernels call them, never Python (the host calls the module's host_loss and host_obs): no CPython or
# cfunc wrapper is built, which halves each helper's compile in numba's timers (0.13-0.19 s -> 0.05-0.09 s;
# in a kernel's wall-clock compile the gain is within the machine's noise, docs/benchmarks.md section 3).
_HELPER = "njit(fastmath=False, error_model='numpy', no_cpython_wrapper=True, no_cfunc_wrapper=True)"

# The generated module's imports.  Random numbers come from :mod:`sdederive.simulate.rng.philox`
# (through its cached block fillers: Gaussians, Student-t and minibatch indices), the
# snapshot statistics from :mod:`sdederive.simulate.backends.kernel_support`; the hashes of both files are
# printed into the module, so editing either gives every kernel a new content hash.
_PRELUDE = (
    "import math\n\nimport numpy as np\nfrom numba import njit\n\n"
    "from sdederive.simulate.backends.kernel_support import snapshot_add\n"
    "from sdederive.simulate.rng.philox import draw_indices, fill_normals, fill_student_t\n\n"
    f"HELPER = {_HELPER}\n"
    "# sdederive.simulate.rng.philox sha256: {rng}\n"
    "# sdederive.simulate.backends.kernel_support sha256: {support}\n"
)
_lock = threading.Lock()


def cache_dir() -> Path:
    """`$SDEDERIVE_CACHE` or `~/.cache/sdederive` (per user), with its `kernels/` folder.

    Folders it creates are private (`0700`), and the ones it manages (the default folder,
    `kernels/`, `kernels/__pycache__`) lose group/other write bits.  numba's cache files there are
    pickles, so a `$SDEDERIVE_CACHE` owned by another user or writable by others is refused
    (`SdederiveError` naming it); a group-writable one too, unless
    `SDEDERIVE_CACHE_SHARED=1` says the group is trusted.
    """
    given = os.environ.get("SDEDERIVE_CACHE")
    d = Path(given or Path.home() / ".cache" / "sdederive").expanduser()
    shared = os.environ.get("SDEDERIVE_CACHE_SHARED", "") == "1"
    for folder in (d, d / "kernels", d / "kernels" / "__pycache__"):
        if not folder.is_dir():
            folder.mkdir(mode=0o770 if shared else 0o700, parents=True, exist_ok=True)
        _check_private(folder, own=folder != d or not given)  # a folder the user names is never chmod-ed
    return d


def _check_private(folder: Path, own: bool) -> None:
    """Refuse `folder` unless only this user can write it.  `own`: a folder sdederive manages
    (the default cache folder, `kernels/`, its `__pycache__`), whose group/other write bits are
    simply removed when it belongs to this user."""
    if not hasattr(os, "getuid"):  # pragma: no cover - Windows: ACLs, not mode bits
        return
    st = folder.stat()
    shared = os.environ.get("SDEDERIVE_CACHE_SHARED", "") == "1"
    if st.st_uid != os.getuid() and not shared:
        raise SdederiveError(
            f"the kernel cache folder {str(folder)!r} belongs to another user (uid {st.st_uid}); numba's cache "
            "files are pickles that run code when loaded, so the cache must be your own: set SDEDERIVE_CACHE to a "
            "folder only you can write (see docs/simulators.md#kernel-cache)")
    loose = st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    if not loose:
        return
    if own and st.st_uid == os.getuid() and not shared:
        os.chmod(folder, stat.S_IMODE(st.st_mode) & ~(stat.S_IWGRP | stat.S_IWOTH))
        return
    if st.st_mode & stat.S_IWOTH or not shared:
        who = "everyone" if st.st_mode & stat.S_IWOTH else "its group"
        raise SdederiveError(
            f"the kernel cache folder {str(folder)!r} is writable by {who} (mode {stat.S_IMODE(st.st_mode):o}); "
            "numba's cache files are pickles that run code when loaded, so only you may write there: "
            f"run `chmod go-w {folder}` or set SDEDERIVE_CACHE to a private folder"
            + ("" if st.st_mode & stat.S_IWOTH else " (or SDEDERIVE_CACHE_SHARED=1 if the group is trusted)")
            + " (see docs/simulators.md#kernel-cache)")
    warnings.warn(f"kernel cache folder {folder} is group-writable (SDEDERIVE_CACHE_SHARED=1): every member of "
                  "the group can run code in your processes through it", stacklevel=3)


def _comment(text: object) -> str:
    """`text` as one line of printable ASCII for a `#` comment: line breaks, control and non-ASCII
    characters escaped (`\\n`), so nothing in it can end the comment and become code."""
    return str(text).encode("unicode_escape").decode("ascii")


def _args(spec: KernelSpec, what: str) -> str:
    st = ", ".join(f"s_{s}" for s in spec.states)
    hp = ", ".join(f"hp_{h}" for h in spec.scalars)
    if what == "coef":
        parts = [st, "gr, hs, sg, tt", hp]
    elif what == "upd":
        parts = [st, "gv, kk", hp]
    else:
        parts = [st, hp]
    return ", ".join(p for p in parts if p)


def _ret(names) -> str:
    names = list(names)
    return "return " + (", ".join(names) + ("," if len(names) == 1 else ""))


def _functions(spec: KernelSpec) -> str:
    out = []
    if spec.mode == "sde":
        names = [f"a_{s}" for s in spec.states] + [f"b_{s}_{j}" for j in range(spec.n_sources) for s in spec.states]
        out.append(f"@HELPER\ndef coef({_args(spec, 'coef')}):\n"
                   f"{print_python(spec.coef, '    ')}\n    {_ret(names)}\n")
    else:
        names = [f"n_{s}" for s in spec.states]
        out.append(f"@HELPER\ndef upd({_args(spec, 'upd')}):\n"
                   f"{print_python(spec.upd, '    ')}\n    {_ret(names)}\n")
    names = [f"o_{o}" for o in spec.outputs]
    out.append(f"@HELPER\ndef obs({_args(spec, 'obs')}):\n"
               f"{print_python(spec.obs, '    ')}\n    {_ret(names)}\n")
    return "\n".join(out)


# -- problem fragments: gradient (GR), Hessian diagonal (HS), noise scale (SG), loss, HVP, noise factor -------
# Each problem kind owns its fragment (sdederive.problems: generated from its one description, or written next
# to its numpy code); PV is its parameter pack, read at the named offsets P_<field> of its layout.
def problem_fragment(problem) -> str:
    return problem.numba_fragment()


def generate(spec: KernelSpec, problem, scheme: str = "euler", dtype: str = "float64") -> str:
    """The generated module's source text."""
    check_names(spec)
    S = len(spec.states)
    nout = len(spec.outputs)
    st_load = ", ".join(f"X[{j}, i]" for j in range(S))
    hp_load = "\n".join(f"        hp_{h} = HP[{j}]" for j, h in enumerate(spec.scalars))
    hp_args = ", ".join(f"hp_{h}" for h in spec.scalars)
    need_hs = "True" if "hs" in spec.uses else "False"
    need_sg = "True" if (problem.noise_varies and spec.mode == "sde") else "False"
    minibatch = problem.minibatch
    corr = spec.noise_form == "corr"
    L: list[str] = []
    w = L.append
    # normals per step
    if spec.mode == "discrete":
        nz = "0" if minibatch else "d"  # Gaussian or Student-t draws, one per coordinate
    else:
        if corr and minibatch:
            nz = "PM.shape[0]"
        elif corr:
            nz = "d"
        else:
            nz = f"{spec.n_sources} * d"
    w("@njit(cache=True, nogil=True, fastmath=False, error_model='numpy')")
    w("def kernel(STATE, DIV, k_begin, k_end, save_every, sub, tau, key0, key1, HP, PV, PM, PL, PY, "
      "MEAN, M2, CNT, nblk, b_lo, b_hi):")
    w("    N = STATE.shape[0]")
    w("    d = STATE.shape[2]")
    w(problem.layout().numba_offsets("    "))  # the parameter pack's named offsets P_<field>
    w(f"    nz = {nz}")
    w("    nz4 = ((nz + 3) // 4) * 4")
    w("    dt = tau / sub")
    w("    sdt = math.sqrt(dt)")
    w("    nwork = 2 * PM.shape[0] + 4")
    w("    for b in range(b_lo, b_hi):")
    w("        p_lo = (b * N) // nblk")
    w("        p_hi = ((b + 1) * N) // nblk")
    w(f"        X = np.empty(({S}, d), DT)")
    w("        GR = np.zeros(d)")
    w("        HS = np.zeros(d)")
    w("        SG = np.zeros(d)")
    w("        G = np.zeros(d)")
    w("        XI = np.zeros(d)")
    w("        ZR = np.zeros((1, nz4 + 4))")  # fill_normals' row block (one row); Z, its row, is what the step reads
    w("        Z = ZR[0]")
    w("        W = np.zeros(nwork)")
    if spec.mode == "discrete" and minibatch:
        w("        IDX = np.zeros(int(PV[P_B]) + 4, np.int64)")
    w(f"        OBS = np.empty(2 + {nout} * d)")
    if scheme == "weak2":
        w(f"        A0 = np.empty(({S}, d))")
        w(f"        B0 = np.empty(({S}, d))")
        w(f"        YB = np.empty(({S}, d))")
        w(f"        YP = np.empty(({S}, d))")
        w(f"        YM = np.empty(({S}, d))")
        w("        GRB = np.zeros(d)")
        w("        GRP = np.zeros(d)")
        w("        GRM = np.zeros(d)")
        w("        HSB = np.zeros(d)")
        w("        HSP = np.zeros(d)")
        w("        HSM = np.zeros(d)")
        w("        SGB = np.zeros(d)")
        w("        SGP = np.zeros(d)")
        w("        SGM = np.zeros(d)")
    if hp_load:
        w(hp_load)
    w("        prob_noise0(d, SG, PV, PM, PL, PY, W)")
    w("        for p in range(p_lo, p_hi):")
    w("            if DIV[p] >= 0:")
    w("                continue")
    w(f"            for j in range({S}):")
    w("                for i in range(d):")
    w("                    X[j, i] = STATE[p, j, i]")
    w("            for k in range(k_begin, k_end):")
    if spec.mode == "discrete":
        w("                cstep = k")
        w("                kk = float(k)")
        _discrete_step(w, spec, problem, hp_args, nz)
    else:
        w("                for ss in range(sub):")
        w("                    cstep = k * sub + ss")
        w("                    tt = (k + ss / sub) * tau")
        if scheme == "weak2":
            _weak2_step(w, spec, problem, hp_args, need_hs, need_sg, corr)
        else:
            _euler_step(w, spec, problem, hp_args, need_hs, need_sg, corr)
        w("                    if bad > 0:")
        w("                        break")
    w("                if bad > 0:")
    w("                    DIV[p] = k + 1")
    w("                    break")
    w("                if (k + 1) % save_every == 0:")
    w("                    jsave = (k + 1) // save_every")
    w("                    xrow = X[0]")
    w("                    OBS[0] = prob_loss(xrow, PV, PM, PL, PY, W)")
    w("                    for i in range(d):")
    outs = ", ".join(f"o{j}" for j in range(nout)) + ("," if nout == 1 else "")
    w(f"                        {outs} = obs({st_load}{', ' if hp_args else ''}{hp_args})")
    for j in range(nout):
        w(f"                        OBS[2 + {j} * d + i] = o{j}")
    # a non-finite (or overflowing) observable of a finite state, e.g. the loss of a huge x: diverged
    w("                    if not snapshot_add(MEAN, M2, CNT, b, jsave, OBS, xrow):")
    w("                        DIV[p] = k + 1")
    w("                        break")
    w(f"            for j in range({S}):")
    w("                for i in range(d):")
    w("                    STATE[p, j, i] = X[j, i]")
    _host_functions(w, spec)
    body = "\n".join(L)
    header = ("# generated by sdederive: do not edit (regenerated from the spec; file name = content hash)\n")
    return (header + _PRELUDE.format(rng=rng.SOURCE_HASH, support=kernel_support.SOURCE_HASH) + "\n"
            + _comment(f"# kernel: {spec.mode} {spec.name} on {problem.kind}, scheme {scheme}, dtype {dtype}") + "\n"
            + f"DT = np.{_dtype(dtype)}\n"
            + "\n".join(_comment(f"# note: {n}") for n in spec.notes) + "\n"
            + problem_fragment(problem) + "\n" + _functions(spec) + "\n" + body + "\n")


#: `host_loss`, the loss of rows of `x` for the host-side snapshots, as the scalar and the vector modules print it
HOST_LOSS = ("", "", "@njit(cache=True, nogil=True, fastmath=False, error_model='numpy')",
             "def host_loss(XR, PV, PM, PL, PY, W, OUT):",
             "    for p in range(XR.shape[0]):",
             "        OUT[p] = prob_loss(XR[p], PV, PM, PL, PY, W)")


def _host_functions(w, spec: KernelSpec) -> None:
    """`host_loss` and `host_obs`: the loss of rows of `x` and the observables of one state at every
    coordinate, in float64, for the host-side snapshots (the start, `keep_final`).  Cached like the kernel, so
    a run in a fresh process loads them instead of compiling `prob_loss` and `obs` for Python arguments
    (about 0.3 s, once per process, that every first `Simulator.run` paid)."""
    S, nout = len(spec.states), len(spec.outputs)
    for line in HOST_LOSS:
        w(line)
    w("")
    w("")
    w("@njit(cache=True, nogil=True, fastmath=False, error_model='numpy')")
    w("def host_obs(ST, HP, OUT):")
    w("    for i in range(ST.shape[1]):")
    args = [f"ST[{j}, i]" for j in range(S)] + [f"HP[{j}]" for j in range(len(spec.scalars))]
    outs = ", ".join(f"o{j}" for j in range(nout)) + ("," if nout == 1 else "")
    w(f"        {outs} = obs({', '.join(args)})")
    for j in range(nout):
        w(f"        OUT[{j}, i] = o{j}")


def _dtype(dtype: str) -> str:
    if dtype not in ("float64", "float32"):
        raise CodegenError(f"dtype {dtype!r} is not supported; allowed: float64, float32")
    return dtype


def _check_line(w, indent: str, names) -> None:
    for n in names:
        w(f"{indent}if not (abs({n}) <= 1.7976931348623157e308):")
        w(f"{indent}    bad += 1")


def _discrete_step(w, spec, problem, hp_args, nz) -> None:
    S = len(spec.states)
    ind = "                "
    w(f"{ind}xrow = X[0]")
    if problem.minibatch:
        # minibatch of B indices drawn with replacement (stream 1), gradient averaged over it (the problem's lines)
        for line in problem.numba_minibatch_grad(ind):
            w(line)
    else:
        w(f"{ind}prob_grad(xrow, GR, HS, SG, PV, PM, PL, PY, W, False, False)")
        if problem.noise == "student-t":
            w(f"{ind}fill_student_t(Z, d, PV[P_nu], cstep, p, key0, key1)")
            w(f"{ind}for i in range(d):")
            w(f"{ind}    G[i] = GR[i] + SG[i] * Z[i]")
        else:
            _fill_normals(w, ind)
            if problem.has_noise_factor:
                w(f"{ind}prob_corr(xrow, GR, Z, XI, PV, PM, PL, PY, W)")
                w(f"{ind}for i in range(d):")
                w(f"{ind}    G[i] = GR[i] + XI[i]")
            else:
                w(f"{ind}for i in range(d):")
                w(f"{ind}    G[i] = GR[i] + SG[i] * Z[i]")
    st_load = ", ".join(f"X[{j}, i]" for j in range(S))
    news = ", ".join(f"n{j}" for j in range(S)) + ("," if S == 1 else "")
    w(f"{ind}bad = 0")
    w(f"{ind}for i in range(d):")
    w(f"{ind}    {news} = upd({st_load}, G[i], kk{', ' if hp_args else ''}{hp_args})")
    for j in range(S):
        w(f"{ind}    X[{j}, i] = n{j}")
    _check_line(w, ind + "    ", [f"X[{j}, i]" for j in range(S)])


def _fill_normals(w, ind) -> None:
    """The step's standard normals into `Z` (the row `ZR[0]`): the cached block filler `fill_normals` (int64
    arguments, one signature for every kernel, scalar and vector), not `normal_pair` inlined here; why, with the
    measurements, is in the module docstring of `sdederive.simulate.rng.philox`."""
    w(f"{ind}fill_normals(ZR, 0, nz4 // 4, cstep, p, np.int64(0), key0, key1)")


def _corr_increment(w, ind, problem, XI="XI", GRv="GR") -> None:
    """XI = correlated noise increment per unit sqrt(dt): the problem's noise factor (`prob_corr`: L z for a
    quadratic, the low-rank factor of logistic regression, which reads the W and GR of `prob_grad` at X[0])."""
    w(f"{ind}prob_corr(X[0], {GRv}, Z, {XI}, PV, PM, PL, PY, W)")


def _euler_step(w, spec, problem, hp_args, need_hs, need_sg, corr) -> None:
    S = len(spec.states)
    r = spec.n_sources
    ind = "                    "
    w(f"{ind}prob_grad(X[0], GR, HS, SG, PV, PM, PL, PY, W, {need_hs}, {need_sg})")
    _fill_normals(w, ind)
    if corr:
        _corr_increment(w, ind, problem)
    st_load = ", ".join(f"X[{j}, i]" for j in range(S))
    names = [f"a{j}" for j in range(S)] + [f"b{j}_{q}" for q in range(r) for j in range(S)]
    lhs = ", ".join(names) + ("," if len(names) == 1 else "")
    w(f"{ind}bad = 0")
    w(f"{ind}for i in range(d):")
    w(f"{ind}    {lhs} = coef({st_load}, GR[i], HS[i], SG[i], tt{', ' if hp_args else ''}{hp_args})")
    for j in range(S):
        if corr:
            noise = f" + b{j}_0 * (sdt * XI[i])"
        else:
            noise = "".join(f" + b{j}_{q} * (sdt * Z[{q} * d + i])" for q in range(r))
        w(f"{ind}    y{j} = X[{j}, i] + a{j} * dt{noise}")
    for j in range(S):
        w(f"{ind}    X[{j}, i] = y{j}")
    _check_line(w, ind + "    ", [f"X[{j}, i]" for j in range(S)])


def _weak2_step(w, spec, problem, hp_args, need_hs, need_sg, corr) -> None:
    """Platen's explicit weak order-2 scheme (Kloeden & Platen 1992, eq. 15.1.3) for one noise source:
    Ybar = Y + a dt + b dW, Y+- = Y + a dt +- b sqrt(dt);
    Y' = Y + (a(Ybar) + a) dt/2 + (b(Y+) + b(Y-) + 2b) dW/4 + (b(Y+) - b(Y-)) (dW^2 - dt)/(4 sqrt(dt)),
    supports evaluated at t + dt, the gradient recomputed at every support point."""
    S = len(spec.states)
    ind = "                    "
    hp = f"{', ' if hp_args else ''}{hp_args}"
    w(f"{ind}prob_grad(X[0], GR, HS, SG, PV, PM, PL, PY, W, {need_hs}, {need_sg})")
    _fill_normals(w, ind)
    if corr:
        _corr_increment(w, ind, problem)
    dW = "(sdt * XI[i])" if corr else "(sdt * Z[i])"
    st = ", ".join(f"X[{j}, i]" for j in range(S))
    lhs = ", ".join([f"a{j}" for j in range(S)] + [f"b{j}" for j in range(S)])
    w(f"{ind}for i in range(d):")
    w(f"{ind}    {lhs} = coef({st}, GR[i], HS[i], SG[i], tt{hp})")
    for j in range(S):
        w(f"{ind}    A0[{j}, i] = a{j}")
        w(f"{ind}    B0[{j}, i] = b{j}")
        w(f"{ind}    YB[{j}, i] = X[{j}, i] + a{j} * dt + b{j} * {dW}")
        w(f"{ind}    YP[{j}, i] = X[{j}, i] + a{j} * dt + b{j} * sdt")
        w(f"{ind}    YM[{j}, i] = X[{j}, i] + a{j} * dt - b{j} * sdt")
    w(f"{ind}prob_grad(YB[0], GRB, HSB, SGB, PV, PM, PL, PY, W, {need_hs}, {need_sg})")
    w(f"{ind}prob_grad(YP[0], GRP, HSP, SGP, PV, PM, PL, PY, W, {need_hs}, {need_sg})")
    w(f"{ind}prob_grad(YM[0], GRM, HSM, SGM, PV, PM, PL, PY, W, {need_hs}, {need_sg})")
    if not problem.noise_varies:
        w(f"{ind}for i in range(d):")
        w(f"{ind}    SGB[i] = SG[i]")
        w(f"{ind}    SGP[i] = SG[i]")
        w(f"{ind}    SGM[i] = SG[i]")
    w(f"{ind}bad = 0")
    w(f"{ind}t1 = tt + dt")
    w(f"{ind}for i in range(d):")
    for tag in ("B", "P", "M"):
        st_t = ", ".join(f"Y{tag}[{j}, i]" for j in range(S))
        lhs = ", ".join([f"a{tag}{j}" for j in range(S)] + [f"b{tag}{j}" for j in range(S)])
        w(f"{ind}    {lhs} = coef({st_t}, GR{tag}[i], HS{tag}[i], SG{tag}[i], t1{hp})")
    w(f"{ind}    dw = {dW}")
    for j in range(S):
        w(f"{ind}    y{j} = (X[{j}, i] + 0.5 * (aB{j} + A0[{j}, i]) * dt + 0.25 * (bP{j} + bM{j} + 2.0 * B0[{j}, i]) * dw"
          f" + 0.25 * (bP{j} - bM{j}) * (dw * dw - dt) / sdt)")
    for j in range(S):
        w(f"{ind}    X[{j}, i] = y{j}")
    _check_line(w, ind + "    ", [f"X[{j}, i]" for j in range(S)])


def _module_name(source: str) -> str:
    import numba

    return "sdegen_" + hashlib.sha256((source + numba.__version__ + sys.version).encode()).hexdigest()[:16]


def load_module(source: str, fresh: bool = False):
    """Write `source` to the cache under its content hash (atomically) and run it as a module.

    The module is executed from `source` itself, compiled with the cache file as its file name (numba's
    cache keys on that file), so a damaged or edited file on disk is rewritten, never executed, and no
    `.pyc` is read.  `fresh`: build a new module object even if one is loaded (new dispatchers,
    which read numba's on-disk cache again).
    """
    name = _module_name(source)
    kdir = cache_dir() / "kernels"
    path = kdir / f"{name}.py"
    data = source.encode("utf-8")
    with _lock:
        try:
            same = path.read_bytes() == data
        except OSError:
            same = False
        if not same:
            atomic_write_text(path, source)  # readers see the old file or the whole new one
        if name in sys.modules and not fresh:
            return sys.modules[name]
        module = types.ModuleType(name)
        module.__file__ = str(path)
        code = compile(source, str(path), "exec", dont_inherit=True)
        sys.modules[name] = module
        try:
            exec(code, module.__dict__)  # noqa: S102 - our own generated source, not text from a file
        except BaseException:
            sys.modules.pop(name, None)
            raise
        return module


def _drop_numba_cache(module) -> list[str]:
    """Forget the on-disk numba cache of every cached dispatcher the kernel module uses (its kernel and
    the random-number and snapshot routines it calls): each index is emptied (`Cache.flush`) and the
    kernel's own `.nbi`/`.nbc` files removed.  Returns what was dropped, for the error message."""
    dropped = []
    for obj in list(vars(module).values()):
        cache = getattr(obj, "_cache", None)
        if cache is None or not hasattr(cache, "flush"):
            continue
        try:
            cache.flush()
            dropped.append(getattr(obj, "__name__", "?"))
        except OSError:
            pass
    stem = Path(module.__file__).stem
    for f in (Path(module.__file__).parent / "__pycache__").glob(f"{stem}.*"):
        if f.suffix in (".nbi", ".nbc"):
            try:
                f.unlink()
            except OSError:
                pass
    return dropped


def default_threads() -> int:
    """The kernel's OS threads when `threads=None`: `$SDEDERIVE_THREADS`, else `$NUMBA_NUM_THREADS`, else
    the CPUs this process may run on; an invalid variable is an `SdederiveError`."""
    for var in ("SDEDERIVE_THREADS", "NUMBA_NUM_THREADS"):
        env = os.environ.get(var)
        if env:
            try:
                n = int(env)
            except ValueError:
                n = 0
            if n < 1:
                raise SdederiveError(f"{var}={env!r} is invalid; allowed: an integer >= 1 (or unset: all cores)")
            return n
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


_POOLS: dict = {}


def _pool(n: int):
    from concurrent.futures import ThreadPoolExecutor

    if n not in _POOLS:
        _POOLS[n] = ThreadPoolExecutor(max_workers=n, thread_name_prefix="sdederive")
    return _POOLS[n]


#: threadpoolctl's view of the BLAS libraries loaded in the process (refreshed by every build: numba loads
#: scipy's BLAS when it compiles a kernel's first product)
_BLAS = None


def _refresh_blas() -> None:
    global _BLAS
    from threadpoolctl import ThreadpoolController

    _BLAS = ThreadpoolController()


def _launch(kern, args, nblk, threads) -> None:
    """Blocks of paths split over `threads` OS threads (the kernel is `nogil`).  Each block is
    owned by one thread and its statistics by that block, so the split does not change results.

    BLAS runs single-threaded meanwhile (threadpoolctl; the limit is process-wide and lifted after the
    launch): the vector kernels' row-block products (`np.dot`, BLAS `dgemm` of 64 x d by d x d) are each
    called from every kernel thread, and a threaded OpenBLAS under them oversubscribes the cores (measured on
    2 cores: NSGD's SDE at d = 100 3x slower)."""
    n = threads or default_threads()
    n = max(1, min(n, nblk))
    if _BLAS is None:
        _refresh_blas()
    with _BLAS.limit(limits=1, user_api="blas"):
        if n == 1:
            kern(*args, 0, nblk)
            return
        bounds = [(i * nblk // n, (i + 1) * nblk // n) for i in range(n)]
        futs = [_pool(n).submit(kern, *args, lo, hi) for lo, hi in bounds]
        for f in futs:
            f.result()


def _build_host(module, spec, S: int, d: int) -> None:
    """Compile (or load from numba's cache) `host_loss` and `host_obs` for the types run() passes; empty
    inputs, so nothing is evaluated on the placeholder data."""
    import numpy as np

    z2 = np.zeros((1, 1))
    module.host_loss(np.zeros((0, d)), np.zeros(2 * d + 1), z2, z2, np.zeros(1), np.zeros(6), np.zeros(0))
    module.host_obs(np.zeros((S, 0)), np.zeros(len(spec.scalars) + 1), np.zeros((len(spec.outputs), 0)))


@register_backend
class NumbaBackend(AbstractBackend[types.ModuleType]):
    """CPU: the generated numba module (`generate`, `load_module`); its kernel advances fixed
    blocks of paths (`MEAN.shape[0]` of them), spread over OS threads (`default_threads`)."""

    name = "numba"

    @classmethod
    def available(cls) -> tuple[bool, str]:
        return True, ""  # this module imports numba: it is importable when this class exists

    def generate(self, spec: KernelSpec, problem, scheme: str = "euler", dtype: str = "float64") -> KernelSource:
        return KernelSource(self.name, generate(spec, problem, scheme, dtype), spec, problem, scheme, dtype)

    def build(self, source: KernelSource) -> types.ModuleType:
        """The module of `source` (`load_module`: cached under its content hash), its kernel compiled
        now (or loaded from numba's cache) with the argument types `run_chunk` uses.  A damaged numba
        cache is dropped and the kernel compiled again (with a `RuntimeWarning`)."""
        import numpy as np

        module = load_module(source.text)
        spec, d = source.spec, source.problem.d
        S = len(spec.states)
        z2 = np.zeros((1, 1))
        nobs = 2 + len(spec.outputs) * d
        args = (np.zeros((1, S, d)), np.full(1, -1, np.int64), 0, 0, 1, 1, 1.0, 0, 0,
                np.zeros(len(spec.scalars) + 1), np.zeros(2 * d + 1), z2, z2, np.zeros(1),
                np.zeros((1, 1, nobs)), np.zeros((1, 1, nobs)), np.zeros((1, 1), np.int64), 1, 0, 0)
        try:
            module.kernel(*args)
            _build_host(module, spec, S, d)
            _refresh_blas()
        except Exception as first:  # noqa: BLE001 - a damaged numba cache raises whatever unpickling raises
            # A truncated or garbage .nbi/.nbc (disk full, killed writer, copied cache) makes numba's
            # loader fail.  Drop the cache entries, build a fresh module (new dispatchers) and compile again.
            with _lock:
                _drop_numba_cache(module)
            module = load_module(source.text, fresh=True)
            module.kernel(*args)  # a failure that is not the cache's repeats here and is raised
            _build_host(module, spec, S, d)
            warnings.warn(f"the numba cache of kernel {Path(module.__file__).name} was damaged "
                          f"({type(first).__name__}: {str(first)[:120]}); it was rebuilt", RuntimeWarning,
                          stacklevel=2)
        return module

    def run_chunk(self, handle: types.ModuleType, run: RunArrays, k_begin: int, k_end: int) -> None:
        nblk = run.MEAN.shape[0]
        _launch(handle.kernel, (run.state, run.DIV, k_begin, k_end, run.save_every, run.substeps, run.tau,
                                run.key0, run.key1, run.HP, run.PV, run.PM, run.PL, run.PY, run.MEAN, run.M2,
                                run.CNT, nblk), nblk, run.threads)

    def host_module(self, source: KernelSource, handle: types.ModuleType) -> types.ModuleType:
        return handle
