"""Shipped weights: files that carry their rANS tables, the table of what ships, loading by name
(``get_model(..., pretrained=True)``), integrity checks and clear errors.

Every test uses weights made here (micro models, ``tests/shipped.py``) in a folder that
``HPCM_WEIGHTS_DIR`` names, except the checks of the package's own table at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from shipped import LMBDAS, MICRO, make_weights_dir, training_checkpoint

import hpcm_models
from hpcm_models import pretrained
from hpcm_models.checkpoints import TABLES_KEY, load_checkpoint, random_model, read_checkpoint
from hpcm_models.cli import main as cli_main
from hpcm_models.codec import ImageCodec
from hpcm_models.container import read_container
from hpcm_models.entropy import CODING_BUFFERS
from hpcm_models.errors import CheckpointError, PretrainedWeightsError, WeightsIntegrityError
from hpcm_models.hashes import config_hash, weights_hash

DATA = Path(hpcm_models.__file__).parent / "data"


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_weights_dir(tmp_path_factory.mktemp("zoo"))


@pytest.fixture
def shipped(weights: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(pretrained.WEIGHTS_ENV, str(weights))
    return weights


@pytest.fixture
def copy(weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private copy of the weights folder (for tests that damage it), named by the env."""
    target = tmp_path / "weights"
    shutil.copytree(weights, target)
    monkeypatch.setenv(pretrained.WEIGHTS_ENV, str(target))
    return target


def _tables(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.entropy_estimation.tables().items()}


# ---------------------------------------------------------------------------- packed tables


def test_packed_tables_round_trip() -> None:
    model = random_model("hpcm-small", seed=3, **MICRO)
    packed = model.entropy_estimation.packed_tables()
    lengths = model.entropy_estimation.cdf_length_y
    assert packed["quantized_cdf_y"].shape == (int(lengths.sum()),)
    assert packed["quantized_cdf_y"].numel() < model.entropy_estimation.quantized_cdf_y.numel()
    other = random_model("hpcm-small", seed=4, **MICRO)
    with torch.no_grad():
        other.scales_hyper.mul_(3)
    other.update(force=True)
    assert not torch.equal(other.quantized_cdf_z, model.quantized_cdf_z)
    other.entropy_estimation.load_packed_tables(packed, channels=other.N)
    for name, value in _tables(model).items():
        assert torch.equal(getattr(other, name), value), name
        assert getattr(other, name).dtype == value.dtype, name


def _corrupt(packed: dict[str, torch.Tensor], how: str) -> dict[str, torch.Tensor]:
    bad = {k: v.clone() for k, v in packed.items()}
    if how == "missing":
        del bad["offset_y"]
    elif how == "rows":
        bad["cdf_length_z"], bad["offset_z"] = bad["cdf_length_z"][:-1], bad["offset_z"][:-1]
        bad["quantized_cdf_z"] = bad["quantized_cdf_z"][: int(bad["cdf_length_z"].sum())]
    elif how == "offsets":
        bad["offset_y"][3] += 1
    elif how == "cdf":
        bad["quantized_cdf_y"][2] = bad["quantized_cdf_y"][1]  # a zero frequency in row 0
    elif how == "scales":
        bad["scale_table"] = bad["scale_table"].flip(0)
    elif how == "length":
        bad["quantized_cdf_y"] = bad["quantized_cdf_y"][:-1]
    elif how == "dtype":
        bad["quantized_cdf_z"] = bad["quantized_cdf_z"].float()
    return bad


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("missing", "expected the coding tables"),
        ("rows", "expected 8 rows in the z tables"),
        ("offsets", "must be symmetric"),
        ("cdf", "row 0 of y is malformed"),
        ("scales", "not an increasing table"),
        ("length", "its rows need"),
        ("dtype", "expected 1-D integer tables for z"),
    ],
)
def test_bad_packed_tables_are_refused_and_nothing_is_installed(how: str, message: str) -> None:
    source = random_model("hpcm-small", seed=3, **MICRO)
    model = random_model("hpcm-small", seed=4, **MICRO)
    before = _tables(model)
    bad = _corrupt(source.entropy_estimation.packed_tables(), how)
    with pytest.raises(CheckpointError, match=message):
        model.entropy_estimation.load_packed_tables(bad, channels=model.N)
    for name, value in before.items():
        assert torch.equal(getattr(model, name), value), name


