"""tools/study_report.py: RD loss from PSNR, seed statistics (spread, Welch's test, pairing by
seed and by batch), shared throughput, collecting N seeds per model from a runs tree, and the
report and the docs' generated blocks regenerated from the committed summaries."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
from tool_modules import load_tool

from hpcm_models.evaluation import psnr
from hpcm_models.losses import RateDistortionLoss

ROOT = Path(__file__).resolve().parents[2]


tool = load_tool("study_report")


def test_rd_loss_is_the_training_objective_of_an_8bit_image() -> None:
    # An 8-bit image and a distorted copy: the loss training computes on [0, 1] values equals
    # rd_loss from the PSNR that evaluation measures on the 0-255 values.
    g = torch.Generator().manual_seed(0)
    original = torch.randint(0, 256, (1, 3, 32, 48), generator=g, dtype=torch.uint8)
    noise = torch.randint(-9, 10, original.shape, generator=g)
    decoded = (original.long() + noise).clamp(0, 255).to(torch.uint8)
    bpp, lmbda = 0.1375, 0.0067
    x, x_hat = original.float() / 255, decoded.float() / 255
    likelihood = torch.full((32 * 48,), 2.0**-bpp)  # Σ −log₂ p / pixels = bpp
    trained = RateDistortionLoss(lmbda)({"x_hat": x_hat, "likelihoods": {"y": likelihood}}, x)
    measured = psnr(original[0].permute(1, 2, 0).numpy(), decoded[0].permute(1, 2, 0).numpy())
    assert tool.rd_loss(bpp, measured, lmbda) == pytest.approx(trained["loss"].item(), rel=1e-5)


def test_rd_loss_values_and_errors() -> None:
    # PSNR 30 dB is an MSE of 1e-3 on [0, 1] values.
    assert tool.rd_loss(0.1, 30.0, 0.01) == pytest.approx(0.01 * 255**2 * 1e-3 + 0.1)
    assert tool.rd_loss(0.2, 30.0, 0.0) == pytest.approx(0.2)
    for bad in ((-0.1, 30.0, 0.01), (0.1, math.nan, 0.01), (0.1, 30.0, -1.0), (math.inf, 30, 1)):
        with pytest.raises(ValueError, match="expected"):
            tool.rd_loss(*bad)


def test_image_losses_refuses_an_image_twice() -> None:
    rows = [{"image": "a", "bpp": 0.1, "psnr": 30.0}, {"image": "b", "bpp": 0.2, "psnr": 20.0}]
    losses = tool.image_losses(rows, 0.01)
    assert list(losses) == ["a", "b"]
    assert losses["b"] == pytest.approx(0.01 * 255**2 * 1e-2 + 0.2)
    with pytest.raises(ValueError, match="'a' appears twice"):
        tool.image_losses([*rows, rows[0]], 0.01)


def test_paired_differences_follow_the_reference_and_need_the_same_keys() -> None:
    reference = {"b": 1.0, "a": 2.0, "c": 3.0}
    assert tool.paired_differences({"a": 2.5, "c": 2.0, "b": 1.25}, reference) == [0.25, 0.5, -1.0]
    with pytest.raises(
        ValueError, match=r"only in the test \['d'\], only in the reference \['c'\]"
    ):
        tool.paired_differences({"a": 1.0, "b": 1.0, "d": 1.0}, reference)
    with pytest.raises(ValueError, match="no items"):
        tool.paired_differences({}, {})


def test_mean_std_and_spread() -> None:
    assert tool.mean_std([1.0, 2.0, 3.0, 4.0]) == pytest.approx((2.5, math.sqrt(5 / 3)))
    assert tool.mean_std([0.5]) == (0.5, 0.0)
    with pytest.raises(ValueError, match="at least one value"):
        tool.mean_std([])
    s = tool.spread([3.0, 1.0, 2.0])
    assert s == {"n": 3, "mean": 2.0, "std": 1.0, "min": 1.0, "max": 3.0}


def test_compare_seeds_is_welchs_test_and_needs_disjoint_seeds() -> None:
    # Means 2 and 5, variances 1: SE = sqrt(1/3 + 1/3), t = −3/SE = −3.674, df = 4; the two-sided
    # p of t = 3.674 with 4 degrees of freedom is 0.0213 (t tables: 2.776 at 0.05, 3.747 at 0.02).
    c = tool.compare_seeds([1.0, 2.0, 3.0], [4.0, 5.0, 6.0])
    assert c["diff"] == pytest.approx(-3.0)
    assert c["se"] == pytest.approx(math.sqrt(2 / 3))
    assert c["t"] == pytest.approx(-3 / math.sqrt(2 / 3))
    assert c["df"] == pytest.approx(4.0)
    assert 0.02 < c["p"] < 0.025
    assert c["overlap"] is False
    assert c["beyond"] is True
    # Unequal variances: Welch's df (Welch–Satterthwaite), not n1 + n2 − 2.
    c = tool.compare_seeds([0.0, 2.0, 4.0], [10.0, 10.5])
    va, vb = 4.0 / 3, 0.125 / 2
    assert c["df"] == pytest.approx((va + vb) ** 2 / (va**2 / 2 + vb**2 / 1))
    # The same means, but one seed of the test lies inside the reference's range: not beyond,
    # whatever p says.
    c = tool.compare_seeds([1.0, 2.0, 4.5], [4.0, 5.0, 6.0])
    assert c["overlap"] is True
    assert c["beyond"] is False
    # A small difference inside the noise.
    c = tool.compare_seeds([1.0, 1.2, 0.9], [1.1, 0.95, 1.05])
    assert c["p"] > 0.5
    assert c["beyond"] is False
    # One seed: the difference, no test.
    c = tool.compare_seeds([1.5], [1.0, 2.0, 3.0])
    assert c["diff"] == pytest.approx(-0.5)
    assert (c["se"], c["t"], c["df"], c["p"], c["beyond"]) == (None,) * 5
    assert c["overlap"] is True
    # No spread at all: any difference is beyond it.
    c = tool.compare_seeds([1.0, 1.0], [2.0, 2.0])
    assert (c["se"], c["p"], c["beyond"]) == (0.0, 0.0, True)
    with pytest.raises(ValueError, match="at least one value"):
        tool.compare_seeds([], [1.0])


def test_paired_t() -> None:
    # Differences −1, −2, −3: t = −2 / (1/√3); with 2 degrees of freedom the two-sided p has the
    # closed form 1 − |t| / sqrt(t² + 2).
    out = tool.paired_t(tool.spread([-1.0, -2.0, -3.0]))
    t = -2 * math.sqrt(3)
    assert out["t"] == pytest.approx(t)
    assert out["df"] == 2
    assert out["p"] == pytest.approx(1 - abs(t) / math.sqrt(t**2 + 2))
    assert tool.paired_t(tool.spread([0.5])) is None
    assert tool.paired_t(tool.spread([0.5, 0.5])) == {"t": math.inf, "df": 1, "p": 0.0}
    assert tool.paired_t(tool.spread([0.0, 0.0]))["p"] == 1.0


def test_one_way_anova_and_pooled_std() -> None:
    # Two groups: F is the square of the pooled two-sample t (here 3.674² = 13.5).
    a = tool.one_way_anova({"a": [1.0, 2.0, 3.0], "b": [4.0, 5.0, 6.0]})
    assert a["F"] == pytest.approx(13.5)
    assert (a["df_between"], a["df_within"]) == (1, 4)
    assert 0.02 < a["p"] < 0.025
    assert tool.one_way_anova({"a": [1.0], "b": [2.0]}) is None
    assert tool.one_way_anova({"a": [1.0, 2.0]}) is None
    # Variances 1 (df 2) and 4 (df 1): pooled (2·1 + 1·4) / 3 = 2.
    assert tool.pooled_std({"a": [1.0, 2.0, 3.0], "b": [0.0, 2 * math.sqrt(2)], "c": [7.0]}) == (
        pytest.approx(math.sqrt(2)),
        3,
    )
    assert tool.pooled_std({"a": [1.0]}) is None


def _run(model: str, seed: int, psnrs: tuple[float, ...], **extra) -> dict:
    rows = [{"image": f"i{k}", "bpp": 0.1, "psnr": p} for k, p in enumerate(psnrs)]
    mean_psnr = sum(psnrs) / len(psnrs)
    return {
        "run": f"{model}-s{seed}",
        "model": model,
        "seed": seed,
        "eval": {"bpp": 0.1, "psnr": mean_psnr, "ms_ssim": 0.9},
        "val": {"loss": 1.0 + seed},
        "per_image": rows,
        **extra,
    }


def test_by_model_sorts_seeds_and_refuses_a_seed_twice() -> None:
    runs = [_run("b", 2, (30.0,)), _run("a", 1, (30.0,)), _run("b", 0, (30.0,))]
    groups = tool.by_model(runs)
    assert list(groups) == ["b", "a"]
    assert [r["seed"] for r in groups["b"]] == [0, 2]
    with pytest.raises(ValueError, match="'a' has a seed twice"):
        tool.by_model([*runs, _run("a", 1, (31.0,))])


def test_seed_statistics_spread_compare_and_pair_by_seed() -> None:
    lmbda = 0.01
    loss = {p: lmbda * 255**2 * 10 ** (-p / 10) + 0.1 for p in (30.0, 31.0, 32.0, 40.0)}
    runs = [
        _run("ref", 0, (30.0, 30.0)),
        _run("ref", 1, (32.0, 32.0)),
        _run("ref", 2, (31.0, 31.0)),
        _run("far", 0, (40.0, 40.0)),
        _run("far", 1, (40.0, 40.0)),
        _run("near", 1, (31.0, 31.0)),  # one seed, paired with the reference's seed 1
    ]
    stats = tool.seed_statistics(runs, "ref", lmbda)
    ref = stats["ref"]["spread"]["rd_loss"]
    assert ref["n"] == 3
    assert ref["mean"] == pytest.approx((loss[30.0] + loss[31.0] + loss[32.0]) / 3)
    assert (ref["min"], ref["max"]) == (pytest.approx(loss[32.0]), pytest.approx(loss[30.0]))
    assert stats["ref"]["seeds"] == [0, 1, 2]
    assert stats["ref"]["compare"]["rd_loss"] is None
    far = stats["far"]
    assert far["compare"]["rd_loss"]["beyond"] is True
    assert far["compare"]["psnr"]["diff"] == pytest.approx(9.0)
    # paired by seed: seeds 0 and 1 only (seed 2 has no run of "far").
    pairs = [loss[40.0] - loss[30.0], loss[40.0] - loss[32.0]]
    assert far["paired"]["rd_loss"]["n"] == 2
    assert far["paired"]["rd_loss"]["mean"] == pytest.approx(sum(pairs) / 2)
    assert far["spread"]["val_loss"]["mean"] == pytest.approx(1.5)
    near = stats["near"]
    assert near["compare"]["rd_loss"]["beyond"] is None  # one seed: cannot tell
    assert near["paired"]["rd_loss"]["mean"] == pytest.approx(loss[31.0] - loss[32.0])
    with pytest.raises(ValueError, match="'nope' is not among"):
        tool.seed_statistics(runs, "nope", lmbda)


def test_same_batch_differences_pair_runs_of_the_same_seed() -> None:
    def run(model: str, seed: int, losses: dict[str, float]) -> dict:
        return {"model": model, "seed": seed, "train": {"losses_end": losses}}

    runs = [
        run("ref", 0, {"100": 1.0, "150": 2.0}),
        run("ref", 1, {"100": 3.0, "150": 3.0}),
        run("variant", 0, {"150": 2.5, "100": 0.5}),  # mean difference 0 on seed 0
        run("variant", 1, {"100": 4.0, "150": 3.0}),  # 0.5 on seed 1
        run("other", 5, {"100": 1.0, "150": 1.0}),  # no run of the reference with seed 5
    ]
    out = tool.same_batch_differences(runs, "ref")
    assert out["other"] is None
    assert (out["ref"]["mean"], out["ref"]["batches"]) == (0.0, 2)
    v = out["variant"]
    assert (v["n"], v["mean"], v["min"], v["max"]) == (2, 0.25, 0.0, 0.5)
    assert v["std"] == pytest.approx(math.sqrt(0.125))
    with pytest.raises(ValueError, match="not among"):
        tool.same_batch_differences(runs, "missing")


def test_relative_rates_compare_within_each_call() -> None:
    def run(model: str, seed: int, call: str, rate: float) -> dict:
        return {"model": model, "seed": seed, "call": call, "train": {"steps_per_second": rate}}

    runs = [
        run("ref", 0, "c1", 10.0),
        run("ref", 1, "c1", 12.0),  # c1's reference: 11
        run("ref", 2, "c2", 4.0),
        run("m", 0, "c1", 5.5),  # 0.5
        run("m", 1, "c2", 3.0),  # 0.75
        run("alone", 0, "c3", 1.0),
    ]
    rates = tool.relative_rates(runs, "ref")
    assert rates["ref"] == pytest.approx(1.0)
    assert rates["m"] == pytest.approx(0.625)
    assert rates["alone"] is None


def test_shared_rates_time_every_run_while_all_ran() -> None:
    # a: 10 steps/s, ends at 100 s; b: 5 steps/s, runs on to 200 s. The window ends at 100 s.
    logs = {
        "a": [(s, s / 10) for s in range(50, 1001, 50)],
        "b": [(s, 2.0 + s / 5) for s in range(50, 1001, 50)],
    }
    rates = tool.shared_rates(logs, warmup_step=100)
    assert rates["a"] == {"steps_per_second": 10.0, "from_s": 10.0, "to_s": 100.0, "steps": 900}
    assert rates["b"]["steps_per_second"] == pytest.approx(5.0)
    assert rates["b"]["to_s"] <= 100.0
    assert rates["b"]["from_s"] == 22.0
    with pytest.raises(ValueError, match="run 'a': expected a row at step 75"):
        tool.shared_rates(logs, warmup_step=75)
    with pytest.raises(ValueError, match="at least one run"):
        tool.shared_rates({})


def test_replace_blocks() -> None:
    text = (
        "intro\n<!-- study_report:a -->\nold a\n<!-- /study_report:a -->\nmiddle\n"
        "<!-- study_report:b -->\n<!-- /study_report:b -->\nend\n"
    )
    new, found = tool.replace_blocks(text, {"a": "new a\n", "b": "B1\nB2", "c": "unused"})
    assert found == ["a", "b"]
    assert new == (
        "intro\n<!-- study_report:a -->\nnew a\n<!-- /study_report:a -->\nmiddle\n"
        "<!-- study_report:b -->\nB1\nB2\n<!-- /study_report:b -->\nend\n"
    )
    assert tool.replace_blocks(new, {"a": "new a", "b": "B1\nB2"}) == (new, ["a", "b"])
    with pytest.raises(ValueError, match="no generated text for block 'b'"):
        tool.replace_blocks(text, {"a": "x"})
    with pytest.raises(ValueError, match=r"\['x'\] opened but not closed"):
        tool.replace_blocks("<!-- study_report:x -->\ntext\n", {"x": "y"})


def _csv(path: Path, rows: list[dict]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _fake_call(root: Path, evals: Path, runs: dict[str, tuple[str, int, float]]) -> None:
    """A device call's artefacts as tools/gpu_train.sh leaves them: gpu/RUN/ logs, weights/RUN.pt
    exports, and the runs' evaluations in ``evals``. ``runs``: name → (model, seed, PSNR)."""
    (root / "gpu").mkdir(parents=True)
    (root / "weights").mkdir()
    (root / "gpu" / "gpu.txt").write_text("Fake GPU, 1.0\ntorch 9.9\nMPS on\n")
    for name, (model, seed, quality) in runs.items():
        directory = root / "gpu" / name
        directory.mkdir()
        config = {k: None for k in tool.RECIPE_KEYS} | {"steps": 1000, "lmbda": 0.01}
        (directory / "config.json").write_text(json.dumps(config | {"model": model, "seed": seed}))
        _csv(
            directory / "train_log.csv",
            [{"step": s, "loss": 1.0 + seed, "seconds": s / 10} for s in range(100, 1001, 100)],
        )
        _csv(directory / "val_log.csv", [{"step": 1000, "loss": 0.9, "bpp": 0.1, "psnr": 27.0}])
        meta = {"step": 1000, "data_manifest_sha256": "abc", "date": "today"}
        torch.save({"meta": meta}, root / "weights" / f"{name}.pt")
        per_image = [
            {
                "image": f"i{k}", "width": 8, "height": 8, "bpp": 0.1, "bpp_file": 0.11,
                "psnr": quality + k, "ms_ssim": 0.9, "encoding_time": 1.0, "decoding_time": 2.0,
            }
            for k in range(2)
        ]  # fmt: skip
        results = {
            "bpp": [0.1], "bpp-file": [0.11], "psnr-rgb": [quality + 0.5], "ms-ssim-rgb": [0.9],
            "encoding_time": [1.0], "decoding_time": [2.0], "bit-exact": [True], "images": [2],
        }  # fmt: skip
        document = {"points": [f"x/{name}.pt"], "results": results, "per_image": [per_image]}
        (evals / f"study-{name}.json").write_text(json.dumps(document))


