"""`hpcm bench`: FLOP counting (with the Bi-WKV op's analytic count) and a CPU smoke run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from hpcm_models.benchmark import (
    BIWKV4_FORWARD_FLOPS_PER_ELEMENT,
    CELL_SIZES,
    biwkv4_flops,
    count_flops,
    count_ops,
    parse_size,
)
from hpcm_models.checkpoints import build_model
from hpcm_models.cli import main
from rwkv_blocks import RWKVContextCell

TINY_KWARGS = {"M": 32, "N": 16, "config": {"transform_channels": [16, 32, 64]}}


def test_counter_sees_matmuls_and_the_analytic_op_count() -> None:
    linear = nn.Linear(8, 5, bias=False)
    x = torch.randn(3, 8)
    assert count_flops(lambda: linear(x)) == (2 * 3 * 8 * 5, 0)

    cell = RWKVContextCell(16, hidden_rate=2)
    x_t, h_prev = torch.randn(2, 16, 4, 6), torch.randn(2, 16, 4, 6)
    counted, wkv = count_flops(lambda: cell(x_t, h_prev))
    assert wkv == BIWKV4_FORWARD_FLOPS_PER_ELEMENT * 2 * 24 * 16 == biwkv4_flops(2, 24, 16)
    # The 1x1 convolutions and linear layers alone: in (2C->C), k/v/r/out (4 x C->C), channel mix
    # (C->2C, 2C->C, C->C), out (C->C); OmniShift's depthwise convolutions come on top.
    tokens, C = 2 * 24, 16
    dense = 2 * tokens * (2 * C * C + 4 * C * C + (2 * C * C + 2 * C * C + C * C) + C * C)
    assert dense < counted < dense + 2 * 2 * tokens * C * 25 + 1

    counted_bwd, wkv_bwd = count_flops(lambda: cell(x_t, h_prev).sum().backward())
    assert wkv_bwd == biwkv4_flops(2, 24, 16) + biwkv4_flops(2, 24, 16, backward=True)
    assert counted_bwd > 2 * counted


def test_count_ops_counts_computing_ops_not_views() -> None:
    x, w = torch.randn(6, 4), torch.randn(3, 4)
    # A matrix product through a transposed view and a reshape: one op that computes.
    assert count_ops(lambda: (x @ w.t()).view(2, 9)) == 1
    assert count_ops(lambda: torch.sigmoid(x) * x + 1) == 3
    assert count_ops(lambda: torch.empty(3)) == 0


def test_cell_sizes_are_the_padded_latents() -> None:
    assert CELL_SIZES == {"kodak": (32, 48), "1080p": (72, 120), "4k": (136, 240)}
    assert parse_size("768x512") == (768, 512)
    with pytest.raises(ValueError, match="WIDTHxHEIGHT"):
        parse_size("768")


def test_bench_smoke_on_cpu(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench.json"
    args = [
        "bench", "--device", "cpu", "--models", "hpcm-base", "hpcm-phase1",
        "--model-kwargs", json.dumps(TINY_KWARGS), "--size", "128x128", "--train-size", "128x128",
        "--repeat", "1", "--warmup", "0", "--cell-dim", "32", "--cell-sizes", "kodak",
        "--json", str(out),
    ]  # fmt: skip
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "| hpcm-phase1 |" in text
    assert "| kodak (32×48) | RWKVContextCell |" in text
    doc = json.loads(out.read_text())
    assert doc["machine"]["torch"] == torch.__version__
    assert doc["machine"]["device"] == "cpu"
    base, phase1 = doc["models"]
    for row, name in ((base, "hpcm-base"), (phase1, "hpcm-phase1")):
        assert row["model"] == name
        assert row["params"] == sum(p.numel() for p in build_model(name, TINY_KWARGS).parameters())
        assert row["flops_counted"] > 0
        assert row["eval_ms"] > 0
        assert row["train_step_ms"] > 0
        assert row["flops"] == row["flops_counted"] + row["flops_biwkv4"]
        assert row["eval_peak_mib"] is None  # CUDA only
        assert row["train_batch"] == 1
        assert row["train_size"] == [128, 128]
    assert base["flops_biwkv4"] == 0
    # Phase 1's s3 cell (2M = 64 channels on the 8x8 latent) runs the op 5 times per image.
    assert phase1["flops_biwkv4"] == 5 * biwkv4_flops(1, 8 * 8, 64)
    cross, rwkv, lite = doc["cells"]
    assert (cross["cell"], rwkv["cell"], lite["cell"]) == (
        "CrossAttentionCell",
        "RWKVContextCell",
        "RWKVContextCellLite",
    )
    assert cross["latent"] == rwkv["latent"] == lite["latent"] == [32, 48]
    assert cross["flops_biwkv4"] == 0
    assert rwkv["flops_biwkv4"] == biwkv4_flops(1, 32 * 48, 32)
    # The lite cell: Bi-WKV on C/2 channels, four C x C/2 matrix products.
    T, C = 32 * 48, 32
    assert lite["flops_biwkv4"] == biwkv4_flops(1, T, C // 2)
    assert lite["flops_counted"] == 8 * T * C * (C // 2)
    for row in (cross, rwkv, lite):
        assert row["fwd_ms"] > 0
        assert row["fwd_bwd_ms"] > 0
        assert row["precision"] == "default"
        assert 0 < row["ops_fwd"] < row["ops_fwd_bwd"]
        assert row["fwd_graph_ms"] is row["fwd_mib"] is None  # CUDA only
    assert lite["ops_fwd"] < cross["ops_fwd"] < rwkv["ops_fwd"]
    assert "| kodak | RWKVContextCellLite | default | 0." in text  # FLOPs ratio < 1


def test_bench_rejects_bad_sizes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--device", "cpu", "--size", "100x128", "--no-cells"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == "hpcm bench: error: expected --size to be multiples of 128, got 100x128"


def test_bench_cpu_defaults_are_quick_and_say_how_to_ask_for_more(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "bench.json"
    assert (
        main(["bench", "--device", "cpu", "--models", "--cell-dim", "32", "--json", str(out)]) == 0
    )
    text = capsys.readouterr().out
    assert "For all of it (20+ minutes): --train --cell-sizes kodak 1080p 4k --repeat 5" in text
    settings = json.loads(out.read_text())["settings"]
    assert settings["cell_sizes"] == ["kodak"]  # not the 4K cells, minutes each on a CPU
    assert settings["repeat"] == 1
    assert settings["train_size"] is None
    cells = json.loads(out.read_text())["cells"]
    assert {tuple(c["latent"]) for c in cells} == {CELL_SIZES["kodak"]}


def test_bench_size_takes_one_number_for_a_square(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "bench.json"
    args = [
        "bench",
        "--device",
        "cpu",
        "--models",
        "--no-cells",
        "--size",
        "256",
        "--json",
        str(out),
    ]
    assert main(args) == 0
    assert json.loads(out.read_text())["settings"]["size"] == [256, 256]
    assert "CPU defaults" in capsys.readouterr().out  # --repeat was left to the device
    with pytest.raises(SystemExit):
        main(["bench", "--size", "256x"])
    assert "(or one number N for NxN)" in capsys.readouterr().err
