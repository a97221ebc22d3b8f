"""Trainables: the GS-LRM trainer (`trainables.gslrm`, no Ray in it), the adapter that runs it
as one Ray Tune trial under Ray Train (`trainables.trial` for the Tune trial,
`trainables.train_worker` for each Train worker, `trainables.recovery` for the driver after
the study; `trainables.ray_trainable` re-exports their public names), and the per-trial
journal with the one reader of a trial's fate (`trainables.journal`, shared with the analysis;
standard library only).

Importing this package imports nothing heavy: torch and Ray load only with the modules that
need them.
"""
