"""Step 4 of the pipeline, what follows from a derived SDE: batch-size scaling rules
(`.scaling`), stationary laws (`.stationary`), noise scales and learning rate vs batch size
(`.batchsize`), Ito calculus and convergence rates (`.ito`, `.rates`,
`.assumptions`), and whether a regime holds on a problem (`.regime_check`)."""
