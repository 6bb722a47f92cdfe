"""Atomic file writes for every stage's outputs: ``atomic_path``, ``atomic_write``,
``atomic_open``. They live in the Caffe runtime (models/caffe/atomic.py), which depends on nothing
in the application and writes its snapshots the same way; this is their application name."""
from models.caffe.atomic import atomic_open, atomic_path, atomic_write

__all__ = ["atomic_open", "atomic_path", "atomic_write"]
