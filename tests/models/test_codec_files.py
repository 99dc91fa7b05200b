"""The codec's file layer: checkpoint formats, random weights, devices, and atomic file writing
(nothing is written, and nothing is left behind, when anything fails)."""

from __future__ import annotations

import math
import pickle
from importlib.resources import files

import numpy as np
import pytest
import torch
from PIL import Image

import hpcm_models.image_io as codec_module
from hpcm_models import HPCM_MICRO, get_model
from hpcm_models.checkpoints import load_checkpoint, model_kwargs_to_json, random_model
from hpcm_models.codec import ImageCodec
from hpcm_models.codec_files import compress_file, decompress_file
from hpcm_models.devices import resolve_device
from hpcm_models.entropy import CODING_BUFFERS
from hpcm_models.errors import (
    CheckpointError,
    CorruptBitstreamError,
    DeviceError,
    FileAccessError,
    ImageError,
    WeightsMismatchError,
)

MICRO = HPCM_MICRO  # the full coding schedule with the narrowest transforms
KWARGS_JSON = model_kwargs_to_json({"M": 16, "N": 8, "config": MICRO})


# One intra-op thread (tests/conftest.py): the codec codes with one anyway; the CPU is shared.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model(parity_weights):
    model = parity_weights(get_model("hpcm-base", M=16, N=8, config=MICRO)).eval()
    with torch.no_grad():  # latents of a few units, as from a trained model
        model.g_a.branch[-1].weight.mul_(10)
        for prior in (model.y_spatial_prior_s1_s2, model.y_spatial_prior_s3):
            prior.branch_2[-1].weight.mul_(0.3)
            prior.branch_2[-1].bias[:16].copy_(torch.exp(torch.linspace(0, math.log(30), 16)))
    model.update()
    return model


@pytest.fixture(scope="module")
def codec(model) -> ImageCodec:
    return ImageCodec(model)


@pytest.fixture(scope="module")
def image() -> Image.Image:
    with Image.open(files("hpcm_models") / "data" / "chelsea.png") as im:
        return im.convert("RGB").resize((97, 61))


@pytest.fixture(scope="module")
def encoded(codec, image) -> bytes:
    return codec.encode(image)


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


# ---------------------------------------------------------------- checkpoints


@pytest.mark.parametrize(
    "layout",
    ["training", "raw", "compressai", "data-parallel", "no-tables", "empty-tables"],
)
def test_checkpoint_layouts_load_and_decode(tmp_path, model, codec, encoded, layout) -> None:
    state = _state(model)
    name, kwargs = "hpcm-base", {"config": KWARGS_JSON["config"]}
    if layout == "training":
        obj = {
            "format": "hpcm-train-checkpoint",
            "model": state,
            "model_name": "hpcm-base",
            "model_kwargs": KWARGS_JSON,
            "optimizer": {"state": {}, "param_groups": []},
            "step": 7,
        }
        name, kwargs = None, None
    elif layout == "raw":
        obj = state
    elif layout == "compressai":
        obj = {"epoch": 3, "state_dict": state, "loss": 1.5}
    elif layout == "data-parallel":
        obj = {f"module.{k}": v for k, v in state.items()}
    elif layout == "no-tables":
        obj = {k: v for k, v in state.items() if k not in CODING_BUFFERS}
    else:  # the authors' checkpoints: tables present but empty
        obj = {k: torch.empty(0) if k in CODING_BUFFERS else v for k, v in state.items()}
    torch.save(obj, tmp_path / "ckpt.pt")
    loaded = load_checkpoint(tmp_path / "ckpt.pt", name, model_kwargs=kwargs)
    assert not loaded.training
    assert (loaded.M, loaded.N, loaded.config) == (16, 8, MICRO)
    other = ImageCodec(loaded)
    assert other.weights_hash == codec.weights_hash
    assert other.config_hash == codec.config_hash  # the rebuilt tables equal the original ones
    assert other.decode(encoded).tobytes() == codec.decode(encoded).tobytes()


def test_checkpoint_with_a_custom_scale_table_keeps_it(tmp_path, model) -> None:
    state = _state(model)
    custom = get_model("hpcm-base", M=16, N=8, config=MICRO)
    custom.load_state_dict(state)
    custom.update(torch.exp(torch.linspace(-2, 3, 30)), force=True)
    torch.save(custom.state_dict(), tmp_path / "ckpt.pt")
    loaded = load_checkpoint(tmp_path / "ckpt.pt", "hpcm-base", model_kwargs=KWARGS_JSON)
    assert loaded.scale_table.numel() == 30
    assert ImageCodec(loaded).config_hash == ImageCodec(custom).config_hash


