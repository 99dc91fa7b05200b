"""Exceptions users can cause. The CLI prints these as one line and exits non-zero."""

from __future__ import annotations

__all__ = ["HPCMError"]


class HPCMError(Exception):
    """Base class of every error hpcm-models raises on purpose (bad input, bad file, bad flags)."""
