"""Checkpoints: every ``torch.load`` of the package, one set of unwrap and key-remap rules, saving,
model kwargs in their JSON form, and the models built from all that.

Reading: :func:`read_checkpoint` is the one ``torch.load`` (``weights_only=True``, on the CPU);
:func:`unwrap_checkpoint` finds the state dict in any supported layout (a raw state dict such as
the authors' ``HPCM_Base_0.0018.pth.tar``, our training checkpoints, CompressAI's and other
trainers' wrappers); :func:`remap_keys` brings old or wrapped key names to the model's (today: the
``module.`` prefix of ``nn.DataParallel``). Models: :func:`load_checkpoint` (ready to code),
:func:`random_model` (fresh weights, ready to code), :func:`build_model` (for training). Writing:
:func:`save_checkpoint`, atomically (:func:`hpcm_models.files.write_atomic`).

Weights files (:mod:`hpcm_models.pretrained` writes them) carry their rANS tables under
:data:`TABLES_KEY`; :func:`load_checkpoint` keeps those instead of rebuilding them, so every
machine codes with the same tables. Shipped weights by name (CompressAI's ``zoo``: a table of
files and hashes, then :func:`load_checkpoint`) are :mod:`hpcm_models.pretrained`, built on this
module.
"""

from __future__ import annotations

import dataclasses
import os
import stat
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .devices import resolve_device
from .entropy import CODING_BUFFERS, is_dense_tensor
from .errors import CheckpointError, plain_text
from .files import file_kind, write_atomic
from .hpcm.config import HPCMConfig
from .hpcm.model import HPCM
from .registry import available_models, get_model, model_class

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "MAX_CHANNELS",
    "TABLES_KEY",
    "build_model",
    "check_model_kwargs",
    "check_state_dict",
    "load_checkpoint",
    "load_training_checkpoint",
    "model_kwargs_from_json",
    "model_kwargs_to_json",
    "random_model",
    "read_checkpoint",
    "read_state_dict",
    "remap_keys",
    "save_checkpoint",
    "to_json",
    "unwrap_checkpoint",
]

#: ``"format"`` field of the checkpoints :func:`hpcm_models.training.train` writes.
CHECKPOINT_FORMAT = "hpcm-train-checkpoint"
#: ``"version"`` field of those checkpoints.
CHECKPOINT_VERSION = 1

#: Where a weights file keeps its rANS tables, beside ``"model"``
#: (:meth:`hpcm_models.GeneralizedGaussian.packed_tables`).
TABLES_KEY = "coding_tables"
_TABLE_SOURCES = ("auto", "file", "rebuild")

# Where trainers keep the model's state dict in their checkpoints: ours and hpcm train's
# ("model", with "model_name" and "model_kwargs" beside it), CompressAI's examples/train.py
# ("state_dict"), and other common trainers.
_STATE_DICT_KEYS = ("model", "state_dict", "network", "model_state_dict")


# ---------------------------------------------------------------------------- reading


