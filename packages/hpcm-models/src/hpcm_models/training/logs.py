"""What a training run reports besides its checkpoints (rank 0 only): ``train_log.csv``,
``val_log.csv``, ``config.json``, TensorBoard scalars, and one-line messages on stderr."""

from __future__ import annotations

import csv
import dataclasses
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["TRAIN_FIELDS", "VAL_FIELDS", "CSVLog", "TrainLogs", "describe_settings", "log"]

#: Columns of ``train_log.csv``.
TRAIN_FIELDS = (
    "step", "loss", "bpp", "y_bpp", "z_bpp", "mse", "psnr", "ms_ssim", "lr", "grad_norm",
    "skipped", "seconds",
)  # fmt: skip
#: Columns of ``val_log.csv``.
VAL_FIELDS = ("step", "loss", "bpp", "mse", "psnr", "ms_ssim", "images", "best")


class CSVLog:
    """Append-only CSV; on resume, rows after the resumed step are dropped (they were logged by
    the interrupted run after its last checkpoint and will be logged again)."""

    def __init__(self, path: Path, fields: Sequence[str], keep_until: int | None) -> None:
        self.path, self.fields = path, tuple(fields)
        rows: list[dict[str, str]] = []
        if keep_until is not None and path.is_file():
            with path.open(newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= keep_until]
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, self.fields)
            writer.writeheader()
            writer.writerows(rows)

    def write(self, row: Mapping[str, Any]) -> None:
        with self.path.open("a", newline="") as f:
            csv.DictWriter(f, self.fields).writerow({k: row.get(k, "") for k in self.fields})


def log(message: str, enabled: bool = True) -> None:
    """Print a line on stderr without breaking the progress bar."""
    if enabled:
        from tqdm import tqdm

        tqdm.write(message, file=sys.stderr)


def describe_settings(settings: Any) -> dict[str, Any]:
    """A dataclass of settings as JSON data (paths as strings)."""
    out = {}
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        out[f.name] = str(value) if isinstance(value, Path) else value
    return out


class TrainLogs:
    """The logs of a run in ``output``.

    Args:
        output: the run directory.
        keep_until: rows of earlier runs kept up to this step (the resumed step; 0 for a new run).
        tensorboard: also write TensorBoard scalars to ``output/tensorboard``.
    """

    def __init__(self, output: Path, keep_until: int, tensorboard: bool) -> None:
        self.output = output
        self.train = CSVLog(output / "train_log.csv", TRAIN_FIELDS, keep_until)
        self.val = CSVLog(output / "val_log.csv", VAL_FIELDS, keep_until)
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(output / "tensorboard"), purge_step=keep_until + 1)

    def config(self, settings: Mapping[str, Any]) -> None:
        """Write ``config.json``."""
        (self.output / "config.json").write_text(json.dumps(settings, indent=1) + "\n")

    def step(self, row: Mapping[str, Any], keys: Sequence[str]) -> None:
        """A row of ``train_log.csv``; ``keys`` also go to TensorBoard."""
        self.train.write(row)
        self._scalars("train", row, keys, row["step"])

    def validation(self, row: Mapping[str, Any]) -> None:
        """A row of ``val_log.csv`` (loss, bpp, PSNR and MS-SSIM also to TensorBoard)."""
        self.val.write(row)
        self._scalars("val", row, ("loss", "bpp", "psnr", "ms_ssim"), row["step"])

    def _scalars(self, prefix: str, row: Mapping[str, Any], keys: Sequence[str], step: int) -> None:
        if self.writer is not None:
            for key in keys:
                if key in row:
                    self.writer.add_scalar(f"{prefix}/{key}", row[key], step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
