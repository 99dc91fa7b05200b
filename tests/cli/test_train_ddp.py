"""`hpcm train` under `torchrun --nproc-per-node 2` (DDP, Gloo on CPU): rank 0 alone reports and
writes, `--resume` continues both ranks, two processes with batch B step like one with batch 2B,
and `--cuda-graphs` is refused before any device is touched.

This file is also the script that torchrun runs for the equivalence test (see the bottom)."""

from __future__ import annotations

import contextlib
import csv
import itertools
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import hpcm_models
from hpcm_models import HPCM_MICRO
from hpcm_models.checkpoints import load_training_checkpoint, model_kwargs_to_json
from hpcm_models.datasets import StepSampler

DATA = Path(hpcm_models.__file__).parent / "data"
TINY_KWARGS = model_kwargs_to_json({"M": 16, "N": 8, "config": HPCM_MICRO})
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
# One thread per process: two processes share the CI machine's cores instead of oversubscribing;
# NVLink multicast off, as the GPU machines want.
ENV = {
    **os.environ, "OMP_NUM_THREADS": "1", "NCCL_NVLS_ENABLE": "0",
    "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1",
}  # fmt: skip


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The five bundled photos."""
    root = tmp_path_factory.mktemp("images")
    for path in DATA.glob("*.png"):
        shutil.copy(path, root / path.name)
    return root


def _train_args(
    images: Path, output: Path, steps: int, batch: int, *extra: str, device: str = "cpu"
) -> list[str]:
    return [
        "train", "--model", "hpcm-phase1", "--model-kwargs", json.dumps(TINY_KWARGS),
        "--dataset", str(images), "--output", str(output), "--steps", str(steps),
        "--patch-size", "128", "--batch-size", str(batch), "--num-workers", "0",
        "--log-every", "1", "--seed", "7", "--device", device, "--no-progress",
        "--no-tensorboard", *extra,
    ]  # fmt: skip


def _torchrun(nproc: int, target: list[str], args: list[str], *launcher: str) -> str:
    """Run ``target args`` on ``nproc`` processes; the launcher's stderr."""
    command = [*TORCHRUN, "--nproc-per-node", str(nproc), *launcher, *target, *args]
    result = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stderr


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _rank_logs(log_dir: Path) -> dict[tuple[int, str], str]:
    """What each rank printed, from torchrun's ``--log-dir`` (``.../attempt_0/RANK/stdout.log``)."""
    return {(int(p.parent.name), p.stem): p.read_text() for p in log_dir.rglob("attempt_0/*/*.log")}


@pytest.mark.parametrize(("n", "batch", "world"), [(5, 1, 2), (23, 2, 3), (64, 4, 4)])
def test_ranks_share_out_the_one_process_batch(n: int, batch: int, world: int) -> None:
    """Step s on R ranks with batch B draws the samples (images and crop seeds) of step s of one
    process with batch R·B, rank r taking its entries r::R, over epoch ends and from any step."""
    for start in (0, 1, 5):
        steps = 7  # several epochs of the small datasets
        one_process = StepSampler(n, world * batch, 3, 0, 1, start)
        single = list(itertools.islice(one_process, steps * world * batch))
        ranks = [
            list(itertools.islice(StepSampler(n, batch, 3, r, world, start), steps * batch))
            for r in range(world)
        ]
        for step in range(steps):
            global_batch = single[step * world * batch : (step + 1) * world * batch]
            for r in range(world):
                assert ranks[r][step * batch : (step + 1) * batch] == global_batch[r::world]