def _one_line(err: BaseException | str, limit: int = 300) -> str:
    text = " ".join(plain_text(str(err)).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _check_checkpoint_file(path: str | os.PathLike[str]) -> None:
    """A checkpoint must be a readable regular file: a directory or FIFO is named as such (a FIFO
    would also block torch.load until something writes into it)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist") from None
    except OSError as err:
        raise CheckpointError(f"cannot read checkpoint {str(path)!r}: {err.strerror}") from None
    if not stat.S_ISREG(mode):
        raise CheckpointError(f"checkpoint {str(path)!r} is {file_kind(mode)}, not a regular file")
    if not os.access(path, os.R_OK):
        raise CheckpointError(f"cannot read checkpoint {str(path)!r}: permission denied")


def read_checkpoint(path: str | os.PathLike[str]) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)``: the object a checkpoint file
    holds (only tensors and plain Python data can be read; no code runs).

    Raises:
        CheckpointError: missing, not a regular file, damaged or unsafe.
    """
    _check_checkpoint_file(path)
    try:
        # torch.__version__ is a TorchVersion (a str subclass, no code): files that recorded it
        # unconverted (tools/train_codecs.py exports before the fix) must still load.
        with torch.serialization.safe_globals([torch.torch_version.TorchVersion]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for damaged or unsafe files
        raise CheckpointError(f"cannot read checkpoint {str(path)!r}: {_one_line(err)}") from None


def unwrap_checkpoint(obj: Any, path: str) -> tuple[dict[str, Any], str | None, Any]:
    """``(state dict, model name or None, model kwargs or None)`` of any supported checkpoint.

    The state dict is the object itself if it maps names to tensors, else the first mapping found
    under ``"model"``, ``"state_dict"``, ``"network"`` or ``"model_state_dict"``. The model's
    name and kwargs are read from ``hpcm train`` checkpoints (``"model_name"``,
    ``"model_kwargs"`` beside ``"model"``).

    Raises:
        CheckpointError: no state dict found (``path`` names the file in the message).
    """
    if isinstance(obj, Mapping):
        for key in _STATE_DICT_KEYS:
            if isinstance(obj.get(key), Mapping):
                if key == "model":
                    return dict(obj[key]), obj.get("model_name"), obj.get("model_kwargs")
                return dict(obj[key]), None, None
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return dict(obj), None, None
    keys = list(obj)[:8] if isinstance(obj, Mapping) else type(obj).__name__
    expected = ", ".join(repr(k) for k in _STATE_DICT_KEYS)
    raise CheckpointError(
        f"{path!r} holds no model state dict (expected a state dict, or a dict with one of "
        f"{expected}; found {keys})"
    )


def remap_keys(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """The state dict under the names the models use: a ``module.`` prefix on every key
    (``nn.DataParallel`` / ``DistributedDataParallel`` checkpoints) is removed.

    Every state dict from a file goes through here (:meth:`hpcm_models.HPCM.from_state_dict`,
    :func:`hpcm_models.from_baseline`): a future rename of a model's keys is mapped here, once,
    as CompressAI's ``remap_old_keys`` does.
    """
    if state_dict and all(k.startswith("module.") for k in state_dict):
        return {k.removeprefix("module."): v for k, v in state_dict.items()}
    return dict(state_dict)


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The model state dict in a checkpoint file of any supported layout, keys remapped.

    Raises:
        CheckpointError: unreadable, or no state dict of tensors in it.
    """
    state, _, _ = unwrap_checkpoint(read_checkpoint(path), str(path))
    if not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{str(path)!r} holds no model state dict")
    return remap_keys(state)


def load_training_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a checkpoint written by :func:`hpcm_models.training.train`.

    Raises:
        CheckpointError: if the file is missing, unreadable, or not a training checkpoint.
    """
    ckpt = read_checkpoint(path)
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{str(path)!r} is not an hpcm training checkpoint (no format={CHECKPOINT_FORMAT!r})"
        )
    if ckpt.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{str(path)!r} has training-checkpoint version {ckpt.get('version')!r}; this release "
            f"reads version {CHECKPOINT_VERSION}"
        )
    return ckpt


# ---------------------------------------------------------------------------- validation

#: Largest M and N (the channels of y and z) a checkpoint may give; HPCM's are 320 and 256.
MAX_CHANNELS = 4096


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor ({value.layout}{', meta' if value.is_meta else ''})"
    return f"{type(value).__name__} {plain_text(repr(value))[:60]}"


def _is_weight(value: Any) -> bool:
    """A dense tensor of real numbers with storage: what a state dict of ours may hold."""
    return is_dense_tensor(value) and not value.is_complex() and value.dtype != torch.bool


def check_model_kwargs(kwargs: Any, source: str) -> None:
    """Model kwargs from a file must be a dict of names to values, ``"config"`` a dict (of
    :class:`~hpcm_models.HPCMConfig` fields, which the config then checks) and M, N ints in
    ``1..MAX_CHANNELS``.

    Raises:
        CheckpointError: naming ``source`` and the bad entry.
    """
    if not isinstance(kwargs, Mapping) or not all(isinstance(k, str) for k in kwargs):
        raise CheckpointError(
            f"{source}: model kwargs must be a dict of names to values, got {_describe(kwargs)}"
        )
    config = kwargs.get("config")
    if config is not None and not isinstance(config, Mapping | HPCMConfig):
        raise CheckpointError(
            f"{source}: model kwargs 'config' must be a dict of HPCMConfig fields, got "
            f"{_describe(config)}"
        )
    for key in ("M", "N"):
        value = kwargs.get(key)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_CHANNELS
        ):
            raise CheckpointError(
                f"{source}: model kwargs {key!r} must be an int in 1..{MAX_CHANNELS}, got "
                f"{_describe(value)}"
            )


