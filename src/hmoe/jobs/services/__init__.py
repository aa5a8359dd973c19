"""Local background services the CLI starts and stops: a Ray head or worker node (``cluster``),
an MLflow server (``mlflow_server``), and the process plumbing they share (``processes``)."""