# ---------------------------------------------------------------------------- weights files


def test_weights_file_layout(weights: Path) -> None:
    obj = read_checkpoint(weights / "hpcm-small-q1.pt")
    assert (obj["format"], obj["version"]) == (pretrained.WEIGHTS_FORMAT, 1)
    assert (obj["model_name"], obj["model_kwargs"]) == ("hpcm-small", MICRO)
    assert not set(CODING_BUFFERS) & set(obj["model"])
    floats = [v for v in obj["model"].values() if v.is_floating_point()]
    assert floats
    small = pretrained.FP32_MAX_NUMEL
    assert all(v.dtype == torch.float16 for v in floats if v.numel() > small)
    assert all(v.dtype == torch.float32 for v in floats if v.numel() <= small)
    assert set(obj[TABLES_KEY]) == set(CODING_BUFFERS)
    assert obj["meta"]["lmbda"] == LMBDAS[1]
    assert obj["meta"]["step"] == 100
    assert obj["meta"]["coding_tables"]["torch"] == str(torch.__version__)
    # The model those fp16 weights build, whose hash .hpcm files record.
    model = load_checkpoint(weights / "hpcm-small-q1.pt")
    assert obj["weights_hash"] == weights_hash(model).hex()


def test_loading_keeps_the_files_tables(weights: Path, tmp_path: Path) -> None:
    """A weights file's own tables win over rebuilt ones (tables="auto" and "file"); "rebuild"
    recomputes them. Shown with a file whose tables differ from what the weights give."""
    obj = read_checkpoint(weights / "hpcm-small-q1.pt")
    tables = obj[TABLES_KEY]
    first = int(tables["cdf_length_y"][0])
    # Still a valid CDF: one unit of frequency moved from the first symbol to the second.
    tables["quantized_cdf_y"][1] -= 1
    assert int(tables["quantized_cdf_y"][first - 1]) == 1 << 16
    torch.save(obj, tmp_path / "edited.pt")
    rebuilt = load_checkpoint(tmp_path / "edited.pt", tables="rebuild")
    for mode in ("auto", "file"):
        kept = load_checkpoint(tmp_path / "edited.pt", tables=mode)
        assert int(kept.quantized_cdf_y[0, 1]) == int(rebuilt.quantized_cdf_y[0, 1]) - 1
        assert not torch.equal(kept.quantized_cdf_y, rebuilt.quantized_cdf_y)
        assert torch.equal(kept.quantized_cdf_z, rebuilt.quantized_cdf_z)
        assert config_hash(kept, "hpcm-small") != config_hash(rebuilt, "hpcm-small")


def test_tables_file_needs_tables(tmp_path: Path) -> None:
    source = training_checkpoint(tmp_path / "latest.pt", 1)
    assert load_checkpoint(source).quantized_cdf_y.numel() > 0  # "auto": rebuilt
    with pytest.raises(CheckpointError, match="carries no coding tables"):
        load_checkpoint(source, tables="file")
    with pytest.raises(ValueError, match="expected tables in"):
        load_checkpoint(source, tables="cached")


def test_damaged_tables_in_a_file_are_named(weights: Path, tmp_path: Path) -> None:
    obj = read_checkpoint(weights / "hpcm-small-q2.pt")
    obj[TABLES_KEY]["offset_z"][0] -= 1
    torch.save(obj, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=r"bad\.pt.*offset_z does not fit"):
        load_checkpoint(tmp_path / "bad.pt")