def test_collect_study_takes_the_seeds_that_exist(tmp_path: Path, monkeypatch) -> None:
    runs, evals = tmp_path / "runs", tmp_path / "evals"
    evals.mkdir(parents=True)
    trained = {"a-0": ("ma", 0, 30.0), "a-1": ("ma", 1, 31.0), "b-0": ("mb", 0, 32.0)}
    _fake_call(runs / "c1", evals, trained)
    failed = runs / "c1" / "gpu" / "failed-start"  # another plan's run that logged no step
    failed.mkdir()
    (failed / "train_log.csv").write_text("step,loss,seconds\n")
    monkeypatch.setattr(
        tool,
        "STUDY_RUNS",
        {"ma": ("c1/a-0", "c1/a-1", "c2/a-2"), "mb": ("c1/b-0", "c2/b-1")},  # c2 is not there
    )
    cost = {"params": 1, "flops_counted": 2, "flops_biwkv4": 0}
    monkeypatch.setattr(tool, "_cost", lambda model: cost)
    study = tool.collect_study(runs, [evals], None, 0)
    assert study["seeds"] == {"ma": [0, 1], "mb": [0]}
    assert (study["reference"], study["lmbda"], study["steps"]) == ("ma", 0.01, 1000)
    assert study["calls"]["c1"]["gpu"] == "Fake GPU"
    assert study["calls"]["c1"]["runs_sharing_gpu"] == 3
    a1 = next(r for r in study["runs"] if r["run"] == "a-1")
    assert a1["val"] == {"step": 1000, "loss": 0.9, "bpp": 0.1, "psnr": 27.0}
    assert a1["train"]["steps_per_second"] == pytest.approx(10.0)
    assert a1["train"]["losses_end"] == {str(s): 2.0 for s in range(500, 1001, 100)}
    assert [r["psnr"] for r in a1["per_image"]] == [31.0, 32.0]
    table = tool.study_table(study | {"cpu_timing": None})
    assert "| ma | 0, 1 |" in table
    assert "| mb | 0 |" in table
    # A run trained another way is refused: the seed must be the only difference.
    config = runs / "c1" / "gpu" / "b-0" / "config.json"
    config.write_text(config.read_text().replace('"steps": 1000', '"steps": 999'))
    with pytest.raises(SystemExit, match="b-0: not the study's recipe"):
        tool.collect_study(runs, [evals], None, 0)