@pytest.mark.slow
def test_torchrun_trains_and_resumes_on_two_cpu_processes(images: Path, tmp_path: Path) -> None:
    output, logs = tmp_path / "run", tmp_path / "logs"
    args = [*_train_args(images, output, 2, 1), "--val-dataset", str(images),
            "--max-val-images", "2", "--val-every", "2"]  # fmt: skip
    # Each rank's stdout and stderr go to their own files.
    _torchrun(2, ["-m", "hpcm_models.cli"], args, "--log-dir", str(logs), "--redirects", "3")
    printed = _rank_logs(logs)
    assert "trained to step 2" in printed[0, "stdout"]
    assert "hpcm train: hpcm-phase1" in printed[0, "stderr"]
    assert printed[1, "stdout"] == ""
    assert "hpcm train" not in printed[1, "stderr"]
    assert sorted(p.name for p in output.iterdir()) == [
        "best.pt", "config.json", "latest.pt", "train_log.csv", "val_log.csv",
    ]  # fmt: skip
    assert json.loads((output / "config.json").read_text())["world_size"] == 2
    assert [r["step"] for r in _rows(output / "train_log.csv")] == ["1", "2"]
    (val,) = _rows(output / "val_log.csv")
    assert val["images"] == "2"  # one validation image on each rank, summed
    ckpt = load_training_checkpoint(output / "latest.pt")
    assert ckpt["step"] == 2
    assert ckpt["args"]["world_size"] == 2
    assert not any(k.startswith("module.") for k in ckpt["model"])  # saved unwrapped

    args[args.index("--steps") + 1] = "3"
    _torchrun(2, ["-m", "hpcm_models.cli"], [*args, "--resume"])
    assert [r["step"] for r in _rows(output / "train_log.csv")] == ["1", "2", "3"]
    assert [r["step"] for r in _rows(output / "val_log.csv")] == ["2", "3"]
    assert load_training_checkpoint(output / "latest.pt")["step"] == 3


@contextlib.contextmanager
def _comparable_training(record: Path) -> Iterator[None]:
    """Train without quantization noise and in IEEE float32 (no TF32 on CUDA), and write the
    list of this rank's checkpoint and log writes to ``record``.

    The noise is drawn inside the model, for the whole local batch, from each rank's generator:
    one process with batch 2B and two with batch B draw different (equally valid) noise for the
    same samples, so the equivalence is checked without it. The rest of the forward (the STE
    rounding of ŷ and ẑ, the likelihoods, every parameter's gradient) is unchanged.
    """
    import hpcm_models.hpcm.model as model_module
    import hpcm_models.training.loop as loop

    writes: list[str] = []
    saved = (model_module._add_noise, loop.save_checkpoint, loop.TrainLogs)
    tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)

    def save_checkpoint(obj: object, path: Path) -> None:
        writes.append(Path(path).name)
        saved[1](obj, path)

    def train_logs(*args: object, **kwargs: object) -> object:
        writes.append("logs")
        return saved[2](*args, **kwargs)

    model_module._add_noise = lambda x: x
    loop.save_checkpoint, loop.TrainLogs = save_checkpoint, train_logs
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        model_module._add_noise, loop.save_checkpoint, loop.TrainLogs = saved
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
        record.write_text(json.dumps(writes))


def _weights(path: Path) -> dict[str, torch.Tensor]:
    """The floating-point tensors of a checkpoint's model (not the emptied rANS tables)."""
    state = load_training_checkpoint(path)["model"]
    return {k: v for k, v in state.items() if v.is_floating_point() and v.numel()}


def _initial_weights(images: Path, tmp_path: Path) -> dict[str, torch.Tensor]:
    """The parameters every run of :func:`_train_args` starts from (seeded)."""
    from hpcm_models.training.config import TrainConfig
    from hpcm_models.training.loop import _initial_model

    cfg = TrainConfig(model="hpcm-phase1", dataset=images, output=tmp_path / "unused", steps=1)
    model, _ = _initial_model(cfg, "hpcm-phase1", TINY_KWARGS, 7, resuming=False)
    return {k: v.detach() for k, v in model.named_parameters()}


def _difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> tuple[float, float]:
    """Over the tensors of ``b`` (``a`` has them all): the largest absolute difference, and the
    fraction of the values that differ by more than :data:`STEP_TOLERANCE`."""
    diffs = torch.cat([(a[k].double() - b[k].double()).abs().flatten() for k in b])
    return float(diffs.max()), float((diffs > STEP_TOLERANCE).double().mean())


#: 1 % of the change Adam's first steps make to a weight (about the learning rate, 1e-4).
STEP_TOLERANCE = 1e-6
TWO_GPUS = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")


