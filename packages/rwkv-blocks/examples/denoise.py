"""Train a small Bi-RWKV denoiser on one photo, on the CPU, and report PSNR before and after.

The network is DnCNN-style residual learning (Zhang et al., 2017) with Bi-RWKV blocks in the middle:

    x̂ = y - Conv3x3(BiRWKVBlock^n(Conv3x3(y)))          y = x + N(0, σ²)

It trains on random crops of the left two thirds of the bundled photo (`data/chelsea_96.pt`, CC0),
with fresh noise at every step, and is evaluated on the right third, which it never sees, with a
fixed noise draw. A 3x3 box filter is printed as a baseline. Only torch, einops and rwkv-blocks
(with biwkv4-kernel) are needed:

    python examples/denoise.py              # the default few hundred steps
    python examples/denoise.py --steps 20   # a quick check

This is a demonstration that the blocks learn, not a denoising benchmark.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from rwkv_blocks import BiRWKVBlock, reparameterize_model, rwkv_param_groups

DATA = Path(__file__).resolve().parent / "data" / "chelsea_96.pt"


class Denoiser(nn.Module):
    """Predicts the noise of ``y`` ``[B, 3, H, W]`` and subtracts it."""

    def __init__(self, dim: int, num_blocks: int, hidden_rate: float) -> None:
        super().__init__()
        self.head = nn.Conv2d(3, dim, 3, padding=1)
        self.blocks = nn.Sequential(*(BiRWKVBlock(dim, hidden_rate) for _ in range(num_blocks)))
        self.tail = nn.Conv2d(dim, 3, 3, padding=1)
        # Start as the identity (x̂ = y), so "before training" is exactly the noisy input.
        nn.init.zeros_(self.tail.weight)
        nn.init.zeros_(self.tail.bias)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return y - self.tail(self.blocks(self.head(y)))


def psnr(x: torch.Tensor, ref: torch.Tensor) -> float:
    """PSNR in dB of ``x`` against ``ref``, both in [0, 1] (``x`` is clamped first)."""
    mse = F.mse_loss(x.clamp(0, 1), ref).item()
    return 10 * math.log10(1 / mse)


def random_crops(image: torch.Tensor, size: int, count: int, generator: torch.Generator):
    """``count`` random ``size``×``size`` crops of ``image`` ``[3, H, W]``, randomly flipped."""
    _, H, W = image.shape
    crops = []
    for _ in range(count):
        top = int(torch.randint(0, H - size + 1, (1,), generator=generator))
        left = int(torch.randint(0, W - size + 1, (1,), generator=generator))
        crop = image[:, top : top + size, left : left + size]
        if torch.rand((), generator=generator) < 0.5:
            crop = crop.flip(-1)
        if torch.rand((), generator=generator) < 0.5:
            crop = crop.flip(-2)
        crops.append(crop)
    return torch.stack(crops)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=300, help="training steps (default: %(default)s)")
    p.add_argument("--sigma", type=float, default=25.0, help="noise std on a 0-255 scale")
    p.add_argument("--dim", type=int, default=24, help="channels of the Bi-RWKV blocks")
    p.add_argument("--blocks", type=int, default=2, help="number of Bi-RWKV blocks")
    p.add_argument("--hidden-rate", type=float, default=2.0, help="ChannelMix hidden rate")
    p.add_argument("--crop", type=int, default=24, help="training crop size")
    p.add_argument("--batch", type=int, default=8, help="crops per step")
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate")
    p.add_argument("--decay-lr", type=float, default=2e-4, help="learning rate of decay/boost")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--threads", type=int, default=None, help="CPU threads (default: PyTorch's choice)"
    )
    p.add_argument("--image", type=Path, default=DATA, help="uint8 [3, H, W] tensor file")
    args = p.parse_args(argv)
    if args.steps < 0:
        p.error("--steps must be >= 0")
    return args


def main(argv: list[str] | None = None) -> dict[str, float]:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    image = torch.load(args.image, weights_only=True)
    if image.dtype != torch.uint8 or image.dim() != 3 or image.shape[0] != 3:
        raise SystemExit(f"expected a uint8 tensor of shape [3, H, W] in {args.image}")
    clean = image.float() / 255
    split = clean.shape[-1] * 2 // 3
    train_image, test_clean = clean[:, :, :split], clean[None, :, :, split:]
    sigma = args.sigma / 255
    eval_noise = torch.Generator().manual_seed(1234)
    test_noisy = test_clean + sigma * torch.randn(test_clean.shape, generator=eval_noise)

    model = Denoiser(args.dim, args.blocks, args.hidden_rate)
    optimizer = torch.optim.AdamW(
        rwkv_param_groups(model, lr=args.lr, decay_lr=args.decay_lr, weight_decay=1e-4)
    )
    peak = [group["lr"] for group in optimizer.param_groups]
    crops = torch.Generator().manual_seed(args.seed)

    results = {
        "noisy": psnr(test_noisy, test_clean),
        "box3x3": psnr(F.avg_pool2d(test_noisy, 3, 1, 1, count_include_pad=False), test_clean),
    }
    model.eval()
    with torch.no_grad():
        results["before"] = psnr(model(test_noisy), test_clean)
    print(f"held-out region {tuple(test_clean.shape[-2:])}, noise sigma {args.sigma:g}/255")
    print(f"  PSNR noisy input        {results['noisy']:6.2f} dB")
    print(f"  PSNR 3x3 box filter     {results['box3x3']:6.2f} dB")
    print(f"  PSNR before training    {results['before']:6.2f} dB")

    model.train()
    start = time.perf_counter()
    for step in range(args.steps):
        # Cosine decay after a short warm-up.
        warm = min(1.0, (step + 1) / max(1, args.steps // 20))
        scale = warm * 0.5 * (1 + math.cos(math.pi * step / max(1, args.steps)))
        for group, lr in zip(optimizer.param_groups, peak, strict=True):
            group["lr"] = lr * scale
        x = random_crops(train_image, args.crop, args.batch, crops)
        y = x + sigma * torch.randn_like(x)
        loss = F.mse_loss(model(y), x)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if (step + 1) % max(1, args.steps // 5) == 0 or step + 1 == args.steps:
            train_psnr = 10 * math.log10(1 / loss.item())
            print(f"  step {step + 1:4d}/{args.steps}  train PSNR {train_psnr:6.2f} dB")
    results["train_seconds"] = time.perf_counter() - start

    # For inference, fuse every OmniShift into a single depthwise 5x5 convolution.
    fused = reparameterize_model(model).eval()
    with torch.no_grad():
        results["after"] = psnr(fused(test_noisy), test_clean)
    print(f"  PSNR after {args.steps} steps  {results['after']:6.2f} dB")
    print(f"  training took {results['train_seconds']:.1f} s on {torch.get_num_threads()} threads")
    return results


if __name__ == "__main__":
    main()
