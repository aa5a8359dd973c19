"""Entry points: the ``hmoe`` CLI, presets and job specs; thin layers over the Python API."""
