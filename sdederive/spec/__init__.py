"""Step 1 of the pipeline, the optimizer as a spec: hyperparameters (`.hyper`), optax-style
transforms (`.transforms`) and the optimizers built from them (`.optimizers`)."""
