"""tools/ship_weights.py: training checkpoints → weights files with their rows in index.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from shipped import LMBDAS, training_checkpoint
from tool_modules import load_tool

from hpcm_models import pretrained

tool = load_tool("ship_weights")


def test_ships_checkpoints_into_a_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    sources = [training_checkpoint(tmp_path / f"latest-{q}.pt", q) for q in (1, 3)]
    into = tmp_path / "weights"
    args = [*map(str, sources), "--quality", "1", "3", "--into", str(into)]
    assert tool.main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = [json.loads(line) for line in lines[:2]]
    assert [(r["file"], r["quality"], r["lmbda"]) for r in rows] == [
        ("hpcm-small-q1.pt", 1, LMBDAS[1]),
        ("hpcm-small-q3.pt", 3, LMBDAS[3]),
    ]
    assert lines[2].startswith(f"{into}: 2 file(s), ")
    assert [e.to_json() for e in pretrained.read_index(into)] == rows
    # What it wrote is what get_model loads.
    monkeypatch.setenv(pretrained.WEIGHTS_ENV, str(into))
    model = pretrained.load_pretrained("hpcm-small", 3)
    assert pretrained.find_weights("hpcm-small", 3).weights_hash == rows[1]["weights_hash"]
    assert model.N == 8
    # Again, with another λ: the row of that quality is replaced, the other kept.
    again = [str(sources[0]), "--quality", "1", "--lmbda", "0.004", "--into", str(into)]
    assert tool.main(again) == 0
    assert [(e.quality, e.lmbda) for e in pretrained.read_index(into)] == [(1, 0.004), (3, 0.013)]


def test_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = str(training_checkpoint(tmp_path / "latest.pt", 1))
    with pytest.raises(SystemExit):
        tool.main([source, "--quality", "1", "2", "--into", str(tmp_path / "w")])
    assert "give one --quality per SOURCE (1), got 2" in capsys.readouterr().err
    assert tool.main([str(tmp_path / "none.pt"), "--quality", "1", "--into", str(tmp_path)]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "index.json").exists()
