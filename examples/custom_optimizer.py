"""Derive the SDE of an optimizer that is not built in, and check it against the discrete update.

The optimizer: "RMS-normalized sign momentum" -- an EMA of the gradient, normalized by the RMS of
the gradient, with decoupled weight decay:

    m_{k+1} = beta1*m_k + (1 - beta1)*g_k
    v_{k+1} = beta2*v_k + (1 - beta2)*g_k**2
    x_{k+1} = x_k - eta*(m_{k+1}/(sqrt(v_{k+1}) + eps) + wd*x_k)

Run:  python examples/custom_optimizer.py
"""

from __future__ import annotations

import sympy as sp

import sdederive as sd

x, g, m, v = sd.symbols("x g m v")
eta, beta1, beta2, eps, wd = sd.symbols("eta beta1 beta2 eps wd")

# 1. the spec, written out ...
m1 = beta1 * m + (1 - beta1) * g
v1 = beta2 * v + (1 - beta2) * g**2
written = sd.from_update(
    "rms_momentum",
    {"m": m1, "v": v1, "x": x - eta * (m1 / (sp.sqrt(v1) + eps) + wd * x)},
    hypers={"eta": (1e-3, "lr"), "beta1": (0.9, "decay"), "beta2": (0.999, "decay"), "eps": (1e-8, "eps"),
            "wd": (1e-2, "wd")},
    kinds={"v": "second_moment"},
    natural_regime="balanced",
)



def main() -> None:
    sde = sd.derive(written, noise="gaussian", regime="balanced")
    print(sde)
    print()
    print(sde.latex())
    print()
    try:
        print(sd.scaling_rule(sde))
    except sd.ScalingRuleError as e:
        print("no scaling rule:", e)
    print()
    try:
        from sdederive.validators import onestep_check
    except ImportError:  # validators not installed
        return
    point = {"grad": 0.4, "sigma": 0.8, "rho1": 2.0, "rho2": 1.0, "eps": 0.1, "wd": 0.3, "m": 0.2, "v": 0.5,
             "x": 0.7, "t": 1.0}
    res = onestep_check(written, regime="balanced", point=point, eta=1e-3, samples=200_000, seed=0)
    print(res)
    print("one-step moments match:", res.passed())


if __name__ == "__main__":
    main()