class _Evil:
    def __reduce__(self):
        return (print, ("arbitrary code",))


def test_checkpoint_errors_are_one_line_and_name_the_problem(tmp_path, model) -> None:
    state = _state(model)

    def load(obj, *args, **kwargs):
        path = tmp_path / "ckpt.pt"
        if isinstance(obj, bytes):
            path.write_bytes(obj)
        else:
            torch.save(obj, path)
        with pytest.raises(CheckpointError) as err:
            load_checkpoint(path, *args, **kwargs)
        assert "\n" not in str(err.value)
        return str(err.value)

    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt", "hpcm-base")
    assert "cannot read checkpoint" in load(b"garbage", "hpcm-base")
    assert "cannot read checkpoint" in load(pickle.dumps({"x": _Evil()}, protocol=2), "hpcm-base")
    assert "holds no model state dict" in load(torch.zeros(3), "hpcm-base")
    assert "does not say which model" in load(state)
    assert "unknown model 'hpcm'" in load(state, "hpcm")
    training = {"model": state, "model_name": "hpcm-base", "model_kwargs": KWARGS_JSON}
    assert "holds a 'hpcm-base' model, not 'hpcm-large'" in load(training, "hpcm-large")
    assert "differ from the given" in load(training, model_kwargs={"M": 16})
    message = load(state, "hpcm-base", model_kwargs={"M": 32, "config": KWARGS_JSON["config"]})
    assert "M=32, the weights have M=16" in message
    broken = {k: v for k, v in state.items() if k != "attn_s2.conv_q.weight"}
    broken["extra.weight"] = torch.zeros(1)
    message = load(broken, "hpcm-base", model_kwargs={"config": KWARGS_JSON["config"]})
    assert "missing keys [attn_s2.conv_q.weight]" in message
    assert "unexpected keys [extra.weight]" in message
    message = load(state, "hpcm-base")  # the default (Base) configuration: other layers
    assert "does not match HPCMBase(M=16, N=8)" in message
    assert "bad model kwargs" in load(state, "hpcm-base", model_kwargs={"config": {"depth": 3}})
    bad_table = dict(state, scale_table=torch.tensor([2.0, 1.0]))
    assert "bad scale table" in load(bad_table, "hpcm-base", model_kwargs=KWARGS_JSON)


def test_random_model_is_reproducible_and_leaves_the_rng_alone() -> None:
    rng = torch.get_rng_state()
    a = random_model("hpcm-base", seed=3, **KWARGS_JSON)
    assert torch.equal(torch.get_rng_state(), rng)
    b = random_model("hpcm-base", seed=3, **KWARGS_JSON)
    c = random_model("hpcm-base", seed=4, **KWARGS_JSON)
    assert ImageCodec(a).weights_hash == ImageCodec(b).weights_hash
    assert ImageCodec(a).weights_hash != ImageCodec(c).weights_hash
    assert a.quantized_cdf_y.numel() > 0
    assert not a.training


def test_resolve_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(DeviceError, match="expected cpu, cuda or cuda:N"):
        resolve_device("tpu")
    with pytest.raises(DeviceError, match="unsupported device 'meta'"):
        resolve_device("meta")
    if torch.cuda.is_available():
        assert resolve_device("cuda").type == "cuda"
        with pytest.raises(DeviceError, match="GPU"):
            resolve_device(f"cuda:{torch.cuda.device_count()}")
    else:
        with pytest.raises(DeviceError, match="no CUDA GPU is available"):
            resolve_device("cuda")


# ---------------------------------------------------------------- files


def _listing(path) -> list[str]:
    return sorted(p.name for p in path.iterdir())


def test_compress_and_decompress_files(tmp_path, codec, image) -> None:
    image.save(tmp_path / "in.png")
    report = compress_file(tmp_path / "in.png", tmp_path / "a.hpcm", codec.model)
    assert report.num_bytes == (tmp_path / "a.hpcm").stat().st_size
    assert report.bpp == pytest.approx(8 * report.num_bytes / (97 * 61))
    assert "97x61 RGB" in report.summary()
    assert "bpp (hpcm-base on cpu, encode" in report.summary()
    headers = []

    def loader(header):
        headers.append(header)
        return codec.model

    back = decompress_file(tmp_path / "a.hpcm", tmp_path / "out.png", loader)
    assert headers[0].model_id == "hpcm-base"
    assert back.summary().startswith(f"{tmp_path / 'a.hpcm'} -> {tmp_path / 'out.png'}: 97x61 RGB")
    with Image.open(tmp_path / "out.png") as out:
        assert out.tobytes() == codec.decode((tmp_path / "a.hpcm").read_bytes()).tobytes()
    for ext in (".bmp", ".tiff", ".ppm", ".webp"):
        decompress_file(tmp_path / "a.hpcm", tmp_path / f"out{ext}", codec.model)
        with Image.open(tmp_path / f"out{ext}") as out:  # all lossless
            assert (
                out.convert("RGB").tobytes()
                == codec.decode((tmp_path / "a.hpcm").read_bytes()).tobytes()
            )
    assert _listing(tmp_path) == sorted(
        ["in.png", "a.hpcm", "out.png", "out.bmp", "out.tiff", "out.ppm", "out.webp"]
    )


