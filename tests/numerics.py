"""Comparing a computation with its reference: the one relative error and the one
``assert_close`` of the kernel tests (values and every gradient against float64 references).

``pyproject.toml`` puts ``tests/`` on ``sys.path`` (pytest's ``pythonpath``), so test modules
import this one as ``numerics``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = ["assert_close", "relative_error"]


def relative_error(
    actual: torch.Tensor, expected: torch.Tensor, *, norm: str = "max", floor: float = 1e-6
) -> float:
    """How far ``actual`` is from ``expected``, relative to ``expected``'s size (in float64).

    Args:
        norm: ``"max"``: ``max|a − e| / max(max|e|, floor)``, for data of scale about 1, where a
            reference whose largest entry is below ``floor`` is cancellation noise and is compared
            relative to that floor instead of to its own noise. ``"l2"``: ``‖a − e‖ / max(‖e‖,
            floor·√n)``: ``floor`` is per element, so a reference that is exactly zero is
            measured against data of that scale.
        floor: see ``norm``.
    """
    a, e = actual.detach().double(), expected.detach().double()
    if norm == "max":
        return ((a - e).abs().max() / e.abs().max().clamp_min(floor)).item()
    if norm == "l2":
        scale = max(e.norm().item(), floor * math.sqrt(e.numel()))
        return (a - e).norm().item() / scale
    raise ValueError(f"expected norm 'max' or 'l2', got {norm!r}")


def assert_close(
    actual: torch.Tensor | Sequence[torch.Tensor],
    expected: torch.Tensor | Sequence[torch.Tensor],
    tol: float | Sequence[float],
    *,
    norm: str = "max",
    floor: float = 1e-6,
    names: Sequence[str] | None = None,
) -> None:
    """Assert ``relative_error(actual, expected) < tol`` for a tensor, or for each tensor of a
    sequence (``tol``: one for all, or one each; ``names`` label them in the message). A
    non-finite value in ``actual`` always fails."""
    if isinstance(actual, torch.Tensor):
        actual, expected = (actual,), (expected,)
    tols = (tol,) * len(expected) if isinstance(tol, int | float) else tuple(tol)
    names = tuple(names) if names is not None else tuple(str(i) for i in range(len(expected)))
    bad = {}
    for name, a, e, t in zip(names, actual, expected, tols, strict=True):
        if not torch.isfinite(a).all():
            bad[name] = "non-finite output"
            continue
        error = relative_error(a, e, norm=norm, floor=floor)
        if not error < t:
            bad[name] = f"{error:.2e} > {t:.1e}"
    assert not bad, f"relative errors ({norm} norm) too large: {bad}"
