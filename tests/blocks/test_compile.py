"""torch.compile smoke tests: compiled modules match eager, forward and backward.

Both use the ``aot_eager`` backend: Dynamo and AOTAutograd trace the whole graph
(``fullgraph=True``, so a graph break fails the test) without spending CI time in Inductor's C++
compiler (a cold Inductor build of these graphs takes tens of seconds on a 2-core CPU). What could
break under compile is our Python (shape checks, einops, checkpointing, parameter deletion by
``reparameterize``) and the op's fake kernel, and tracing exercises all of it.
"""

from __future__ import annotations

import pytest
import torch

from rwkv_blocks import RWKVContextCell, RWKVContextCellLite, reparameterize_model

CELLS = {
    "RWKVContextCell": lambda: RWKVContextCell(8, hidden_rate=2, use_checkpoint=True),
    "RWKVContextCellLite": lambda: RWKVContextCellLite(8, use_checkpoint=True, shift=True),
}


@pytest.mark.parametrize("name", list(CELLS))
def test_compiled_context_cell_matches_eager(name, randomize) -> None:
    torch.manual_seed(0)
    torch._dynamo.reset()
    cell = randomize(CELLS[name](), scale=0.1)
    compiled = torch.compile(cell, backend="aot_eager", fullgraph=True)
    for B, H, W in [(2, 5, 7), (2, 6, 4), (1, 5, 7)]:
        x_t = torch.randn(B, 8, H, W, requires_grad=True)
        h_prev = torch.randn(B, 8, H, W)
        ref = cell(x_t, h_prev)
        (ref_grad,) = torch.autograd.grad(ref.square().sum(), [x_t])
        y = compiled(x_t, h_prev)
        (grad,) = torch.autograd.grad(y.square().sum(), [x_t])
        torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(grad, ref_grad, rtol=1e-4, atol=1e-4)


def test_compiled_fused_model_matches_eager(randomize) -> None:
    torch.manual_seed(0)
    torch._dynamo.reset()
    cell = reparameterize_model(randomize(RWKVContextCell(8, hidden_rate=2), scale=0.1)).eval()
    x_t, h_prev = torch.randn(1, 8, 3, 5), torch.randn(1, 8, 3, 5)
    with torch.no_grad():
        torch.testing.assert_close(
            torch.compile(cell, backend="aot_eager", fullgraph=True)(x_t, h_prev),
            cell(x_t, h_prev),
            rtol=1e-4,
            atol=1e-5,
        )
