"""Step 3 of the pipeline, the moment expansion: from an optimizer spec, a noise model and a
regime to the drift and diffusion of an :class:`~sdederive.sde.SDE` (:mod:`.engine`), with the
expectations (:mod:`.expectation`), the series in ``eta`` (:mod:`.series`) and the optimizers that
need their own expansion (:mod:`._special`, :mod:`._clip_moments`)."""
