"""Step 5 of the pipeline, simulation: a derived SDE or a discrete optimizer and a problem become a
kernel spec (:mod:`.spec`), lowered by sympy (:mod:`.lower`) and printed by a backend
(:mod:`.backends`) with counter-based random numbers (:mod:`.rng`); :class:`.simulator.Simulator`
runs it."""

from sdederive.simulate.simulator import SimulationResult, Simulator, compile

__all__ = ["Simulator", "SimulationResult", "compile"]