def check_state_dict(state: Mapping[Any, Any], source: str) -> None:
    """Every entry of a state dict must be a named dense real tensor, and the tensors HPCM reads
    M and N from (``means_hyper``, ``adaptive_params_list.0``) must give at most
    :data:`MAX_CHANNELS`, before a model of that size is even described.

    Raises:
        CheckpointError: naming ``source`` and the bad entries.
    """
    bad = [
        f"{plain_text(repr(k))[:80]}: {_describe(v)}"
        for k, v in state.items()
        if not isinstance(k, str) or not _is_weight(v)
    ]
    if bad:
        more = f" (and {len(bad) - 3} more)" if len(bad) > 3 else ""
        raise CheckpointError(
            f"{source}: the state dict must hold only dense real-valued tensors; found "
            f"{'; '.join(bad[:3])}{more}"
        )
    for key, dim, scale in (("means_hyper", 1, 1), ("adaptive_params_list.0", 1, 3)):
        shape = state[key].shape if key in state else None
        if shape is not None and len(shape) > dim and shape[dim] > scale * MAX_CHANNELS:
            raise CheckpointError(
                f"{source}: {key} of shape {list(shape)} means more than {MAX_CHANNELS} channels"
            )


# ---------------------------------------------------------------------------- writing


def save_checkpoint(obj: Any, path: str | os.PathLike[str]) -> None:
    """``torch.save(obj)`` to ``path`` atomically: a crash never leaves a half-written checkpoint
    under ``path`` (:func:`hpcm_models.files.write_atomic`)."""
    write_atomic(Path(path), lambda f: torch.save(obj, f))


# ---------------------------------------------------------------------------- model kwargs


def to_json(value: Any) -> Any:
    """``value`` as plain JSON data: dataclasses (an :class:`~hpcm_models.HPCMConfig`) become
    dicts of all their fields, tuples lists, mapping keys strings, one-element tensors floats."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {k: to_json(v) for k, v in dataclasses.asdict(value).items()}
    if isinstance(value, tuple | list):
        return [to_json(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return float(value)
    return value


def model_kwargs_from_json(name: str, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """Constructor kwargs from their JSON form.

    A ``"config"`` entry may be a mapping of :class:`~hpcm_models.HPCMConfig` fields; it replaces
    those fields of the model's default configuration (lists become tuples). E.g.
    ``{"M": 32, "N": 16, "config": {"transform_channels": [16, 32, 64]}}``. Other entries pass
    through (``cell_hidden_rates``, ``use_checkpoint``, …).

    Raises:
        ValueError: for an unknown model name or an unknown config field.
    """
    out = dict(kwargs)
    config = out.get("config")
    if isinstance(config, Mapping):
        base = getattr(model_class(name), "default_config", None)
        if not isinstance(base, HPCMConfig):
            raise ValueError(f"model {name!r} takes no HPCMConfig, got config={dict(config)!r}")
        fields = {f.name for f in dataclasses.fields(HPCMConfig)}
        unknown = sorted(set(config) - fields)
        if unknown:
            raise ValueError(
                f"unknown config field(s) {unknown}; HPCMConfig has {', '.join(sorted(fields))}"
            )
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in config.items()}
        out["config"] = dataclasses.replace(base, **values)
    return out


def model_kwargs_to_json(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The inverse of :func:`model_kwargs_from_json`: an ``HPCMConfig`` becomes a dict of all its
    fields, tuples become lists."""
    return {k: to_json(v) for k, v in kwargs.items()}


