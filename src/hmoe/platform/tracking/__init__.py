"""MLflow: the runs (``runs``), the logged and registered models (``registry``) and their
``python_function`` flavor (``serving``)."""
