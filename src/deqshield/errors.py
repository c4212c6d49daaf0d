"""Exceptions raised by deqshield.

Every error a user can trigger with bad input derives from :class:`DEQShieldError`, and the
more specific classes also derive from the matching built-in (``ValueError``, ``OSError``), so
``except ValueError`` keeps working for callers that do not know deqshield.
"""

from __future__ import annotations


class DEQShieldError(Exception):
    """Base class of all deqshield errors."""


class InputError(DEQShieldError, ValueError):
    """An argument has the wrong shape, dtype, range or value."""


class ConfigError(DEQShieldError, ValueError):
    """A configuration file or object is invalid (unknown key, bad value, wrong type)."""


class DataError(DEQShieldError, OSError):
    """A data set file is missing, truncated, corrupt or does not match its checksum."""


class CheckpointError(DEQShieldError, OSError):
    """A checkpoint is missing, incomplete, corrupt or incompatible with the model."""


class NotConvergedError(DEQShieldError, RuntimeError):
    """A fixed-point computation that must converge (e.g. a certificate) did not."""


class OutputError(DEQShieldError, OSError):
    """An output file or folder cannot be written (read-only, full disk, a file in the way) or
    would overwrite earlier results without being asked to."""


class NonConvergenceWarning(UserWarning):
    """A forward solve ended with a residual above its tolerance by more than the allowed
    factor (see :mod:`deqshield.convergence`); the prediction depends on the iteration budget."""
