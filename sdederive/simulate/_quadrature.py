r"""Expectations over the gradient noise, vectorised over coordinates, for the simulators' start.

`noise_expectation` computes, for every coordinate $i$ at once,

$$
\mathbb E\,F_i(g_i), \qquad g_i = \mu_i + s_i z, \quad z \sim N(0, 1) \text{ or } t_\nu,
$$

for an `F` that is smooth except where $g_i = 0$ (sign, abs, clipping at zero).  The real
line is split at the break point $z_i^\ast = -\mu_i/s_i$, at any further break points of `F`
(kinks of clipping at $g = \pm c$, jumps of `sign(g - a)`), and at $\pm L$ ($L = 12$),
and every piece gets an `n`-point Gauss–Legendre rule:

* `[-L, L]` in four panels (cut at $z_i^\ast$): linear maps, where the density's mass is;
* the tails beyond $\pm L$ (Student-t only; a Gaussian's mass there is below `1e-32`):
  $z = \pm c/v^k$, $v \in (0, 1]$, which turns the algebraic decay $|z|^{-\nu-1}$ of
  the t density times the growth of `F` into a smooth integrand (`k` from `nu`; cut at
  $z_i^\ast$ too when it lies in a tail).

All coordinates share one set of reference nodes, so `F` is evaluated once on a `(d, m)` array.
scipy's adaptive `quad` is what this replaces: it is exact to ~1e-10 but costs two scalar calls
per coordinate and state (18 s at d = 300); here a d = 1000 start takes milliseconds, and the test
suite checks the two against each other.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = ["noise_expectation", "break_points"]

L = 12.0
_N = 32
_X, _W = np.polynomial.legendre.leggauss(_N)  # on [-1, 1]


def _linear(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights of [a_i, b_i] per row (zero weight where b <= a)."""
    h = np.maximum(b - a, 0.0)[:, None] / 2
    z = (a[:, None] + b[:, None]) / 2 + h * _X
    return z, h * _W


