"""The platform, in rooms with one purpose each: ``data`` (datasets and batches), ``training``
(one run), ``search`` (Tune + Optuna), ``tracking`` (MLflow), ``analysis`` (the paper's analyses)
on ``core`` (storage, failures, metrics, starting Ray). ``experiment`` is the run's config that
every room reads; ``api`` is the ``hmoe.train`` run, which composes the rooms."""