def test_make_weights_file_from_an_fp16_export(tmp_path: Path) -> None:
    """The input ``tools/train_codecs.py`` exports (fp16, a "meta" with the run and a
    TorchVersion, no tables) gives the same model as the training checkpoint it came from."""
    latest = training_checkpoint(tmp_path / "latest.pt", 2)
    ckpt = torch.load(latest, weights_only=True)
    export = {
        "model": pretrained.fp16_state_dict(ckpt["model"]),
        "model_name": "hpcm-small",
        "model_kwargs": MICRO,
        "meta": {"run": {"lmbda": 0.0067}, "torch": torch.__version__, "step": 100},
    }
    torch.save(export, tmp_path / "export.pt")
    a = pretrained.make_weights_file(latest, tmp_path / "a.pt", quality=2)
    b = pretrained.make_weights_file(tmp_path / "export.pt", tmp_path / "b.pt", quality=2)
    assert a.weights_hash == b.weights_hash
    # An export of the first exporter, every tensor in fp16: the likelihood bound it flushed to 0
    # is put back from the model's constructor (and said so).
    export["model"] = {k: v.half() for k, v in ckpt["model"].items() if k not in CODING_BUFFERS}
    torch.save(export, tmp_path / "old.pt")
    pretrained.make_weights_file(tmp_path / "old.pt", tmp_path / "c.pt", quality=2)
    assert _likelihood_bounds(load_checkpoint(tmp_path / "c.pt")) == {
        "entropy_estimation.likelihood_lower_bound.bound": pytest.approx(1e-9, rel=1e-6)
    }
    meta = read_checkpoint(tmp_path / "c.pt")["meta"]
    assert meta["restored_bounds"] == ["entropy_estimation.likelihood_lower_bound.bound"]
    assert "restored_bounds" not in read_checkpoint(tmp_path / "b.pt")["meta"]
    assert (a.lmbda, b.lmbda) == (0.0067, 0.0067)
    assert b.trained["step"] == 100
    # Making a file from a weights file gives the same weights again, and keeps its tables
    # (edited here, to tell them from rebuilt ones).
    obj = read_checkpoint(tmp_path / "b.pt")
    obj[TABLES_KEY]["quantized_cdf_y"][1] -= 1
    torch.save(obj, tmp_path / "b.pt")
    c = pretrained.make_weights_file(tmp_path / "b.pt", tmp_path / "c.pt", quality=3, lmbda=0.01)
    assert c.weights_hash == b.weights_hash
    again = read_checkpoint(tmp_path / "c.pt")
    for name, table in obj[TABLES_KEY].items():
        assert torch.equal(again[TABLES_KEY][name], table), name
    assert again["meta"]["coding_tables"] == obj["meta"]["coding_tables"]
    assert (again["meta"]["quality"], again["meta"]["lmbda"]) == (3, 0.01)


def test_make_weights_file_errors(tmp_path: Path) -> None:
    net = random_model("hpcm-small", seed=0, **MICRO)
    torch.save({"model": net.state_dict(), "model_name": "hpcm-small", "model_kwargs": MICRO},
               tmp_path / "no_lmbda.pt")  # fmt: skip
    with pytest.raises(ValueError, match="does not say its λ"):
        pretrained.make_weights_file(tmp_path / "no_lmbda.pt", tmp_path / "o.pt", quality=1)
    with pytest.raises(ValueError, match="quality"):
        pretrained.make_weights_file(tmp_path / "no_lmbda.pt", tmp_path / "o.pt", quality=0)
    state = net.state_dict()
    big = next(
        k
        for k, v in state.items()
        if v.is_floating_point()
        and v.numel() > pretrained.FP32_MAX_NUMEL
        and k not in CODING_BUFFERS
    )
    state[big] = state[big] + 1e6
    torch.save({"model": state, "model_name": "hpcm-small", "model_kwargs": MICRO},
               tmp_path / "big.pt")  # fmt: skip
    with pytest.raises(CheckpointError, match=f"{big} is not finite in fp16"):
        pretrained.make_weights_file(tmp_path / "big.pt", tmp_path / "o.pt", quality=1, lmbda=0.1)
    with pytest.raises(CheckpointError, match="holds a 'hpcm-small' model, not 'hpcm-base'"):
        pretrained.make_weights_file(
            tmp_path / "no_lmbda.pt", tmp_path / "o.pt", quality=1, lmbda=0.1,
            model_name="hpcm-base",
        )  # fmt: skip
    assert not (tmp_path / "o.pt").exists()


