"""Step 5 of the pipeline, simulation: a derived SDE or a discrete optimizer and a problem become a
kernel spec (`.spec`), lowered by sympy (`.lower`) and printed by a backend
(`.backends`) with counter-based random numbers (`.rng`); `.simulator.Simulator`
runs it.  The names below load `.simulator` on first use, so importing a light submodule (the backend
registry, for the command line's choices) does not import numpy and sympy."""

__all__ = ["Simulator", "SimulationResult", "compile"]


def __getattr__(name: str):
    if name in __all__:
        from sdederive.simulate import simulator

        return getattr(simulator, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
