"""`cifarlab experiment`: one configuration trained over many seeds, and a verdict with its
uncertainty.

    EXP_DIR/experiment.json   what the experiment trains: the recipe, the resolved
                              configuration (less seed and run directory), the train flags
    EXP_DIR/seed-N/           an ordinary run directory (eval, report, resume work on it);
                              its result.json, written by the trainer, is the seed's outcome
    EXP_DIR/seed-N.log        the seed's console output
    EXP_DIR/commands.txt      (experiment plan) one self-contained train command per seed

spec.py: what an experiment is and the check that a rerun is the same one; runner.py: runs
seeds here; stats.py: show and compare (scipy.stats); plot.py: compare's picture.
"""
