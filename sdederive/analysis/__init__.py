"""Step 4 of the pipeline, what follows from a derived SDE: batch-size scaling rules
(:mod:`.scaling`), stationary laws (:mod:`.stationary`), noise scales and learning rate vs batch size
(:mod:`.batchsize`), Ito calculus and convergence rates (:mod:`.ito`, :mod:`.rates`,
:mod:`.assumptions`), and whether a regime holds on a problem (:mod:`.regime_check`)."""
