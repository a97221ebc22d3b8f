"""Named studies and their front door, `python -m study.run NAME`.

A study names a base trainer config, a search (Optuna TPE over a named space, or a grid),
the objective, the scheduler, resources and concurrency. `study.run` connects to (or starts)
a Ray cluster, prepares data, runs the Tuner and writes the analysis report. It knows nothing
of the model's insides: trials see only dotted config keys.
"""