def _tail(c: np.ndarray, end: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights of [c_i, end_i] (0 < c <= end <= inf) with z = c/v**k, v in [(c/end)**(1/k), 1]."""
    v0 = np.where(np.isfinite(end), c / np.where(end > 0, end, 1.0), 0.0) ** (1.0 / k)
    h = np.maximum(1.0 - v0, 0.0)[:, None] / 2
    v = (1.0 + v0[:, None]) / 2 + h * _X
    return c[:, None] / v**k, h * _W * k * c[:, None] / v ** (k + 1)


def _tail_power(nu: float) -> int:
    """`k` of the tail map `z = c/v**k`.  With it, `|z|**p` times the t density becomes
    `v**(k*(nu - p) - 1)` in `v`: smooth for the moments that exist (`p = 2` for `nu > 2`,
    `p = 1` for `nu > 1`) once `k*(nu - p) >= 3`."""
    p = 2.0 if nu > 2 else 1.0 if nu > 1 else 0.0
    return int(min(64, max(4, np.ceil(3.0 / max(nu - p, 1e-9)))))


def _pieces(lo: np.ndarray, hi: np.ndarray, nu: float | None) -> list[tuple[np.ndarray, np.ndarray]]:
    """A rule for [lo_i, hi_i] (either end may be infinite), split at -L and L."""
    # the bulk in four panels: the t density's poles at z = +-i*sqrt(nu) lie close to [-L, L] relative
    # to its length, which would slow a single panel's convergence to ~1e-7 at 64 nodes
    edges = (-L, -3.0, 0.0, 3.0, L)
    out = [_linear(np.clip(lo, a, b), np.clip(hi, a, b)) for a, b in zip(edges[:-1], edges[1:])]
    if nu is not None:
        k = _tail_power(nu)
        # right tail [max(lo, L), hi] and left tail [lo, min(hi, -L)] (mirrored: z = -y)
        c = np.maximum(lo, L)
        z, w = _tail(c, np.maximum(hi, c), k)
        out.append((z, np.where((hi > L)[:, None], w, 0.0)))
        c = np.maximum(-hi, L)
        z, w = _tail(c, np.maximum(-lo, c), k)
        out.append((-z, np.where((lo < -L)[:, None], w, 0.0)))
    return out


def _density(z: np.ndarray, nu: float | None) -> np.ndarray:
    """The standard normal or Student-t density: the noise model's own (`NoiseModel.density`)."""
    from sdederive.noise import Gaussian, StudentT

    return (Gaussian() if nu is None else StudentT(nu=nu)).density(z)


def break_points(expr, g) -> list:
    """Values of `g` (sympy expressions in the other symbols) where `expr` has a kink or a jump:
    the zeros of the arguments of `sign`, `Abs`, `Heaviside`, of the pairwise differences of
    `Min`/`Max` arguments (nested ones expanded into their branches) and of `Piecewise`
    conditions, where these are linear in `g`.  `g = 0` itself is left out (always a cut).  A
    break point that is not linear in `g` is not found; the rule then loses accuracy there but stays
    finite."""
    import itertools

    import sympy as sp

    roots: set = set()

    def linear_roots(e) -> None:
        variants = [e]
        for n in list(e.atoms(sp.Min, sp.Max))[:4]:
            variants = [v.xreplace({n: a}) for v in variants for a in n.args]
        for v in variants:
            if not v.has(g) or v.atoms(sp.Min, sp.Max):
                continue
            try:
                P = sp.Poly(v, g)
            except sp.PolynomialError:
                continue
            if P.degree() == 1:
                c1, c0 = P.all_coeffs()
                r = sp.simplify(-c0 / c1)
                if r != 0 and not r.has(g):
                    roots.add(r)

    for n in sp.preorder_traversal(expr):
        if isinstance(n, (sp.sign, sp.Abs, sp.Heaviside)):
            linear_roots(n.args[0])
        elif isinstance(n, (sp.Min, sp.Max)):
            for a, b in itertools.combinations(n.args, 2):
                linear_roots(a - b)
        elif isinstance(n, sp.Piecewise):
            for _, cond in n.args:
                if isinstance(cond, sp.core.relational.Relational):
                    linear_roots(cond.lhs - cond.rhs)
    return sorted(roots, key=sp.default_sort_key)


def noise_expectation(F: Callable[[np.ndarray], np.ndarray], mu: np.ndarray, scale: np.ndarray,
                      nu: float | None = None, breaks: np.ndarray | None = None) -> np.ndarray:
    """`E F(mu + scale*z)` per coordinate; `F` maps a `(d, m)` array of gradients to values of
    the same shape (row `i` belongs to coordinate `i`).  `nu`: Student-t degrees of freedom
    (`None`: Gaussian).  `breaks`: a `(d, nb)` array of further gradient values where `F` has
    a kink or jump (`NaN`: none); `g = 0` is always one.  Where `scale == 0` the result is
    `F(mu)`."""
    mu = np.asarray(mu, float)
    s = np.asarray(scale, float)
    d = mu.size
    noisy = s > 0
    safe = np.where(noisy, s, 1.0)
    cuts = [np.full(d, -np.inf), -mu / safe]
    if breaks is not None:
        b = np.asarray(breaks, float).reshape(d, -1)
        cuts += [(b[:, j] - mu) / safe for j in range(b.shape[1])]
    cuts.append(np.full(d, np.inf))
    C = np.sort(np.where(np.isnan(np.stack(cuts, 1)), np.inf, np.stack(cuts, 1)), axis=1)  # NaN: empty piece
    parts = []
    for j in range(C.shape[1] - 1):
        lo, hi = C[:, j], C[:, j + 1]
        empty = ~(hi > lo)
        for z, w in _pieces(np.where(empty, 0.0, lo), np.where(empty, 0.0, hi), nu):
            parts.append((z, np.where(empty[:, None], 0.0, w)))
    z = np.concatenate([p[0] for p in parts], axis=1)
    w = np.concatenate([p[1] for p in parts], axis=1)
    ok = np.isfinite(z) & np.isfinite(w) & (w > 0)
    z = np.where(ok, z, 0.0)
    dens = _density(z, nu)
    g = mu[:, None] + s[:, None] * z
    vals = np.asarray(F(g), float)
    ew = np.sum(np.where(ok, w * dens * vals, 0.0), axis=1)
    if not noisy.all():
        at_mean = np.asarray(F(np.broadcast_to(mu[:, None], (d, 1)).copy()), float)[:, 0]
        ew = np.where(noisy, ew, at_mean)
    return ew
