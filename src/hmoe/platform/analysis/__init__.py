"""Analysis tools of the KDD'24 paper: dimensional collapse, behaviour-target correlation and
interest entanglement, as numpy/torch functions, PNG plots and an MLflow-aware ``analyze``."""
