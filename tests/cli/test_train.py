"""`hpcm train`: exact resume, divergence handling, checkpoints the codec reads, user errors."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch

import hpcm_models
from hpcm_models import HPCM_MICRO
from hpcm_models.checkpoints import (
    CHECKPOINT_FORMAT,
    build_model,
    load_training_checkpoint,
    model_kwargs_to_json,
)
from hpcm_models.cli import main
from hpcm_models.datasets import PatchDataset, find_images
from hpcm_models.entropy import CODING_BUFFERS
from hpcm_models.losses import RateDistortionLoss
from hpcm_models.training import LRSchedule

DATA = Path(hpcm_models.__file__).parent / "data"

# The real coding schedule and every module type at a size that trains in well under a second a
# step on a CPU; phase 2 has RWKV context cells, so the decay/boost parameter group is exercised.
TINY_KWARGS = model_kwargs_to_json({"M": 16, "N": 8, "config": HPCM_MICRO})
MODEL = "hpcm-phase2"


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled photos in a nested folder (the dataset is searched recursively)."""
    root = tmp_path_factory.mktemp("images")
    for i, path in enumerate(sorted(DATA.glob("*.png"))):
        target = root / f"part{i % 2}" / path.name
        target.parent.mkdir(exist_ok=True)
        shutil.copy(path, target)
    return root


