"""Hyperparameter search: Ray Tune + Optuna over an ExperimentConfig (``hmoe.tune``)."""
