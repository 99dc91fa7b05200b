"""tools/train_codecs.py: plans, the runs' command lines, and exports that count every step."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from shipped import training_checkpoint
from tool_modules import load_tool

from hpcm_models import pretrained

tool = load_tool("train_codecs")


def _export(run_dir: Path, target: Path, baseline: Path | None = None) -> dict:
    run_dir.mkdir()
    training_checkpoint(run_dir / "latest.pt", 2)  # step 100
    tool.export(run_dir, target, {"plan": "plan.json"}, baseline)
    return torch.load(target, weights_only=True)["meta"]


def test_export_of_a_fresh_run_counts_its_own_steps(tmp_path: Path) -> None:
    meta = _export(tmp_path / "run", tmp_path / "out.pt")
    assert (meta["step"], meta["total_steps"], meta["plan"]) == (100, 100, "plan.json")
    assert "continued_from" not in meta


def test_export_of_a_continued_run_counts_the_baselines_steps(tmp_path: Path) -> None:
    """A run started with --from-baseline from an earlier export: its weights have both runs'
    steps behind them, and the export names the file it continued from (chains add up)."""
    first = tmp_path / "first.pt"
    _export(tmp_path / "a", first)
    second = tmp_path / "second.pt"
    meta = _export(tmp_path / "b", second, baseline=first)
    assert meta["step"] == 100
    assert meta["total_steps"] == 200
    assert meta["continued_from"] == {
        "file": "first.pt",
        "sha256": hashlib.sha256(first.read_bytes()).hexdigest(),
        "total_steps": 100,
    }
    assert _export(tmp_path / "c", tmp_path / "third.pt", baseline=second)["total_steps"] == 300
    # A shipped weights file as the baseline: its "meta" has the step it was exported at.
    shipped = tmp_path / "shipped.pt"
    pretrained.make_weights_file(second, shipped, quality=2)
    assert tool.continuation(shipped)["total_steps"] == 200
    # The index row of weights made from the export says so too (hpcm_models.pretrained).
    row = pretrained.make_weights_file(second, tmp_path / "w.pt", quality=2)
    assert (row.trained["step"], row.trained["total_steps"]) == (100, 200)
    assert row.trained["continued_from"]["file"] == "first.pt"


def test_a_baseline_that_does_not_say_its_steps(tmp_path: Path) -> None:
    """The authors' checkpoints (a bare state dict) and unreadable files: steps unknown (None),
    never a guess; the file is still named and hashed."""
    bare = tmp_path / "HPCM_Base.pth.tar"
    torch.save({"g_a.0.weight": torch.zeros(2)}, bare)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file")
    for path in (bare, junk):
        info = tool.continuation(path)
        assert info == {
            "file": path.name,
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            "total_steps": None,
        }
    meta = _export(tmp_path / "run", tmp_path / "out.pt", baseline=bare)
    assert meta["total_steps"] is None


def test_plans_in_the_repository_load(tmp_path: Path) -> None:
    """Every shipped plan parses, names each run once, and maps to `hpcm train` flags."""
    plans = sorted((tool.ROOT / "tools" / "plans").glob("*.json"))
    assert plans
    for plan in plans:
        runs = tool.load_plan(plan)
        assert runs, plan
        for run in runs:
            cmd = tool.train_command(run, tmp_path / "data", tmp_path / "out", 1000)
            assert cmd[cmd.index("--model") + 1] == run["model"]
            assert cmd[cmd.index("--steps") + 1] == "1000"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"runs": [{"name": "x", "model": "hpcm-small", "nope": 1}]}))
    with pytest.raises(SystemExit, match="unknown settings"):
        tool.load_plan(bad)