def train_args(images: Path, output: Path, steps: int, *extra: str) -> list[str]:
    return [
        "train",
        "--model", MODEL,
        "--model-kwargs", json.dumps(TINY_KWARGS),
        "--dataset", str(images),
        "--val-dataset", str(images),
        "--max-val-images", "1",
        "--val-every", "2",
        "--output", str(output),
        "--steps", str(steps),
        "--patch-size", "128",
        "--batch-size", "1",
        "--num-workers", "0",
        "--log-every", "1",
        "--save-every", "1",
        "--lr-milestones", "2",
        "--lr-factors", "0.5",
        "--seed", "7",
        "--no-progress",
        *extra,
    ]  # fmt: skip


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def straight_run(images: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three steps in one go."""
    output = tmp_path_factory.mktemp("straight") / "run"
    assert main(train_args(images, output, 3)) == 0
    return output


@pytest.fixture(scope="module")
def two_step_run(images: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same run stopped after two steps (a pristine copy for each test to continue)."""
    output = tmp_path_factory.mktemp("two") / "run"
    assert main(train_args(images, output, 2, "--no-tensorboard")) == 0
    return output


def fresh_copy(run: Path, tmp_path: Path) -> Path:
    target = tmp_path / "run"
    shutil.copytree(run, target)
    return target


def test_resume_reproduces_the_uninterrupted_run_bitwise(
    images: Path, straight_run: Path, two_step_run: Path, tmp_path: Path
) -> None:
    resumed = fresh_copy(two_step_run, tmp_path)
    assert main([*train_args(images, resumed, 3), "--resume"]) == 0

    # Every logged value of every step, as written (repr of the float), is identical.
    expected, got = read_rows(straight_run / "train_log.csv"), read_rows(resumed / "train_log.csv")
    assert [r["step"] for r in got] == ["1", "2", "3"]
    for a, b in zip(expected, got, strict=True):
        for key in ("loss", "bpp", "y_bpp", "z_bpp", "mse", "lr", "grad_norm"):
            assert a[key] == b[key], (a["step"], key)
    # The learning rate dropped at the milestone, after the resume: the scheduler was restored.
    assert [float(r["lr"]) for r in got] == [1e-4, 1e-4, 5e-5]
    assert read_rows(straight_run / "val_log.csv") == read_rows(resumed / "val_log.csv")

    a, b = (load_training_checkpoint(p / "latest.pt") for p in (straight_run, resumed))
    assert a["step"] == b["step"] == 3
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    state_a, state_b = a["optimizer"]["state"], b["optimizer"]["state"]
    assert state_a.keys() == state_b.keys()
    for index in state_a:
        for name in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(state_a[index][name], state_b[index][name]), (index, name)
    groups = {g["name"]: g for g in a["optimizer"]["param_groups"]}
    assert groups["wkv"]["lr"] == pytest.approx(groups["decay"]["lr"] / 10)


def test_stop_at_pauses_a_run_that_resume_finishes_bitwise(
    images: Path, straight_run: Path, tmp_path: Path
) -> None:
    """``--stop-at`` ends an invocation early on the schedule of ``--steps``: resuming it gives
    the uninterrupted run."""
    run = tmp_path / "run"
    assert main([*train_args(images, run, 3, "--no-tensorboard"), "--stop-at", "2"]) == 0
    assert load_training_checkpoint(run / "latest.pt")["step"] == 2
    assert [r["step"] for r in read_rows(run / "train_log.csv")] == ["1", "2"]
    assert main([*train_args(images, run, 3, "--no-tensorboard"), "--resume"]) == 0
    expected, got = read_rows(straight_run / "train_log.csv"), read_rows(run / "train_log.csv")
    assert [r["step"] for r in got] == ["1", "2", "3"]
    for a, b in zip(expected, got, strict=True):
        for key in ("loss", "bpp", "mse", "lr", "grad_norm"):
            assert a[key] == b[key], (a["step"], key)


def test_training_writes_checkpoints_logs_and_tensorboard(straight_run: Path) -> None:
    ckpt = load_training_checkpoint(straight_run / "latest.pt")
    assert ckpt["format"] == CHECKPOINT_FORMAT
    assert ckpt["version"] == 1
    assert ckpt["model_name"] == MODEL
    assert ckpt["model_kwargs"] == TINY_KWARGS
    assert {"optimizer", "scheduler", "rng", "best_loss", "args"} <= ckpt.keys()
    assert ckpt["args"]["seed"] == 7
    best = load_training_checkpoint(straight_run / "best.pt")
    assert best["step"] in (2, 3)
    assert ckpt["best_loss"] == pytest.approx(best["best_loss"])
    val = read_rows(straight_run / "val_log.csv")
    assert [r["step"] for r in val] == ["2", "3"]
    assert min(float(r["loss"]) for r in val) == pytest.approx(ckpt["best_loss"])
    rows = read_rows(straight_run / "train_log.csv")
    assert all(float(r["bpp"]) > 0 and float(r["loss"]) > 0 for r in rows)
    assert list((straight_run / "tensorboard").glob("events.out.tfevents.*"))
    config = json.loads((straight_run / "config.json").read_text())
    assert config["model"] == MODEL
    assert config["world_size"] == 1
    assert not list(straight_run.glob(".*.tmp"))  # atomic writes leave no temporaries


def test_checkpoint_compresses_and_decompresses_with_the_codec(
    straight_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    encoded, decoded = tmp_path / "a.hpcm", tmp_path / "a.png"
    checkpoint = str(straight_run / "latest.pt")
    assert (
        main(["compress", str(DATA / "rocket.png"), str(encoded), "--checkpoint", checkpoint]) == 0
    )
    assert main(["decompress", str(encoded), str(decoded), "--checkpoint", checkpoint]) == 0
    assert encoded.stat().st_size > 0
    from PIL import Image

    with Image.open(decoded) as image, Image.open(DATA / "rocket.png") as original:
        assert image.size == original.size


def test_non_finite_loss_stops_and_keeps_the_last_checkpoint(
    images: Path, two_step_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    run = fresh_copy(two_step_run, tmp_path)
    before = sha256(run / "latest.pt")
    forward = RateDistortionLoss.forward

    def poisoned(self, *args, **kwargs):
        out = forward(self, *args, **kwargs)
        out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(RateDistortionLoss, "forward", poisoned)
    assert main([*train_args(images, run, 5), "--resume"]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("hpcm train: error: non-finite loss (nan) at step 3")
    assert "latest.pt (step 2), is left as it was" in err
    assert sha256(run / "latest.pt") == before
    assert load_training_checkpoint(run / "latest.pt")["step"] == 2


def test_from_baseline_loads_every_shared_part(
    images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    torch.manual_seed(0)
    baseline = build_model("hpcm-base", TINY_KWARGS).state_dict()
    torch.save(baseline, tmp_path / "base.pth.tar")
    output = tmp_path / "run"
    # A zero learning rate keeps the weights where initialization put them.
    args = train_args(images, output, 1, "--lr", "0", "--decay-lr", "0", "--no-tensorboard")
    assert main([*args, "--from-baseline", str(tmp_path / "base.pth.tar")]) == 0
    assert "fresh: attn_s1, attn_s2, attn_s3" in capsys.readouterr().err
    state = load_training_checkpoint(output / "latest.pt")["model"]
    shared = [k for k in state if not k.startswith(("attn_s", *CODING_BUFFERS))]
    assert len(shared) > 100
    for key in shared:
        assert torch.equal(state[key], baseline[key]), key


def test_warmup_ramps_the_learning_rate_up(images: Path, tmp_path: Path) -> None:
    """--warmup-steps 4: the first steps run at 1/4, 2/4, 3/4 of the scheduled rate (the third
    also at the factor of the milestone it passed), as the log shows."""
    output = tmp_path / "warm"
    args = train_args(images, output, 3, "--lr", "1e-4", "--warmup-steps", "4", "--no-tensorboard")
    assert main(args) == 0
    lrs = [float(row["lr"]) for row in read_rows(output / "train_log.csv")]
    assert lrs == pytest.approx([1e-4 / 4, 1e-4 * 2 / 4, 1e-4 * 3 / 4 * 0.5])


def test_bf16_autocast_trains(images: Path, tmp_path: Path) -> None:
    output = tmp_path / "bf16"
    args = train_args(images, output, 1, "--amp", "bf16", "--no-tensorboard")
    assert main(args) == 0
    (row,) = read_rows(output / "train_log.csv")
    assert torch.isfinite(torch.tensor(float(row["loss"])))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("--dataset", "/nonexistent/images"), "dataset directory '/nonexistent/images' does not"),
        (("--patch-size", "100"), "expected --patch-size to be a positive multiple of 128"),
        (("--metric", "ms-ssim"), "--metric ms-ssim needs patches of at least 161 pixels"),
        (("--model-kwargs", '{"M": 20}'), "invalid --model-kwargs for hpcm-phase2"),
        (("--lr-factors", "0.5", "0.1"), "expected one --lr-factors value per --lr-milestones"),
        (("--warmup-steps", "-1"), "expected warmup_steps to be an int >= 0, got -1"),
        (("--cuda-graphs", "--device", "cpu"), "--cuda-graphs needs a CUDA device, got cpu"),
    ],
)
def test_bad_settings_are_one_line_errors(
    images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], change, message
) -> None:
    # A flag given again overrides the earlier value.
    assert main([*train_args(images, tmp_path / "run", 1), *change]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("hpcm train: error: ")
    assert message in err
    assert not (tmp_path / "run" / "latest.pt").exists()


def test_resume_and_overwrite_guards(
    images: Path, two_step_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*train_args(images, tmp_path / "empty", 3), "--resume"]) == 1
    assert "does not exist" in capsys.readouterr().err
    run = fresh_copy(two_step_run, tmp_path)
    assert main(train_args(images, run, 3)) == 1
    assert "already holds a run (latest.pt): pass --resume" in capsys.readouterr().err
    args = [*train_args(images, run, 3), "--resume"]
    args[args.index(MODEL)] = "hpcm-base"
    assert main(args) == 1
    assert "differs from the checkpoint's model hpcm-phase2" in capsys.readouterr().err


def test_dataset_and_schedule_helpers(images: Path) -> None:
    files = find_images(images)
    assert [f.parent.name for f in files] == ["part0"] * 3 + ["part1"] * 2
    dataset = PatchDataset(files, 256)
    assert dataset.skipped == 3  # rocket (171 wide), camera (192) and chelsea (200 high)
    a, b = dataset[(0, 123)], dataset[(0, 123)]
    assert a.shape == (3, 256, 256)
    assert torch.equal(a, b)  # a sample is a function of its seed
    assert not torch.equal(a, dataset[(0, 124)])
    cached = PatchDataset(files, 256, cache=True)
    assert cached.files == dataset.files
    assert cached.skipped == dataset.skipped
    for index in range(len(dataset)):  # the in-memory crops are the decoded crops
        assert torch.equal(cached[(index, 7 + index)], dataset[(index, 7 + index)])
    schedule = LRSchedule.hpcm(3001)
    assert [schedule(s) for s in (0, 2749, 2750, 2850, 2950, 3000)] == [1, 1, 0.3, 0.1, 0.01, 0.01]
    warm = LRSchedule([2], [0.5], warmup=4)
    assert [warm(s) for s in range(6)] == [0.25, 0.5, 0.75 * 0.5, 0.5, 0.5, 0.5]
    with pytest.raises(ValueError, match="warmup >= 0"):
        LRSchedule([], [], warmup=-1)


def test_ms_ssim_loss_rejects_small_images() -> None:
    loss = RateDistortionLoss(8.73, "ms-ssim")
    x = torch.rand(1, 3, 128, 128)
    out = {"x_hat": x, "likelihoods": {"y": torch.full((1, 4, 8, 8), 0.5)}}
    with pytest.raises(ValueError, match="at least 161x161"):
        loss(out, x)
    big = torch.rand(1, 3, 192, 192)
    terms = loss({"x_hat": big, "likelihoods": {"y": torch.full((1, 2, 3, 4), 0.5)}}, big)
    assert terms["ms_ssim"].item() == pytest.approx(1.0)
    assert terms["bpp"].item() == pytest.approx(24 / (192 * 192))
    assert terms["loss"].item() == pytest.approx(terms["bpp"].item(), abs=1e-5)
