"""Trainables: the GS-LRM trainer (`trainables.gslrm`, no Ray in it), the adapter that runs it
as one Ray Tune trial under Ray Train (`trainables.ray_trainable`), and the rule that says how
a trial ended (`trainables.outcome`, shared with the analysis; standard library only).

Importing this package imports nothing heavy: torch and Ray load only with the modules that
need them.
"""
