"""Runtimes behind one interface: load a model, describe its I/O, run named arrays."""
from .base import Runner, run_dataset

__all__ = ["Runner", "run_dataset"]
