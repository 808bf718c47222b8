"""Moved to :mod:`ppengine.safe_load` (the one allow-list unpickler); kept as an alias."""
from ppengine.safe_load import RestrictedUnpickler, UnsafePickleError, load_npy, load_pickle, loads  # noqa: F401
