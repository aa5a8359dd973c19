"""Optuna define-by-run search spaces; parameter names are dotted ExperimentConfig paths."""