# ---------------------------------------------------------------------------- models


def build_model(name: str, kwargs: Mapping[str, Any] | None = None) -> HPCM:
    """``get_model(name, **kwargs)`` with the kwargs in their JSON form
    (:func:`model_kwargs_from_json`)."""
    model = get_model(name, **model_kwargs_from_json(name, kwargs or {}))
    if not isinstance(model, HPCM):
        raise ValueError(f"model {name!r} is not an HPCM model")
    return model


def _checkpoint_model(
    path: str, saved_name: str | None, saved_kwargs: Any, model_name: str | None, model_kwargs: Any
) -> tuple[str, dict[str, Any]]:
    """The registry name and constructor kwargs of a checkpoint, from what it says and what the
    caller says (which must agree)."""
    if saved_name is not None and not isinstance(saved_name, str):
        raise CheckpointError(
            f"checkpoint {path!r}: model_name must be a string, got {_describe(saved_name)}"
        )
    if saved_kwargs is not None:
        check_model_kwargs(saved_kwargs, f"checkpoint {path!r}")
    if model_kwargs is not None:
        check_model_kwargs(model_kwargs, "--model-kwargs")
    if model_name is not None and saved_name is not None and model_name != saved_name:
        raise CheckpointError(
            f"checkpoint {path!r} holds a {saved_name!r} model, not {model_name!r}"
        )
    name = model_name or saved_name
    if name is None:
        raise CheckpointError(
            f"checkpoint {path!r} does not say which model it holds; name it (--model)"
        )
    if name not in available_models():
        raise CheckpointError(f"unknown model {name!r}; available: {', '.join(available_models())}")
    if (
        saved_kwargs is not None
        and model_kwargs is not None
        and dict(model_kwargs) != dict(saved_kwargs)
    ):
        raise CheckpointError(
            f"checkpoint {path!r} was saved with model kwargs {dict(saved_kwargs)}, "
            f"which differ from the given {dict(model_kwargs)}"
        )
    kwargs_json = dict(saved_kwargs if saved_kwargs is not None else (model_kwargs or {}))
    try:
        return name, model_kwargs_from_json(name, kwargs_json)
    except (ValueError, TypeError) as err:
        raise CheckpointError(_one_line(f"bad model kwargs for {name}: {err}")) from None


