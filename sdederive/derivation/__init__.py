"""Step 3 of the pipeline, the moment expansion: from an optimizer spec, a noise model and a
regime to the drift and diffusion of an `SDE` (`.engine`), with the
expectations (`.expectation`), the series in `eta` (`.series`) and the optimizers that
need their own expansion (`._special`, `._clip_moments`)."""
