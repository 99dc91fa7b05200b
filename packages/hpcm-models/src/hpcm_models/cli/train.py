"""``hpcm train``: train a model or fine-tune a variant from a baseline; resumable; 1-N GPUs."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from hpcm_models.cli._common import json_object, subcommand
from hpcm_models.errors import HPCMError

HELP = "train a model on an image folder (resumable; torchrun for several GPUs)"

EPILOG = """\
examples:
  hpcm train --model hpcm-base --dataset data/train --val-dataset data/kodak \\
      --output runs/base-0.013 --steps 2000000 --lmbda 0.013
  hpcm train --output runs/base-0.013 --dataset data/train --steps 2000000 --resume
  hpcm train --model hpcm-phase2 --from-baseline HPCM_Base_0.013.pth.tar ...
  torchrun --nproc-per-node 2 -m hpcm_models.cli train --device cuda ...

The output folder receives latest.pt / best.pt (training checkpoints, usable with
`hpcm compress --checkpoint`), train_log.csv, val_log.csv, tensorboard/ and config.json.
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from hpcm_models.registry import available_models

    p = subcommand(
        subparsers,
        "train",
        HELP,
        "Train an HPCM model or an RWKV phase with the rate-distortion loss.",
        EPILOG,
    )
    g = p.add_argument_group("model")
    g.add_argument("--model", choices=available_models(), help="model to train (not with --resume)")
    g.add_argument(
        "--model-kwargs",
        type=json_object,
        default={},
        metavar="JSON",
        help='constructor options, e.g. \'{"M": 32, "N": 16, "use_checkpoint": true, '
        '"cell_hidden_rates": [2, 3, 4], "config": {"transform_channels": [16, 32, 64]}}\'',
    )
    g.add_argument(
        "--from-baseline",
        type=Path,
        metavar="CKPT",
        help="initialize every part shared with HPCM from this checkpoint (fine-tuning a phase)",
    )
    g = p.add_argument_group("data")
    g.add_argument("--dataset", type=Path, required=True, metavar="DIR", help="training images")
    g.add_argument("--val-dataset", type=Path, metavar="DIR", help="validation images")
    g.add_argument("--patch-size", type=int, default=256, help="crop side (default: 256)")
    g.add_argument("--batch-size", type=int, default=8, help="per process (default: 8)")
    g.add_argument("--num-workers", type=int, default=2, help="data-loading workers (default: 2)")
    g.add_argument(
        "--cache-images",
        action="store_true",
        help="decode the training images once and crop from memory (3 bytes a pixel): feeds a "
        "GPU that would otherwise wait for image decoding",
    )
    g.add_argument("--max-val-images", type=int, help="validate on the first N images only")
    g = p.add_argument_group("optimization")
    g.add_argument("--steps", type=int, required=True, help="total optimizer steps of the run")
    g.add_argument(
        "--stop-at",
        type=int,
        metavar="STEP",
        help="end this invocation at STEP (validated and saved as at the end); --resume "
        "continues the same --steps schedule",
    )
    g.add_argument("--lmbda", type=float, default=0.013, help="λ (default: 0.013)")
    g.add_argument("--metric", choices=("mse", "ms-ssim"), default="mse")
    g.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate (default: 1e-4)")
    g.add_argument(
        "--decay-lr",
        type=float,
        help="learning rate of the RWKV decay/boost parameters (default: --lr / 10)",
    )
    g.add_argument(
        "--lr-milestones",
        type=int,
        nargs="+",
        metavar="STEP",
        help="steps where the learning rate drops (default: HPCM's, at 91.6/95/98.3%% of --steps)",
    )
    g.add_argument(
        "--lr-factors",
        type=float,
        nargs="+",
        default=[0.3, 0.1, 0.01],
        metavar="F",
        help="learning rate from each milestone on, relative to --lr (default: 0.3 0.1 0.01)",
    )
    g.add_argument(
        "--warmup-steps",
        type=int,
        default=0,
        metavar="N",
        help="ramp the learning rate up linearly over the first N steps (default: 0; a few "
        "hundred when starting from trained weights, e.g. with --from-baseline)",
    )
    g.add_argument("--clip-grad", type=float, default=1.0, help="max gradient norm; 0 = off")
    g.add_argument("--amp", choices=("off", "bf16"), default="off", help="bf16 autocast")
    g.add_argument(
        "--cuda-graphs",
        action="store_true",
        help="replay each step from a CUDA graph (one GPU; fused Adam, channels-last): "
        "2.5-4.7x faster steps on an H200, see docs/performance.md",
    )
    g.add_argument("--seed", type=int, default=0)
    g = p.add_argument_group("run")
    g.add_argument("--output", type=Path, required=True, metavar="DIR", help="run directory")
    g.add_argument("--resume", action="store_true", help="continue from DIR/latest.pt")
    g.add_argument(
        "--device", default="auto", help="auto (default), cpu, cuda, cuda:N (one process)"
    )
    g.add_argument("--val-every", type=int, default=5000, help="steps between validations")
    g.add_argument("--save-every", type=int, default=1000, help="steps between latest.pt saves")
    g.add_argument("--log-every", type=int, default=50, help="steps between log rows")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument("--no-tensorboard", action="store_true", help="CSV logs only")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from hpcm_models.checkpoints import build_model
    from hpcm_models.training import TrainConfig, train

    if args.model is not None and not args.resume:
        # Check the options on the meta device (no memory, no time) before loading any data.
        try:
            with torch.device("meta"):
                build_model(args.model, args.model_kwargs)
        except (TypeError, ValueError) as err:
            raise HPCMError(f"invalid --model-kwargs for {args.model}: {err}") from None
    cfg = TrainConfig(
        model=args.model,
        model_kwargs=args.model_kwargs,
        dataset=args.dataset,
        val_dataset=args.val_dataset,
        output=args.output,
        steps=args.steps,
        stop_at=args.stop_at,
        patch_size=args.patch_size,
        batch_size=args.batch_size,
        lmbda=args.lmbda,
        metric=args.metric,
        lr=args.lr,
        decay_lr=args.decay_lr,
        lr_milestones=args.lr_milestones,
        lr_factors=args.lr_factors,
        warmup_steps=args.warmup_steps,
        clip_grad=args.clip_grad,
        device=args.device,
        amp=args.amp,
        cuda_graphs=args.cuda_graphs,
        resume=args.resume,
        from_baseline=args.from_baseline,
        val_every=args.val_every,
        max_val_images=args.max_val_images,
        save_every=args.save_every,
        log_every=args.log_every,
        seed=args.seed,
        num_workers=args.num_workers,
        cache_images=args.cache_images,
        progress=not args.no_progress,
        tensorboard=not args.no_tensorboard,
    )
    try:
        cfg.validate()
    except ValueError as err:
        raise HPCMError(str(err)) from None
    summary = train(cfg)
    if int(os.environ.get("RANK", "0")) == 0:
        best = f", best validation loss {summary['best_loss']:.4f}" if summary["best"] else ""
        print(
            f"trained to step {summary['step']}: {summary['latest']}{best}"
            + (
                f" ({summary['skipped_steps']} updates skipped)" if summary["skipped_steps"] else ""
            ),
            file=sys.stdout,
        )
    return 0