def test_report_and_docs_blocks_regenerate_from_the_committed_summaries(tmp_path: Path) -> None:
    results = ROOT / "docs" / "results"
    study = json.loads((results / tool.STUDY_JSON).read_text())
    text = tool.report(results, tmp_path / "rd.png")
    assert (tmp_path / "rd.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for r in study["runs"]:
        expected = tool.image_losses(r["per_image"], study["lmbda"])
        row = next(line for line in text.splitlines() if f"`{r['run']}`" in line)
        assert f"| {sum(expected.values()) / len(expected):.4f} |" in row
    assert "| `hpcm-small` | 1 | 0.0035 |" in text
    # The docs' generated blocks are what the summaries give (run the tool with --write-docs).
    generated = tool.blocks(results)
    for doc in tool.DOCS:
        current = doc.read_text()
        new, found = tool.replace_blocks(current, generated)
        assert found, f"{doc} has no generated block"
        assert new == current, f"{doc.name} is out of date: tools/study_report.py --write-docs"


def test_shipped_points_are_found_by_label_or_by_their_weights() -> None:
    from hpcm_models import pretrained

    entries = pretrained.shipped_weights()
    assert tool._shipped_entry("hpcm-small q2", ROOT, entries).quality == 2
    # A file holding shipped weights is recognized by its weights hash, wherever it lies.
    weights = Path(pretrained.__file__).parent / "weights" / "hpcm-small-q3.pt"
    assert tool._shipped_entry(str(weights), ROOT, entries).quality == 3
    with pytest.raises(SystemExit, match=r"no .*nothing\.pt"):
        tool._shipped_entry("nothing.pt", ROOT, entries)
    # An evaluation records the weights hash of each point: one of weights that no longer ship
    # (a label names the current ones) is refused, the current ones' accepted.
    q2 = next(e for e in entries if e.label == "hpcm-small q2")
    assert tool._shipped_entry("hpcm-small q2", ROOT, entries, q2.weights_hash) == q2
    with pytest.raises(SystemExit, match="evaluate the shipped weights again"):
        tool._shipped_entry("hpcm-small q2", ROOT, entries, "0" * 32)


def test_steps_of_shipped_weights_count_what_they_continued_from() -> None:
    assert tool._steps({"step": 24000, "total_steps": 30000}) == 30000
    # Continued from weights that do not say their steps (e.g. the authors' checkpoints).
    assert tool._steps({"step": 24000, "total_steps": None}) == "24000 + ?"
    assert tool._steps({"step": 6000}) == 6000  # summaries from before total_steps
    assert tool._steps({}) == "?"