@pytest.mark.slow
def test_carried_tables_are_the_same_on_another_cpu_path(weights: Path) -> None:
    """Under ATEN_CPU_CAPABILITY=default (no vector code), a weights file gives the same config
    hash — architecture and rANS tables, what a .hpcm header must match — as here. Tables rebuilt
    from the weights need not: on AVX2 machines they differ (docs/models.md)."""
    script = (
        "import sys\n"
        "from hpcm_models.checkpoints import load_checkpoint\n"
        "from hpcm_models.hashes import config_hash\n"
        "print(config_hash(load_checkpoint(sys.argv[1]), 'hpcm-small').hex())\n"
    )
    path = weights / "hpcm-small-q3.pt"
    env = dict(os.environ, ATEN_CPU_CAPABILITY="default")
    env["PYTHONWARNINGS"] = "ignore"
    result = subprocess.run(
        [sys.executable, "-c", script, str(path)], capture_output=True, text=True, env=env,
        check=True,
    )  # fmt: skip
    assert result.stdout.split() == [config_hash(load_checkpoint(path), "hpcm-small").hex()]


# ---------------------------------------------------------------------------- the table


def test_index_lists_what_ships(shipped: Path) -> None:
    entries = pretrained.shipped_weights()
    assert [(e.model, e.quality) for e in entries] == [("hpcm-small", q) for q in (1, 2, 3)]
    assert [e.lmbda for e in entries] == [LMBDAS[q] for q in (1, 2, 3)]
    for entry in entries:
        path = shipped / entry.file
        assert entry.bytes == path.stat().st_size
        assert pretrained.weights_path(entry) == path
        assert entry.trained == {"step": 100, "steps": 100, "batch_size": 2, "seed": entry.quality}
    assert pretrained.pretrained_models() == ["hpcm-small"]
    assert pretrained.qualities("hpcm-small") == (1, 2, 3)
    assert pretrained.qualities("hpcm-base") == ()
    assert pretrained.default_quality("hpcm-small") == 2
    assert hpcm_models.pretrained_models() == ["hpcm-small"]
    document = json.loads((shipped / pretrained.INDEX_NAME).read_text())
    assert document["weights"][0] == entries[0].to_json()


def test_get_model_pretrained(shipped: Path) -> None:
    entries = {e.quality: e for e in pretrained.shipped_weights()}
    for quality in (1, 3):
        model = hpcm_models.get_model("hpcm-small", quality=quality, pretrained=True)
        assert type(model) is hpcm_models.presets.HPCMSmall
        assert not model.training
        assert (model.M, model.N) == (16, 8)
        assert weights_hash(model).hex() == entries[quality].weights_hash
    default = hpcm_models.get_model("hpcm-small", pretrained=True)
    assert weights_hash(default).hex() == entries[2].weights_hash
    # Arguments equal to the shipped model's are fine.
    same = hpcm_models.get_model("hpcm-small", quality=1, pretrained=True, M=16, N=8)
    assert weights_hash(same).hex() == entries[1].weights_hash
    # It codes: a round trip through a .hpcm file gives the image's size back.
    with Image.open(DATA / "rocket.png") as image:
        picture = image.convert("RGB").crop((0, 0, 100, 60))
    data = ImageCodec(default).encode(picture)
    header, _ = read_container(data)
    assert (header.model_id, header.weights_hash.hex()) == ("hpcm-small", entries[2].weights_hash)
    assert pretrained.weights_for_file("hpcm-small", header.weights_hash) == entries[2]
    decoder = hpcm_models.get_model("hpcm-small", quality=2, pretrained=True)
    assert ImageCodec(decoder).decode(data).size == (100, 60)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"quality": 4}, PretrainedWeightsError, r"no shipped quality 4; available: 1, 2, 3"),
        ({"quality": 2.0}, PretrainedWeightsError, r"no shipped quality 2\.0"),
        ({"M": 32}, PretrainedWeightsError, r"conflicting arguments: M=32 \(the weights have 16"),
        ({"config": hpcm_models.HPCM_BASE}, PretrainedWeightsError, r"config=HPCMConfig"),
        ({"use_checkpoint": True}, PretrainedWeightsError, "not a setting of hpcm-small"),
    ],
)
def test_get_model_pretrained_errors(shipped: Path, kwargs: dict, error: type, message: str):
    with pytest.raises(error, match=message):
        hpcm_models.get_model("hpcm-small", pretrained=True, **kwargs)