def load_checkpoint(
    path: str | os.PathLike[str],
    model_name: str | None = None,
    *,
    device: str | torch.device = "cpu",
    model_kwargs: Mapping[str, Any] | None = None,
    tables: str = "auto",
) -> HPCM:
    """Build a model from a checkpoint, ready to code (eval mode, rANS tables built).

    Reads (with ``torch.load(weights_only=True)``):

    * the authors' raw state dicts (``HPCM_Base_0.0018.pth.tar``), M and N read from the weights;
    * our training checkpoints ``{"model": state_dict, "model_name": str, "model_kwargs": dict,
      ...}`` (``model_kwargs`` in JSON form: a ``"config"`` entry is a dict of HPCMConfig fields);
    * CompressAI training checkpoints ``{"state_dict": ..., ...}`` and the other layouts of
      :func:`unwrap_checkpoint`.

    A ``module.`` prefix (DataParallel) is removed; missing rANS tables are fine. The tables are
    rebuilt from the weights (``update(force=True)``, with the checkpoint's scale table if it has
    one), so they match the weights — except for weights files that carry their tables
    (:data:`TABLES_KEY`, :mod:`hpcm_models.pretrained`): those are checked and kept, because
    tables computed on another machine may differ in the last bit of a CDF, and a file must
    decode wherever it was encoded.

    Args:
        path: the checkpoint file.
        model_name: registry name; required unless the checkpoint names its model (and must agree
            with it if it does).
        device: where the model goes.
        model_kwargs: constructor kwargs (JSON form) for checkpoints that carry none; M and N are
            read from the weights if absent.
        tables: ``"auto"``: the file's own tables if it carries them, else rebuilt; ``"file"``:
            the file's own (an error if it carries none); ``"rebuild"``: always rebuilt.

    Raises:
        CheckpointError: unreadable file, unknown or mismatching model, missing/unexpected keys
            (named), wrong shapes, contents of the wrong type or out of range, malformed or
            oversized coding tables.
    """
    path_str = str(path)
    if tables not in _TABLE_SOURCES:
        raise ValueError(f"expected tables in {_TABLE_SOURCES}, got {tables!r}")
    obj = read_checkpoint(path)
    state, saved_name, saved_kwargs = unwrap_checkpoint(obj, path_str)
    carried = obj.get(TABLES_KEY) if isinstance(obj, Mapping) and tables != "rebuild" else None
    if tables == "file" and carried is None:
        raise CheckpointError(f"checkpoint {path_str!r} carries no coding tables ({TABLES_KEY!r})")
    name, kwargs = _checkpoint_model(path_str, saved_name, saved_kwargs, model_name, model_kwargs)
    cls = model_class(name)
    if not (isinstance(cls, type) and issubclass(cls, HPCM)):
        raise CheckpointError(f"model {name!r} is not an HPCM model; the codec cannot code it")
    M, N = kwargs.pop("M", None), kwargs.pop("N", None)
    state = remap_keys(state)
    check_state_dict(state, f"checkpoint {path_str!r}")
    for key in CODING_BUFFERS:  # built by update() below
        state.setdefault(key, torch.empty(0))
    model = _build_checked(cls, state, kwargs, f"checkpoint {path_str!r} does not fit {name}")
    for key, want, have in (("M", M, model.M), ("N", N, model.N)):
        if want is not None and want != have:
            raise CheckpointError(f"model kwargs say {key}={want}, the weights have {key}={have}")
    model.eval()
    if carried is not None:
        try:
            model.entropy_estimation.load_packed_tables(carried, channels=model.N)
        except CheckpointError as err:
            raise CheckpointError(f"checkpoint {path_str!r}: {_one_line(err)}") from None
        except Exception as err:  # tensors from a file may be of any dtype or shape
            raise CheckpointError(
                f"checkpoint {path_str!r} has malformed coding tables ({TABLES_KEY!r}): "
                f"{_one_line(err)}"
            ) from None
        return model.to(resolve_device(device))
    scale_table = model.scale_table if model.scale_table.numel() else None
    try:
        model.update(scale_table=scale_table, force=True)
    except ValueError as err:
        raise CheckpointError(
            f"checkpoint {path_str!r} has a bad scale table or hyper-latent scales (its rANS "
            f"tables cannot be built): {_one_line(err)}"
        ) from None
    return model.to(resolve_device(device))


def _build_checked(
    cls: type[HPCM], state: dict[str, Any], kwargs: dict[str, Any], what: str
) -> HPCM:
    """``cls.from_state_dict(state, **kwargs)``, first on the meta device: keys, shapes and kwargs
    are checked against a model that allocates nothing, so a checkpoint that does not fit (or
    kwargs asking for a huge model) fails before any memory is spent on it."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # copying into meta tensors "is a no-op"
            with torch.device("meta"):
                cls.from_state_dict(state, **kwargs)
        return cls.from_state_dict(state, **kwargs)
    except CheckpointError:
        raise
    except Exception as err:  # a constructor fed from a file may raise anything
        raise CheckpointError(f"{what}: {_one_line(err)}") from None


def random_model(
    model_name: str, *, seed: int = 0, device: str | torch.device = "cpu", **model_kwargs: Any
) -> HPCM:
    """A model with freshly initialized weights (``torch.manual_seed(seed)``), ready to code.

    For demos and tests only: it does not compress well. The global RNG state is left untouched.
    ``model_kwargs`` are in JSON form (see :func:`load_checkpoint`).
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = get_model(model_name, **model_kwargs_from_json(model_name, model_kwargs))
    if not isinstance(model, HPCM):
        raise ValueError(f"model {model_name!r} is not an HPCM model; the codec cannot code it")
    model.eval()
    model.update()
    return model.to(resolve_device(device))
