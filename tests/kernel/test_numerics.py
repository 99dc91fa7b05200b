"""The kernel tests' comparison helper fails when it should (``tests/numerics.py``)."""

from __future__ import annotations

import math
import re

import pytest
import torch
from numerics import assert_close, relative_error


def test_relative_error_in_both_norms() -> None:
    expected = torch.tensor([3.0, -4.0])
    actual = torch.tensor([3.0, -4.5])
    assert relative_error(actual, expected) == pytest.approx(0.5 / 4)
    assert relative_error(actual, expected, norm="l2") == pytest.approx(0.5 / 5)
    # Against a zero reference, the floor sets the scale.
    small, zero = torch.full((4,), 1e-3), torch.zeros(4)
    assert relative_error(small, zero, norm="l2", floor=1e-3) == pytest.approx(1)
    assert relative_error(torch.full((4,), 1e-7), torch.zeros(4)) == pytest.approx(0.1)


def test_assert_close_fails_on_large_and_non_finite_errors() -> None:
    ref = torch.ones(5, dtype=torch.float64)
    assert_close(ref + 1e-9, ref, 1e-8)
    assert_close((ref, ref), (ref, ref + 1e-3), (1e-8, 1e-2), names=("a", "b"))
    with pytest.raises(AssertionError, match=re.escape("'b': '1.00e-03 > 1.0e-04'")):
        assert_close((ref, ref + 1e-3), (ref, ref), 1e-4, names=("a", "b"))
    with pytest.raises(AssertionError, match="non-finite"):
        assert_close(torch.full((5,), math.nan), ref, 1.0)
    with pytest.raises(ValueError, match="norm"):
        relative_error(ref, ref, norm="l1")