def test_model_without_weights_and_unknown_names(shipped: Path, tmp_path: Path, monkeypatch):
    with pytest.raises(
        PretrainedWeightsError,
        match=r"no shipped weights for 'hpcm-base'; shipped: hpcm-small \(qualities 1, 2, 3\)",
    ):
        hpcm_models.get_model("hpcm-base", pretrained=True)
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        hpcm_models.get_model("nope", pretrained=True)
    with pytest.raises(ValueError, match="pass pretrained=True"):
        hpcm_models.get_model("hpcm-small", quality=2)
    with pytest.raises(PretrainedWeightsError, match="which are not shipped"):
        pretrained.weights_for_file("hpcm-small", bytes(16))
    (tmp_path / "index.json").write_text(
        json.dumps({"format": "hpcm-weights-index", "version": 1, "weights": []})
    )
    monkeypatch.setenv(pretrained.WEIGHTS_ENV, str(tmp_path))
    with pytest.raises(PretrainedWeightsError, match="ships no weights yet"):
        hpcm_models.get_model("hpcm-small", pretrained=True)


def test_damaged_files_are_refused(copy: Path) -> None:
    entry = pretrained.find_weights("hpcm-small", 1)
    path = copy / entry.file
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(WeightsIntegrityError, match=r"SHA-256 of .* the table says"):
        hpcm_models.get_model("hpcm-small", quality=1, pretrained=True)
    path.write_bytes(bytes(data[:-1]))
    with pytest.raises(WeightsIntegrityError, match=r"has .* bytes, the table says"):
        pretrained.load_pretrained("hpcm-small", 1)
    path.unlink()
    with pytest.raises(WeightsIntegrityError, match="weights file of hpcm-small q1 is missing"):
        pretrained.load_pretrained("hpcm-small", 1)
    # The other qualities still load.
    assert pretrained.load_pretrained("hpcm-small", 2).N == 8


def test_table_that_does_not_fit_its_file_is_refused(copy: Path) -> None:
    """A table whose weights hash is not the file's (e.g. a file replaced along with its SHA-256
    but not its row) is caught by the weights hash."""
    index = json.loads((copy / "index.json").read_text())
    q1, q2 = index["weights"][0], index["weights"][1]
    q1["weights_hash"] = q2["weights_hash"]
    (copy / "index.json").write_text(json.dumps(index))
    with pytest.raises(WeightsIntegrityError, match=r"builds weights .* the table says"):
        pretrained.load_pretrained("hpcm-small", 1)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.update(format="other"), "is not a table of shipped weights"),
        (lambda d: d["weights"][0].pop("sha256"), "expected the fields"),
        (lambda d: d["weights"][0].update(file="../x.pt"), "bad field.*file='../x.pt'"),
        (lambda d: d["weights"][0].update(quality=0), "bad field.*quality=0"),
        (lambda d: d["weights"][1].update(quality=1), r"lists \[\('hpcm-small', 1\)\] more"),
    ],
)
def test_malformed_index(copy: Path, edit, message: str) -> None:
    document = json.loads((copy / "index.json").read_text())
    edit(document)
    (copy / "index.json").write_text(json.dumps(document))
    with pytest.raises(WeightsIntegrityError, match=message):
        pretrained.shipped_weights()


