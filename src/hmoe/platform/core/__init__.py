"""What every room of the platform stands on: storage locations, why a run failed, the ranking
metrics, and starting Ray for one process."""