def test_failures_write_nothing_and_leave_no_temporary_files(
    tmp_path, codec, encoded, monkeypatch
) -> None:
    (tmp_path / "a.hpcm").write_bytes(encoded)
    (tmp_path / "keep.png").write_bytes(b"old")
    calls = []

    def loader(header):
        calls.append(header)
        return codec.model

    def failing_save(image, f, fmt):
        f.write(b"partial")
        raise ImageError("disk full (simulated)")

    with monkeypatch.context() as patch:
        patch.setattr(codec_module, "_save_image", failing_save)
        with pytest.raises(ImageError, match="simulated"):
            decompress_file(tmp_path / "a.hpcm", tmp_path / "keep.png", codec.model)
    assert (tmp_path / "keep.png").read_bytes() == b"old"  # the old file is untouched

    damaged = bytearray(encoded)
    damaged[-1] ^= 1
    (tmp_path / "bad.hpcm").write_bytes(bytes(damaged))
    with pytest.raises(CorruptBitstreamError):
        decompress_file(tmp_path / "bad.hpcm", tmp_path / "x.png", loader)
    with pytest.raises(ImageError, match="lossy format"):
        decompress_file(tmp_path / "a.hpcm", tmp_path / "x.jpg", loader)
    with pytest.raises(ImageError, match="unknown image extension"):
        decompress_file(tmp_path / "a.hpcm", tmp_path / "x.hpcm2", loader)
    with pytest.raises(FileAccessError, match="directory missing"):
        decompress_file(tmp_path / "a.hpcm", tmp_path / "no" / "x.png", loader)
    with pytest.raises(FileAccessError, match="no such file"):
        decompress_file(tmp_path / "missing.hpcm", tmp_path / "x.png", loader)
    with pytest.raises(FileAccessError, match="refusing to overwrite the input"):
        compress_file(tmp_path / "keep.png", tmp_path / "keep.png", loader)
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(ImageError, match="not an image"):
        compress_file(tmp_path / "text.png", tmp_path / "x.hpcm", lambda: calls.append(1))
    assert calls == []  # damaged inputs fail before any model is loaded
    assert _listing(tmp_path) == ["a.hpcm", "bad.hpcm", "keep.png", "text.png"]


def _never(header):
    pytest.fail("the model was loaded although the output format was refused")


def test_output_format_must_hold_the_mode(tmp_path, codec) -> None:
    rgba = Image.new("RGBA", (5, 4), (1, 2, 3, 4))
    (tmp_path / "a.hpcm").write_bytes(codec.encode(rgba))
    for ext in (".ppm", ".bmp"):  # Pillow would silently drop the alpha channel
        with pytest.raises(ImageError, match="cannot store the alpha channel of a RGBA image"):
            decompress_file(tmp_path / "a.hpcm", tmp_path / f"x{ext}", _never)
    la = Image.new("LA", (5, 4), (1, 2))
    (tmp_path / "b.hpcm").write_bytes(codec.encode(la))
    with pytest.raises(ImageError, match="cannot write a LA image as PPM"):
        decompress_file(tmp_path / "b.hpcm", tmp_path / "x.ppm", _never)
    decompress_file(tmp_path / "a.hpcm", tmp_path / "x.png", codec.model)
    with Image.open(tmp_path / "x.png") as out:
        assert out.mode == "RGBA"
        assert np.array_equal(np.asarray(out)[..., 3], np.full((4, 5), 4))


def test_a_model_of_another_name_is_refused(tmp_path, model, encoded) -> None:
    (tmp_path / "a.hpcm").write_bytes(encoded)
    large = get_model("hpcm-large", M=16, N=8, config=MICRO).eval()
    with pytest.raises(WeightsMismatchError, match="model 'hpcm-base', not 'hpcm-large'"):
        decompress_file(tmp_path / "a.hpcm", tmp_path / "x.png", large)