def test_add_to_index_replaces_the_same_quality(copy: Path, tmp_path: Path) -> None:
    source = training_checkpoint(tmp_path / "new.pt", 3)
    torch.manual_seed(0)
    net = random_model("hpcm-small", seed=9, **MICRO)
    ckpt = torch.load(source, weights_only=True)
    ckpt["model"] = net.state_dict()
    torch.save(ckpt, source)
    entry = pretrained.make_weights_file(source, copy / "hpcm-small-q3.pt", quality=3)
    table = pretrained.add_to_index(entry, copy)
    assert [e.quality for e in table] == [1, 2, 3]
    assert pretrained.find_weights("hpcm-small", 3).weights_hash == entry.weights_hash
    assert weights_hash(pretrained.load_pretrained("hpcm-small", 3)).hex() == entry.weights_hash
    stale = pretrained.find_weights("hpcm-small", 1)
    with pytest.raises(WeightsIntegrityError, match="is not the file of hpcm-small q1"):
        pretrained.add_to_index(
            pretrained.ShippedWeights(**{**stale.to_json(), "sha256": "0" * 64}), copy
        )


def test_replaced_weights_are_retired_and_named(copy: Path, tmp_path: Path) -> None:
    """Replacing a row keeps the old weights under "retired": a file coded with them is refused
    with a message that names them, when they stopped shipping and their file's SHA-256."""
    old = pretrained.find_weights("hpcm-small", 2)
    old_file = tmp_path / "old-q2.pt"
    shutil.copy(copy / old.file, old_file)
    photo = DATA / "rocket.png"
    coded = tmp_path / "photo.hpcm"
    assert cli_main(["compress", str(photo), str(coded), "--quality", "2"]) == 0
    assert pretrained.read_retired(copy) == ()

    # Re-adding the same weights retires nothing; other weights in the row retire the old ones.
    assert pretrained.add_to_index(old, copy)
    assert pretrained.read_retired(copy) == ()
    source = training_checkpoint(tmp_path / "new.pt", 2)
    ckpt = torch.load(source, weights_only=True)
    ckpt["model"] = random_model("hpcm-small", seed=11, **MICRO).state_dict()
    torch.save(ckpt, source)
    new = pretrained.make_weights_file(source, copy / "hpcm-small-q2.pt", quality=2)
    pretrained.add_to_index(new, copy)
    (retired,) = pretrained.read_retired(copy)
    assert (retired.label, retired.weights_hash, retired.sha256, retired.replaced_by) == (
        "hpcm-small q2",
        old.weights_hash,
        old.sha256,
        new.weights_hash,
    )
    header, _ = read_container(coded.read_bytes())
    with pytest.raises(PretrainedWeightsError, match=rf"q2 weights {old.weights_hash}, which "
                       rf"shipped until {retired.retired}.*SHA-256 {old.sha256}"):  # fmt: skip
        pretrained.weights_for_file("hpcm-small", header.weights_hash)
    # The retired weights still decode it, given as a checkpoint.
    out = tmp_path / "out.png"
    assert cli_main(["decompress", str(coded), str(out), "--checkpoint", str(old_file)]) == 0
    # A later replacement keeps the record of the first.
    shutil.copy(old_file, copy / old.file)
    pretrained.add_to_index(old, copy)
    assert [r.weights_hash for r in pretrained.read_retired(copy)] == [
        old.weights_hash, new.weights_hash
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda r: r.update(retired="07/12/2026"), "bad field.*retired='07/12/2026'"),
        (lambda r: r.update(weights_hash="xyz"), "bad field.*weights_hash='xyz'"),
        (lambda r: r.pop("replaced_by"), "retired entry 0: expected the fields"),
    ],
)
def test_malformed_retired_entries(copy: Path, edit, message: str) -> None:
    document = json.loads((copy / "index.json").read_text())
    entry = document["weights"][0]
    retired = {
        "model": entry["model"], "quality": entry["quality"], "weights_hash": "0" * 32,
        "sha256": "1" * 64, "retired": "2026-12-07", "replaced_by": entry["weights_hash"],
    }  # fmt: skip
    edit(retired)
    document["retired"] = [retired]
    (copy / "index.json").write_text(json.dumps(document))
    with pytest.raises(WeightsIntegrityError, match=message):
        pretrained.read_retired()
    document["retired"] = "not a list"
    (copy / "index.json").write_text(json.dumps(document))
    with pytest.raises(WeightsIntegrityError, match="optionally 'retired'"):
        pretrained.shipped_weights()


