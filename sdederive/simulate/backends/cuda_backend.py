r"""CUDA backend: CUDA C generated from the same `KernelSpec` as the
numba backend, one thread per path, compiled with `cupy.RawModule` on a GPU machine.

`step_kernel` advances each path through a chunk of steps with its state in per-thread arrays
(`d` and the number of states are compile-time constants, so small states stay in registers);
`obs_kernel` writes each path's observables (loss, `|x|^2`, the states in the discrete
optimizer's variables) and CuPy reduces them over paths.  The Philox/Box–Muller code is
`CUDA_SOURCE`, the same algorithm and constants as the CPU side.

Without a GPU the source can still be compiled, which is what CI does: `compile_check` runs
NVRTC through `cuda-bindings` (or a system `nvcc`) for `sm_90`, so a printing bug fails CI.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from sdederive.simulate.backends.base import (
    AbstractBackend,
    BackendUnavailableError,
    KernelSource,
    RunArrays,
    merge_blocks,
)
from sdederive.simulate.backends.cuda_printer import print_c
from sdederive.simulate.backends.registry import register_backend
from sdederive.simulate.lower import CodegenError
from sdederive.simulate.rng.philox_c import CUDA_SOURCE
from sdederive.simulate.spec import KernelSpec, check_names

__all__ = ["generate", "compile_check", "CudaBackend", "nvrtc_available"]


def _sig(spec: KernelSpec, what: str, real: str) -> str:
    st = [f"{real} s_{s}" for s in spec.states]
    hp = [f"{real} hp_{h}" for h in spec.scalars]
    if what == "coef":
        names = [f"a_{s}" for s in spec.states] + [f"b_{s}_{j}" for j in range(spec.n_sources) for s in spec.states]
        args = st + [f"{real} gr", f"{real} hs", f"{real} sg", f"{real} tt"] + hp
    elif what == "upd":
        names = [f"n_{s}" for s in spec.states]
        args = st + [f"{real} gv", f"{real} kk"] + hp
    else:
        names = [f"o_{o}" for o in spec.outputs]
        args = st + hp
    outs = [f"{real} *out_{n}" for n in names]
    return ", ".join(args + outs), names


def _device_fn(name: str, spec: KernelSpec, a, what: str, real: str) -> str:
    sig, names = _sig(spec, what, real)
    body = print_c(a, "    ", real)
    stores = "\n".join(f"    *out_{n} = {n};" for n in names)
    return f"__device__ __forceinline__ void {name}({sig}) {{\n{body}\n{stores}\n}}\n"


def generate(spec: KernelSpec, problem, scheme: str = "euler", dtype: str = "float64") -> str:
    """CUDA C source of `step_kernel` and `obs_kernel` (`extern "C"`)."""
    check_names(spec)
    real = "float" if dtype == "float32" else "double"
    S, d = len(spec.states), problem.d
    nout = len(spec.outputs)
    minibatch = problem.minibatch
    corr = spec.noise_form == "corr"
    nex = problem.n if minibatch else 1
    r = spec.n_sources
    if spec.mode == "discrete":
        nz = "0" if (minibatch or problem.noise == "student-t") else "D"
    else:
        nz = "NEX" if (corr and minibatch) else ("D" if corr else f"{r} * D")
    need_hs = "true" if "hs" in spec.uses else "false"
    need_sg = "true" if (problem.noise_varies and spec.mode == "sde") else "false"
    hp_args = "".join(f", hp_{h}" for h in spec.scalars)
    L: list[str] = []
    w = L.append
    w(f"#define D {d}\n#define S {S}\n#define NEX {nex}\n#define NZ ({nz})\n#define NZ4 (((NZ) + 3) / 4 * 4)")
    w(f"typedef {real} real;")
    w(CUDA_SOURCE)
    # the problem's own fragment (sdederive.problems) with its parameter pack's #define P_<field> offsets
    w(problem.cuda_fragment(real))
    if spec.mode == "sde":
        w(_device_fn("coef", spec, spec.coef, "coef", real))
    else:
        w(_device_fn("upd", spec, spec.upd, "upd", real))
    w(_device_fn("obs", spec, spec.obs, "obs", real))
    w('extern "C" __global__ void step_kernel(double *STATE, long long *DIV, long long k_begin, long long k_end,')
    w("        int sub, double tau, unsigned int key0, unsigned int key1, const double *HP, const double *PV,")
    w("        const double *PM, const double *PL, const double *PY, long long N) {")
    w("    const long long p = (long long)blockIdx.x * blockDim.x + threadIdx.x;")
    w("    if (p >= N || DIV[p] >= 0) return;")
    w("    const real dt = (real)(tau / sub);")
    w("    const real sdt = sqrt(dt);")
    for j, h in enumerate(spec.scalars):
        w(f"    const real hp_{h} = (real)HP[{j}];")
    w("    real X[S][D], GR[D], HS[D], SG[D], G[D], XI[D], W[NEX + 1];")
    w("    double Z[NZ4 + 4];")
    w("    for (int j = 0; j < S; ++j) for (int i = 0; i < D; ++i) X[j][i] = (real)STATE[(p * S + j) * D + i];")
    w("    for (int i = 0; i < D; ++i) { GR[i] = 0; HS[i] = 0; G[i] = 0; XI[i] = 0; }")
    w("    prob_noise0(SG, PV, PM, PL, PY, W);  // a noise scale constant in x (zeros where prob_grad computes it)")
    if scheme == "weak2":
        w("    real A0[S][D], B0[S][D], YB[S][D], YP[S][D], YM[S][D];")
        w("    real GRB[D], GRP[D], GRM[D], HSB[D], HSP[D], HSM[D], SGB[D], SGP[D], SGM[D];")
    w("    int bad = 0;")
    w("    for (long long k = k_begin; k < k_end; ++k) {")
    if spec.mode == "discrete":
        w("        const unsigned int cstep = (unsigned int)k;")
        w("        const real kk = (real)k;")
        _c_discrete(w, spec, problem, hp_args)
    else:
        w("        for (int ss = 0; ss < sub; ++ss) {")
        w("            const unsigned int cstep = (unsigned int)(k * sub + ss);")
        w("            const real tt = (real)((k + (double)ss / sub) * tau);")
        # the gradient first: the correlated increment of logistic regression uses its W and GR
        w(f"            prob_grad(X[0], GR, HS, SG, PV, PM, PL, PY, W, {need_hs}, {need_sg});")
        _c_fill(w, "            ")
        if corr:
            _c_corr(w, "            ")
        if scheme == "weak2":
            _c_weak2(w, spec, hp_args, need_hs, need_sg)
        else:
            _c_euler(w, spec, hp_args, corr)
        w("            if (bad) break;")
        w("        }")
    w("        if (bad) { DIV[p] = k + 1; break; }")
    w("    }")
    w("    for (int j = 0; j < S; ++j) for (int i = 0; i < D; ++i) STATE[(p * S + j) * D + i] = (double)X[j][i];")
    w("}")
    # observables
    w('extern "C" __global__ void obs_kernel(const double *STATE, const long long *DIV, const double *HP,')
    w("        const double *PV, const double *PM, const double *PL, const double *PY, double *OUT, long long p0,")
    w("        long long N) {")
    w("    const long long q = (long long)blockIdx.x * blockDim.x + threadIdx.x;")
    w("    const long long p = p0 + q;")
    w("    if (p >= N) return;")
    for j, h in enumerate(spec.scalars):
        w(f"    const real hp_{h} = (real)HP[{j}];")
    w(f"    double *o = OUT + q * (2 + {nout} * D);")
    w("    real X[S][D], W[NEX + 1];")
    w("    for (int j = 0; j < S; ++j) for (int i = 0; i < D; ++i) X[j][i] = (real)STATE[(p * S + j) * D + i];")
    w("    o[0] = (double)prob_loss(X[0], PV, PM, PL, PY, W);")
    w("    double sq = 0; for (int i = 0; i < D; ++i) sq += (double)X[0][i] * (double)X[0][i];")
    w("    o[1] = sq;")
    w("    for (int i = 0; i < D; ++i) {")
    w(f"        real {', '.join(f'v{j}' for j in range(nout))};")
    st = ", ".join(f"X[{j}][i]" for j in range(S))
    outs = ", ".join(f"&v{j}" for j in range(nout))
    w(f"        obs({st}{hp_args}, {outs});")
    for j in range(nout):
        w(f"        o[2 + {j} * D + i] = (double)v{j};")
    w("    }")
    w("}")
    return "\n".join(L) + "\n"


def _c_fill(w, ind) -> None:
    w(f"{ind}for (int jb = 0; jb < NZ4 / 4; ++jb) sd_normal4(cstep, (sd_u32)jb, (sd_u32)p, 0u, key0, key1, &Z[4 * jb]);")


def _c_corr(w, ind) -> None:
    # the problem's noise factor: L z, or logistic regression's low-rank one (W and GR from prob_grad at X[0])
    w(f"{ind}prob_corr(X[0], GR, Z, XI, PV, PM, PL, PY, W);")


def _c_discrete(w, spec, problem, hp_args) -> None:
    S = len(spec.states)
    ind = "        "
    if problem.minibatch:
        for line in problem.cuda_minibatch_grad(ind):
            w(line)
    else:
        w(f"{ind}prob_grad(X[0], GR, HS, SG, PV, PM, PL, PY, W, false, false);")
        if problem.noise == "student-t":
            w(f"{ind}for (int i = 0; i < D; ++i) G[i] = GR[i] + SG[i] * (real)sd_student_t(PV[P_nu], cstep, (sd_u32)i, (sd_u32)p, key0, key1);")
        else:
            _c_fill(w, ind)
            if problem.has_noise_factor:
                _c_corr(w, ind)
                w(f"{ind}for (int i = 0; i < D; ++i) G[i] = GR[i] + XI[i];")
            else:
                w(f"{ind}for (int i = 0; i < D; ++i) G[i] = GR[i] + SG[i] * (real)Z[i];")
    news = ", ".join(f"&n{j}" for j in range(S))
    st = ", ".join(f"X[{j}][i]" for j in range(S))
    w(f"{ind}for (int i = 0; i < D; ++i) {{")
    w(f"{ind}    real {', '.join(f'n{j}' for j in range(S))};")
    w(f"{ind}    upd({st}, G[i], kk{hp_args}, {news});")
    for j in range(S):
        w(f"{ind}    X[{j}][i] = n{j}; if (!isfinite(n{j})) bad = 1;")
    w(f"{ind}}}")


def _c_euler(w, spec, hp_args, corr) -> None:
    S, r = len(spec.states), spec.n_sources
    ind = "            "
    st = ", ".join(f"X[{j}][i]" for j in range(S))
    names = [f"a{j}" for j in range(S)] + [f"b{j}_{q}" for q in range(r) for j in range(S)]
    w(f"{ind}for (int i = 0; i < D; ++i) {{")
    w(f"{ind}    real {', '.join(names)};")
    w(f"{ind}    coef({st}, GR[i], HS[i], SG[i], tt{hp_args}, {', '.join('&' + n for n in names)});")
    for j in range(S):
        noise = f" + b{j}_0 * (sdt * XI[i])" if corr else "".join(
            f" + b{j}_{q} * (sdt * (real)Z[{q} * D + i])" for q in range(r))
        w(f"{ind}    const real y{j} = X[{j}][i] + a{j} * dt{noise};")
    for j in range(S):
        w(f"{ind}    X[{j}][i] = y{j}; if (!isfinite(y{j})) bad = 1;")
    w(f"{ind}}}")


def _c_weak2(w, spec, hp_args, need_hs, need_sg) -> None:
    S = len(spec.states)
    ind = "            "
    st = ", ".join(f"X[{j}][i]" for j in range(S))
    ab = [f"a{j}" for j in range(S)] + [f"b{j}" for j in range(S)]
    w(f"{ind}for (int i = 0; i < D; ++i) {{")
    w(f"{ind}    real {', '.join(ab)};")
    w(f"{ind}    coef({st}, GR[i], HS[i], SG[i], tt{hp_args}, {', '.join('&' + n for n in ab)});")
    w(f"{ind}    const real dw = sdt * (real)Z[i];")
    for j in range(S):
        w(f"{ind}    A0[{j}][i] = a{j}; B0[{j}][i] = b{j};")
        w(f"{ind}    YB[{j}][i] = X[{j}][i] + a{j} * dt + b{j} * dw;")
        w(f"{ind}    YP[{j}][i] = X[{j}][i] + a{j} * dt + b{j} * sdt;")
        w(f"{ind}    YM[{j}][i] = X[{j}][i] + a{j} * dt - b{j} * sdt;")
    w(f"{ind}}}")
    # each support point has its own noise scale (recomputed there where the problem computes it)
    w(f"{ind}for (int i = 0; i < D; ++i) {{ SGB[i] = SG[i]; SGP[i] = SG[i]; SGM[i] = SG[i]; }}")
    w(f"{ind}prob_grad(YB[0], GRB, HSB, SGB, PV, PM, PL, PY, W, {need_hs}, {need_sg});")
    w(f"{ind}prob_grad(YP[0], GRP, HSP, SGP, PV, PM, PL, PY, W, {need_hs}, {need_sg});")
    w(f"{ind}prob_grad(YM[0], GRM, HSM, SGM, PV, PM, PL, PY, W, {need_hs}, {need_sg});")
    w(f"{ind}const real t1 = tt + dt;")
    w(f"{ind}for (int i = 0; i < D; ++i) {{")
    for tag in ("B", "P", "M"):
        names = [f"a{tag}{j}" for j in range(S)] + [f"b{tag}{j}" for j in range(S)]
        stt = ", ".join(f"Y{tag}[{j}][i]" for j in range(S))
        w(f"{ind}    real {', '.join(names)};")
        w(f"{ind}    coef({stt}, GR{tag}[i], HS{tag}[i], SG{tag}[i], t1{hp_args}, {', '.join('&' + n for n in names)});")
    w(f"{ind}    const real dw = sdt * (real)Z[i];")
    for j in range(S):
        w(f"{ind}    const real y{j} = X[{j}][i] + (real)0.5 * (aB{j} + A0[{j}][i]) * dt + (real)0.25 * (bP{j} + bM{j} + "
          f"(real)2 * B0[{j}][i]) * dw + (real)0.25 * (bP{j} - bM{j}) * (dw * dw - dt) / sdt;")
    for j in range(S):
        w(f"{ind}    X[{j}][i] = y{j}; if (!isfinite(y{j})) bad = 1;")
    w(f"{ind}}}")


# -- compiling without a GPU --------------------------------------------------------------------------

def nvrtc_available() -> bool:
    try:
        from cuda.bindings import nvrtc  # noqa: F401

        nvrtc.nvrtcVersion()
        return True
    except Exception:
        return False


def compile_check(source: str, arch: str = "sm_90", fmad: bool = True) -> dict:
    """Compile CUDA `source` to a cubin for `arch` without a GPU: NVRTC via `cuda-bindings`, else a
    system `nvcc`.  Returns `{"tool", "cubin_bytes", "log"}`; raises `CodegenError` with the
    compiler log on failure."""
    opts = [f"-arch={arch}".encode(), b"--std=c++17"] + ([] if fmad else [b"--fmad=false"])
    if nvrtc_available():
        from cuda.bindings import nvrtc

        err, prog = nvrtc.nvrtcCreateProgram(source.encode(), b"sdederive_kernel.cu", 0, [], [])
        _nv_ok(err, "nvrtcCreateProgram")
        (res,) = nvrtc.nvrtcCompileProgram(prog, len(opts), opts)
        err, size = nvrtc.nvrtcGetProgramLogSize(prog)
        # a fresh mutable buffer: NVRTC writes into it, and `b" " * 1` would be CPython's shared b" "
        log = bytearray(max(int(size), 1))
        nvrtc.nvrtcGetProgramLog(prog, log)
        log_s = bytes(log).decode(errors="replace").strip("\x00 \n")
        if res != nvrtc.nvrtcResult.NVRTC_SUCCESS:
            raise CodegenError(f"NVRTC failed to compile the generated CUDA kernel for {arch}:\n{log_s}")
        err, n = nvrtc.nvrtcGetCUBINSize(prog)
        _nv_ok(err, "nvrtcGetCUBINSize")
        nvrtc.nvrtcDestroyProgram(prog)
        return {"tool": "nvrtc", "cubin_bytes": int(n), "log": log_s}
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        raise CodegenError("no CUDA compiler: install cuda-bindings and nvidia-cuda-nvrtc-cu12 "
                           "(pip install -e '.[test]'), or put nvcc on PATH")
    with tempfile.TemporaryDirectory() as td:
        src = Path(td) / "k.cu"
        src.write_text(source)
        cmd = [nvcc, "-cubin", f"-arch={arch}", "-std=c++17", "-o", str(Path(td) / "k.cubin"), str(src)]
        if not fmad:
            cmd.insert(1, "--fmad=false")
        pr = subprocess.run(cmd, capture_output=True, text=True)
        if pr.returncode != 0:
            raise CodegenError(f"nvcc failed to compile the generated CUDA kernel for {arch}:\n{pr.stderr}")
        return {"tool": "nvcc", "cubin_bytes": (Path(td) / "k.cubin").stat().st_size, "log": pr.stderr}


def _nv_ok(err, what) -> None:
    from cuda.bindings import nvrtc

    if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        raise CodegenError(f"{what} failed: {err}")


# observables per reduction slab (doubles): the size of the per-path observable buffer on the device
_OBS_SLAB = 2**26
# threads per CUDA block of paths
_THREADS = 128


class _CudaHandle:
    """The compiled module and its two kernels."""

    def __init__(self, module, step, obs):
        self.module, self.step, self.obs = module, step, obs


@register_backend
class CudaBackend(AbstractBackend[_CudaHandle]):
    """GPU: the generated CUDA C (`generate`) compiled by `cupy.RawModule`, one thread per path.
    `step_kernel` runs from one save point to the next (`chunk_end`); then `obs_kernel` writes each
    path's observables and CuPy reduces them over the paths, slab by slab; the totals go to block 0 of the
    statistics arrays (the other blocks hold only the host-filled snapshots of the start)."""

    name = "cupy"

    @classmethod
    def available(cls) -> tuple[bool, str]:
        try:
            import cupy
        except ImportError:
            return False, "backend='cupy' needs CuPy: pip install -e '.[gpu]'"
        try:
            ok = bool(cupy.cuda.is_available())
        except Exception as e:  # noqa: BLE001 - a broken driver or runtime raises its own errors
            return False, (f"backend='cupy' needs a CUDA GPU; CuPy cannot query one ({type(e).__name__}: "
                           f"{str(e)[:120]}). Use backend='numba'.")
        if not ok:
            return False, ("backend='cupy' needs a CUDA GPU; none is visible (cupy.cuda.is_available() is "
                           "False). Use backend='numba'.")
        return True, ""

    def generate(self, spec: KernelSpec, problem, scheme: str = "euler", dtype: str = "float64") -> KernelSource:
        return KernelSource(self.name, generate(spec, problem, scheme, dtype), spec, problem, scheme, dtype)

    def build(self, source: KernelSource) -> _CudaHandle:
        """`cupy.RawModule` of the source; CuPy caches compiled modules on disk by source hash
        (`~/.cupy/kernel_cache`).  `BackendUnavailableError` without CuPy or a GPU."""
        ok, why = self.available()
        if not ok:
            raise BackendUnavailableError(why)
        import cupy

        module = cupy.RawModule(code=source.text, options=("--std=c++17",), name_expressions=None)
        return _CudaHandle(module, module.get_function("step_kernel"), module.get_function("obs_kernel"))

    def start(self, handle: _CudaHandle, run: RunArrays) -> None:
        """The run's arrays on the device; the statistics of the save points after `k_start` cleared (the
        kernel writes them, to block 0)."""
        import cupy as cp

        run.extra["g"] = {k: cp.asarray(v) for k, v in dict(state=run.state, DIV=run.DIV, HP=run.HP, PV=run.PV,
                                                             PM=run.PM, PL=run.PL, PY=run.PY).items()}
        # totals go to block 0; the other blocks hold the host-filled snapshots only (step 0, and step
        # k_start where that is a save point: the kernel writes the save points after k_start)
        j0 = run.k_start // run.save_every + 1
        run.MEAN[:, j0:] = 0
        run.CNT[:, j0:] = 0
        nobs = run.MEAN.shape[2]
        slab = max(1, int(_OBS_SLAB // max(nobs, 1)))
        run.extra["out"] = cp.empty((min(run.paths, slab), nobs))

    def chunk_end(self, k: int, steps: int, save_every: int, chunk: int) -> int:
        return min(steps, (k // save_every + 1) * save_every)

    def run_chunk(self, handle: _CudaHandle, run: RunArrays, k: int, k_end: int) -> None:
        import cupy as cp
        import numpy as np

        from sdederive.simulate.backends.kernel_support import OBS_LIMIT

        g, out, paths, threads = run.extra["g"], run.extra["out"], run.paths, _THREADS
        grid = ((paths + threads - 1) // threads,)
        handle.step(grid, (threads,), (g["state"], g["DIV"], np.int64(k), np.int64(k_end), np.int32(run.substeps),
                                       np.float64(run.tau), np.uint32(run.key0), np.uint32(run.key1), g["HP"],
                                       g["PV"], g["PM"], g["PL"], g["PY"], np.int64(paths)))
        if k_end % run.save_every == 0:
            j = k_end // run.save_every
            alive = g["DIV"] < 0
            # two passes per slab (its mean, then squared deviations from it), slabs merged like
            # the numba blocks (merge_blocks): no s2 - n mu^2 cancellation (|x|^2 of a far-away
            # x is 1e16)
            slabs = []
            for p0 in range(0, paths, out.shape[0]):
                m = min(out.shape[0], paths - p0)
                # N = p0 + m: the threads of the last block past the slab write no row of `out`
                handle.obs(((m + threads - 1) // threads,), (threads,),
                           (g["state"], g["DIV"], g["HP"], g["PV"], g["PM"], g["PL"], g["PY"], out,
                            np.int64(p0), np.int64(p0 + m)))
                a = alive[p0:p0 + m]
                # a non-finite or overflowing observable of a finite state (the numba kernels'
                # snapshot_add test): that path diverged at this step
                fin = ((out[:m] < OBS_LIMIT) & (out[:m] > -OBS_LIMIT)).all(1)  # False for NaN
                over = cp.where(fin, False, a)
                if bool(over.any()):
                    g["DIV"][p0:p0 + m] = cp.where(over, np.int64(k_end), g["DIV"][p0:p0 + m])
                    a = cp.where(over, False, a)
                a = a[:, None]
                nb = int(a.sum())
                if nb == 0:
                    continue
                mb = cp.where(a, out[:m], 0.0).sum(0) / nb
                dev = cp.where(a, out[:m] - mb, 0.0)
                slabs.append((nb, cp.asnumpy(mb), cp.asnumpy((dev * dev).sum(0))))
            if slabs:
                with np.errstate(over="ignore", invalid="ignore"):
                    n, run.MEAN[0, j], run.M2[0, j] = merge_blocks(np.array([sl[0] for sl in slabs], float),
                                                                   np.stack([sl[1] for sl in slabs]),
                                                                   np.stack([sl[2] for sl in slabs]))
                run.CNT[0, j] = int(n)
        cp.cuda.Device().synchronize()

    def any_diverged(self, run: RunArrays) -> bool:
        return bool((run.extra["g"]["DIV"] >= 0).any())

    def finish(self, handle: _CudaHandle, run: RunArrays) -> None:
        import cupy as cp

        g = run.extra["g"]
        run.DIV[:] = cp.asnumpy(g["DIV"])
        run.state[:] = cp.asnumpy(g["state"])
