"""Pure-PyTorch models; imports nothing from ``hmoe.platform`` or ``hmoe.jobs``."""
