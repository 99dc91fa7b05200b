"""What the two GPU kernels share: a switch in the environment and an availability tried once.

Nothing here builds or imports a kernel; callers pass the attempt.
"""

from __future__ import annotations

import os
from collections.abc import Callable, MutableMapping

import torch

__all__ = ["availability", "disabled_by_env"]

_OFF_VALUES = ("", "0", "false", "no", "off")


def disabled_by_env(name: str) -> bool:
    """Whether the variable ``name`` holds anything but empty, ``0``, ``false``, ``no``, ``off``."""
    return os.environ.get(name, "").strip().lower() not in _OFF_VALUES


def availability(
    status: MutableMapping[str, object],
    env: str,
    attempt: Callable[[], str],
    errors: tuple[type[Exception], ...],
    fix: str = "",
) -> tuple[bool, str]:
    """Whether a GPU kernel is usable, and one line saying why.

    Not when ``env`` switches it off (read on every call) or torch sees no GPU; otherwise
    ``attempt()`` (which returns a description, or raises one of ``errors``) is tried once per
    process and its outcome kept in ``status``. ``fix`` follows the reason of a failure.
    """
    if disabled_by_env(env):
        return False, f"disabled by {env}={os.environ[env]}"
    if not torch.cuda.is_available():
        return False, "no CUDA GPU is visible to torch"
    if "ok" not in status:
        try:
            status["ok"], status["why"] = True, f"available: {attempt()}"
        except errors as exc:
            status["ok"], status["why"] = False, f"unavailable: {exc}{fix}"
    return bool(status["ok"]), str(status["why"])
