"""One training run: the loop, where it runs (standalone or a Ray Train worker), the Ray
``TorchTrainer``, retries, TorchRec sharding, the checks before a run, and its run storage."""
