"""Shared test helpers: numerical equivalence of sympy expressions at random points; the CUDA
built-ins the generated CUDA source uses, for building it as host C/C++; the 3-d dense case of the
vector-engine tests."""

from __future__ import annotations

import random

import numpy as np
import sympy as sp

#: the vector-engine tests' dense case: a coupled Hessian H, a full noise covariance SIG (L its Cholesky
#: factor), the point X and its gradient, SAM's rho and a second scale C, Monte Carlo samples N in K batches
VEC_H = np.array([[2.0, 0.6, -0.3], [0.6, 1.0, 0.4], [-0.3, 0.4, 0.7]])
VEC_SIG = np.array([[0.5, 0.2, -0.1], [0.2, 0.4, 0.15], [-0.1, 0.15, 0.6]])
VEC_X = np.array([0.6, -0.4, 0.5])
VEC_GRAD = VEC_H @ VEC_X
VEC_L = np.linalg.cholesky(VEC_SIG)
VEC_RHO, VEC_C = 0.4, 1.2
VEC_N, VEC_K = 400_000, 20  # samples per Monte Carlo, batches for the standard errors


def values_for(exprs, seed: int = 0, overrides: dict | None = None) -> dict:
    """Random values for every free symbol: positive where assumed, decays in (0, 1), else signed."""
    rnd = random.Random(seed)
    out = {}
    for e in exprs:
        for s in sp.sympify(e).free_symbols:
            if s in out:
                continue
            name = str(s)
            if overrides and name in overrides:
                out[s] = overrides[name]
            elif name.startswith(("beta", "mu")):
                out[s] = rnd.uniform(0.2, 0.9)
            elif name == "nu":
                out[s] = rnd.uniform(2.5, 6.0)
            elif s.is_positive or s.is_nonnegative:
                out[s] = rnd.uniform(0.2, 1.5)
            else:
                out[s] = rnd.choice([-1, 1]) * rnd.uniform(0.2, 1.5)
    return out


def assert_equiv(a, b, trials: int = 4, rel: float = 1e-10, overrides: dict | None = None, msg: str = "") -> None:
    """``a`` and ``b`` agree at ``trials`` random points (a numerical identity test)."""
    a, b = sp.sympify(a), sp.sympify(b)
    for k in range(trials):
        vals = values_for([a, b], seed=k, overrides=overrides)
        va = complex(sp.N(a.xreplace(vals), 30))
        vb = complex(sp.N(b.xreplace(vals), 30))
        assert abs(va - vb) <= rel * max(1.0, abs(vb)), f"{msg}\n  {a}\n  != {b}\n  at {vals}: {va} vs {vb}"


# The device branch of the generated CUDA source (``__CUDACC__``) compiled for the host: qualifiers
# defined away (``__forceinline__`` static, so a C build needs no external definition), ``__clzll``,
# ``__dmul_rn`` and ``__longlong_as_double`` (a bit cast) with their device semantics.  ``__dmul_rn`` is a product
# the compiler must round (the empty asm makes the value opaque, so it cannot be fused into an FMA),
# like the device intrinsic.  Valid C and C++.
CUDA_BUILTINS_ON_HOST = r"""
#define __CUDACC__ 1
#define __global__
#define __device__
#define __host__
#define __forceinline__ static inline __attribute__((always_inline))
static inline int __clzll(long long v) { return v == 0 ? 64 : __builtin_clzll((unsigned long long)v); }
static inline double __dmul_rn(double a, double b) { double r = a * b; __asm__("" : "+m"(r)); return r; }
static inline double __longlong_as_double(long long u) { double v; __builtin_memcpy(&v, &u, sizeof v); return v; }
"""