@pytest.mark.parametrize(
    "device", [pytest.param("cpu", marks=pytest.mark.slow),
               pytest.param("cuda", marks=[pytest.mark.cuda, TWO_GPUS])],
)  # fmt: skip
def test_two_processes_step_like_one_process_with_twice_the_batch(
    device: str, images: Path, tmp_path: Path
) -> None:
    """One step of 2 processes x batch 1 gives the weights of one step of 1 process x batch 2 on
    the same two samples (quantization noise off, see :func:`_comparable_training`), and so does
    a second step after both ranks resumed from the first one's checkpoint.

    Measured on CPU (2-core VM, torch 2.15, Gloo): max |Δweight| 6.0e-8 after step 1 and after
    the resumed step 2, about one float32 ulp of the weights (1.3 % of the values differ at all
    after step 2), for updates of 1.0e-4 (Adam's first steps move a weight by about the learning
    rate); the same test with the crops seeded per rank, as before the sampler was made
    independent of the world size, differs by 2.0e-4. On CUDA, cuDNN picks its algorithms by
    batch size, so a gradient near zero may come out with the other sign and move its weight the
    other way: there the test bounds the fraction of weights off by more than 1 % of a step (and
    prints the largest difference).
    """
    records = {"one": tmp_path / "one-records", "two": tmp_path / "two-records"}
    for folder in records.values():
        folder.mkdir()
    runs = {name: tmp_path / name for name in records}

    def one_process(*extra: str) -> None:
        from hpcm_models.cli import main

        with _comparable_training(records["one"] / "rank0.json"):
            assert main(_train_args(images, runs["one"], 2, 2, *extra, device=device)) == 0

    def two_processes(*extra: str) -> None:
        args = [str(records["two"]), *_train_args(images, runs["two"], 2, 1, *extra, device=device)]
        _torchrun(2, [__file__], args)

    one_process("--stop-at", "1")
    two_processes("--stop-at", "1")
    initial = _initial_weights(images, tmp_path)
    after_one = {name: _weights(run / "latest.pt") for name, run in runs.items()}
    assert initial.keys() < after_one["one"].keys()
    update, _ = _difference(after_one["one"], initial)
    step1, off1 = _difference(after_one["one"], after_one["two"])
    one_process("--resume")
    two_processes("--resume")
    step2, off2 = _difference(*(_weights(run / "latest.pt") for run in runs.values()))
    print(f"{device}: 1 x 2B vs 2 x B: max |Δweight| {step1:.3g} after step 1 ({off1:.2%} off by "
          f"> {STEP_TOLERANCE:g}), {step2:.3g} after step 2 ({off2:.2%}); largest step-1 update "
          f"{update:.3g}")  # fmt: skip
    assert update > 50 * STEP_TOLERANCE  # the step moved the weights...
    if device == "cpu":  # ...and both runs alike
        assert max(step1, step2) < STEP_TOLERANCE
    else:
        assert max(off1, off2) < 1e-3
    rel = 1e-5 if device == "cpu" else 1e-4
    for one, two in zip(*(_rows(run / "train_log.csv") for run in runs.values()), strict=True):
        for key in ("loss", "bpp", "mse"):
            assert float(two[key]) == pytest.approx(float(one[key]), rel=rel)
    # Rank 0 alone wrote checkpoints and logs (the record is of the second invocation).
    assert json.loads((records["two"] / "rank1.json").read_text()) == []
    assert json.loads((records["two"] / "rank0.json").read_text()) == ["logs", "latest.pt"]


def test_cuda_graphs_are_refused_under_torchrun_before_any_device_use(
    images: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The refusal comes before joining the process group, so torchrun's environment alone
    (WORLD_SIZE=2, no rendezvous) shows it on any machine."""
    import torch.distributed as dist

    from hpcm_models.cli import main

    for key, value in {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}.items():
        monkeypatch.setenv(key, value)
    output = tmp_path / "run"
    assert main(_train_args(images, output, 2, 1, "--cuda-graphs")) == 1
    err = capsys.readouterr().err
    assert "--cuda-graphs runs in a single process (one GPU), but torchrun started 2" in err
    assert "drop --cuda-graphs" in err
    assert len(err.strip().splitlines()) == 1
    assert not dist.is_initialized()
    assert not output.exists()


if __name__ == "__main__":  # under torchrun: RECORD_DIR hpcm-train-args...
    rank = os.environ.get("RANK", "0")
    with _comparable_training(Path(sys.argv[1]) / f"rank{rank}.json"):
        from hpcm_models.cli import main

        code = main(sys.argv[2:])
    sys.exit(code)
