"""Turn a finished study folder into Parquet tables, comparison tables, plots and report.md.

Reads files only (study.json, tune-<id>/*/params.json, result.json, trial_summary.json,
error.txt, optuna.db, each trial's runs/<trial id>/journal.jsonl and metrics.jsonl); never
imports Ray. Entry point: ``python -m analysis.report STUDY_DIR``
or :func:`analysis.report.write_report`.
"""