# ---------------------------------------------------------------------------- the package's


def _likelihood_bounds(model: torch.nn.Module) -> dict[str, float]:
    return {k: float(v) for k, v in model.state_dict().items() if "likelihood_lower_bound" in k}


def test_weights_files_keep_the_likelihood_bound(weights: Path) -> None:
    """The likelihood bound (1e-9) is 0 in fp16: a weights file keeps it in fp32, so the loaded
    model's rate estimate stays finite where a symbol is far out in a tail."""
    fresh = _likelihood_bounds(random_model("hpcm-small", seed=0, **MICRO))
    model = load_checkpoint(weights / "hpcm-small-q1.pt")
    assert fresh
    assert _likelihood_bounds(model) == fresh
    assert all(value == pytest.approx(1e-9, rel=1e-6) for value in fresh.values())
    p = model.entropy_estimation(torch.tensor([1000.0]), torch.tensor([0.5]))  # far in a tail
    assert float(p) == pytest.approx(1e-9, rel=1e-6)


def test_the_package_files_keep_the_likelihood_bound() -> None:
    """The same for the weights that ship (a file made by an exporter that wrote every tensor in
    fp16 would give an infinite rate estimate on some photos)."""
    for entry in pretrained.read_index(Path(hpcm_models.__file__).parent / "weights"):
        model = hpcm_models.get_model(entry.model, quality=entry.quality, pretrained=True)
        bounds = _likelihood_bounds(model)
        assert bounds, entry.file
        assert all(v == pytest.approx(1e-9, rel=1e-6) for v in bounds.values()), entry.file


def test_the_package_table() -> None:
    """The weights that ship: a valid table, every file present with its size and SHA-256, and
    20 MiB at most in all (the real files are added by tools/ship_weights.py)."""
    directory = Path(hpcm_models.__file__).parent / "weights"
    entries = pretrained.read_index(directory)
    assert sum(e.bytes for e in entries) <= pretrained.MAX_SHIPPED_BYTES
    assert {p.name for p in directory.glob("*.pt")} == {e.file for e in entries}
    for entry in entries:
        assert entry.model in hpcm_models.available_models()
        assert entry.bytes == (directory / entry.file).stat().st_size
        assert pretrained._sha256(directory / entry.file) == entry.sha256


def test_three_small_weights_files_fit_the_budget(tmp_path: Path) -> None:
    """A full-size hpcm-small made into a weights file (fp16 and its tables): three of them, the
    three shipped qualities, stay within MAX_SHIPPED_BYTES."""
    net = random_model("hpcm-small", seed=0)
    torch.save({"model": net.state_dict(), "model_name": "hpcm-small", "model_kwargs": {}},
               tmp_path / "latest.pt")  # fmt: skip
    entry = pretrained.make_weights_file(
        tmp_path / "latest.pt", tmp_path / "q.pt", quality=2, lmbda=0.0067
    )
    assert 3 * entry.bytes <= pretrained.MAX_SHIPPED_BYTES
