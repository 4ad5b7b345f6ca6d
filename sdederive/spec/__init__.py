"""Step 1 of the pipeline, the optimizer as a spec: hyperparameters (:mod:`.hyper`), optax-style
transforms (:mod:`.transforms`) and the optimizers built from them (:mod:`.optimizers`)."""
