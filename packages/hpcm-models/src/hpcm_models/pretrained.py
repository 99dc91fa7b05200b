"""Shipped weights by name: trained codecs inside the package, in the style of CompressAI's zoo.

``get_model("hpcm-small", quality=2, pretrained=True)`` (or :func:`load_pretrained`) returns a
model ready to code, built from a file in ``hpcm_models/weights/``. What ships is listed in
``weights/index.json`` (:func:`shipped_weights`): for each (model, quality) the file, the λ it
was trained for, its SHA-256 and size (checked on every load), the hash of the weights that
``.hpcm`` files record (how ``hpcm decompress`` finds them: :func:`weights_for_file`) and how it
was trained. Quality 1 is the lowest rate; the default is the middle one.

A weights file (:func:`make_weights_file` writes one from a training checkpoint) holds::

    {"format": "hpcm-weights", "version": 1,
     "model": state dict in fp16 (no rANS tables; tensors of <= 64 elements in fp32),
     "model_name": str, "model_kwargs": {...},
     "coding_tables": the rANS tables, packed (GeneralizedGaussian.packed_tables),
     "weights_hash": hex digest (hashes.weights_hash),
     "meta": {how it was trained, where the tables were built}}

It carries its rANS tables because computing them (incomplete-gamma CDFs, vectorized) may give
another last bit on another kind of CPU, and a file must decode wherever it was encoded:
:func:`hpcm_models.checkpoints.load_checkpoint` checks and keeps them.

The environment variable ``HPCM_WEIGHTS_DIR`` names another folder (an ``index.json`` and its
files) to use instead of the package's.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import os
import platform
import stat
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from .checkpoints import (
    CHECKPOINT_FORMAT,
    TABLES_KEY,
    build_model,
    load_checkpoint,
    model_kwargs_from_json,
    read_checkpoint,
    remap_keys,
    save_checkpoint,
    to_json,
    unwrap_checkpoint,
)
from .entropy import CODING_BUFFERS
from .errors import CheckpointError, HPCMError, PretrainedWeightsError, WeightsIntegrityError
from .files import file_kind, read_file, write_atomic
from .hashes import weights_hash
from .hpcm.model import HPCM

__all__ = [
    "DEFAULT_MODEL",
    "FP32_MAX_NUMEL",
    "INDEX_NAME",
    "MAX_INDEX_BYTES",
    "MAX_SHIPPED_BYTES",
    "WEIGHTS_ENV",
    "WEIGHTS_FORMAT",
    "WEIGHTS_VERSION",
    "RetiredWeights",
    "ShippedWeights",
    "add_to_index",
    "default_quality",
    "find_weights",
    "fp16_state_dict",
    "load_pretrained",
    "make_weights_file",
    "pretrained_models",
    "qualities",
    "read_index",
    "read_retired",
    "shipped_files",
    "shipped_weights",
    "weights_dir",
    "weights_for_file",
    "weights_path",
]

#: The model ``hpcm compress`` uses when none is named.
DEFAULT_MODEL = "hpcm-small"
#: Environment variable naming a folder of weights (``index.json`` and files) to use instead.
WEIGHTS_ENV = "HPCM_WEIGHTS_DIR"
#: The table of what ships, in the weights folder.
INDEX_NAME = "index.json"
#: ``"format"`` and ``"version"`` of the files :func:`make_weights_file` writes.
WEIGHTS_FORMAT = "hpcm-weights"
WEIGHTS_VERSION = 1
#: The most the package's weights may take together (the wheel must stay small).
MAX_SHIPPED_BYTES = 20 * 2**20
#: The largest ``index.json`` read (a few KiB in practice; ``$HPCM_WEIGHTS_DIR`` may point
#: anywhere, so the read is bounded).
MAX_INDEX_BYTES = 1 << 20

_INDEX_FORMAT = "hpcm-weights-index"
# Training settings copied into an index entry's "trained" summary (the file has all of them).
_META_KEYS = (
    "step", "total_steps", "continued_from", "plan", "data_manifest_sha256", "device", "torch",
    "date",
)  # fmt: skip
_TRAIN_KEYS = ("steps", "batch_size", "patch_size", "lr", "metric", "seed", "amp", "cuda_graphs")


class _Row:
    """What a row of the weights table is named by: a model and a quality."""

    model: str
    quality: int

    @property
    def label(self) -> str:
        """``"hpcm-small q2"``."""
        return f"{self.model} q{self.quality}"


@dataclass(frozen=True)
class ShippedWeights(_Row):
    """One row of the table of shipped weights.

    Attributes:
        model: registry name.
        quality: rate point, 1 = lowest rate.
        lmbda: the λ of the rate–distortion loss it was trained with.
        file: file name in the weights folder.
        sha256: hex SHA-256 of the file.
        bytes: size of the file.
        weights_hash: hex :func:`hpcm_models.hashes.weights_hash` of the model it builds (what
            ``.hpcm`` files record).
        trained: how it was trained (steps, batch, data manifest hash, …; the file's ``"meta"``
            has every setting).
    """

    model: str
    quality: int
    lmbda: float
    file: str
    sha256: str
    bytes: int
    weights_hash: str
    trained: Mapping[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def from_json(cls, raw: Any, where: str) -> ShippedWeights:
        """An entry of ``index.json``, checked field by field.

        Raises:
            WeightsIntegrityError: a missing or malformed field (``where`` names the entry).
        """
        _check_fields(
            cls,
            raw,
            where,
            {
                **_ROW_CHECKS,
                "lmbda": lambda v: type(v) in (int, float) and v > 0,
                "file": lambda v: isinstance(v, str) and v.endswith(".pt") and Path(v).name == v,
                "bytes": lambda v: type(v) is int and v > 0,
                "trained": lambda v: isinstance(v, Mapping),
            },
        )
        return cls(**{**raw, "lmbda": float(raw["lmbda"]), "trained": dict(raw["trained"])})

    def to_json(self) -> dict[str, Any]:
        """The entry as ``index.json`` holds it."""
        return {**dataclasses.asdict(self), "trained": dict(self.trained)}


def _check_fields(
    cls: type, raw: Any, where: str, checks: Mapping[str, Callable[[Any], bool]]
) -> None:
    """Check an ``index.json`` entry for the dataclass ``cls``: exactly its fields, each value
    passing its check (``checks``: field → predicate), else a :class:`WeightsIntegrityError` that
    names ``where`` and the bad fields."""
    names = [f.name for f in dataclasses.fields(cls)]
    if not isinstance(raw, Mapping) or set(raw) != set(names):
        got = sorted(map(str, raw))[:12] if isinstance(raw, Mapping) else type(raw).__name__
        raise WeightsIntegrityError(f"{where}: expected the fields {names}, got {got}")
    bad = [f"{k}={repr(raw[k])[:60]}" for k, ok in checks.items() if not ok(raw[k])]
    if bad:
        raise WeightsIntegrityError(f"{where}: bad field(s) {', '.join(bad)}")


def _is_hex(value: Any, length: int) -> bool:
    return (
        isinstance(value, str)
        and len(value) == length
        and all(c in "0123456789abcdef" for c in value)
    )


# The checks of the fields that shipped and retired entries share (_check_fields).
_ROW_CHECKS: dict[str, Callable[[Any], bool]] = {
    "model": lambda v: isinstance(v, str) and v != "",
    "quality": lambda v: type(v) is int and v >= 1,
    "sha256": lambda v: _is_hex(v, 64),
    "weights_hash": lambda v: _is_hex(v, 32),
}


@dataclass(frozen=True)
class RetiredWeights(_Row):
    """Weights that shipped once and were replaced: what ``index.json`` keeps of them under
    ``"retired"``, so that a ``.hpcm`` file coded with them is named, not just refused.

    Attributes:
        model, quality: the row they filled.
        weights_hash: hex weights hash (what ``.hpcm`` files record).
        sha256: hex SHA-256 of their weights file (still in the package's git history).
        retired: ISO date on which they were replaced.
        replaced_by: the weights hash of the weights that took their row.
    """

    model: str
    quality: int
    weights_hash: str
    sha256: str
    retired: str
    replaced_by: str

    @classmethod
    def from_json(cls, raw: Any, where: str) -> RetiredWeights:
        """A ``"retired"`` entry of ``index.json``, checked field by field.

        Raises:
            WeightsIntegrityError: a missing or malformed field (``where`` names the entry).
        """
        _check_fields(
            cls,
            raw,
            where,
            {
                **_ROW_CHECKS,
                "retired": lambda v: isinstance(v, str) and _is_date(v),
                "replaced_by": lambda v: _is_hex(v, 32),
            },
        )
        return cls(**raw)


def _is_date(value: str) -> bool:
    try:
        _dt.date.fromisoformat(value)
    except ValueError:
        return False
    return len(value) == 10


# ---------------------------------------------------------------------------- the table


def weights_dir() -> Path:
    """The folder of the shipped weights: ``$HPCM_WEIGHTS_DIR`` if set, else the package's
    ``hpcm_models/weights``."""
    override = os.environ.get(WEIGHTS_ENV)
    if override:
        return Path(override)
    return Path(str(resources.files("hpcm_models").joinpath("weights")))


def _read_index_document(directory: str | os.PathLike[str] | None) -> tuple[Path, Mapping]:
    """``(path, document)`` of ``directory/index.json`` (default :func:`weights_dir`), its
    format checked."""
    path = Path(directory if directory is not None else weights_dir()) / INDEX_NAME
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise WeightsIntegrityError(
            f"no table of shipped weights at {str(path)!r}"
            + (f" (${WEIGHTS_ENV} is set)" if os.environ.get(WEIGHTS_ENV) else "")
        ) from None
    except OSError as err:
        raise WeightsIntegrityError(f"cannot read {str(path)!r}: {err.strerror}") from None
    if not stat.S_ISREG(mode):  # a FIFO would block the read, a device never end it
        raise WeightsIntegrityError(f"{str(path)!r} is {file_kind(mode)}, not a regular file")
    try:
        document = json.loads(read_file(path, MAX_INDEX_BYTES).decode("utf-8"))
    except HPCMError as err:  # FileAccessError, LimitExceededError
        raise WeightsIntegrityError(f"cannot read the table of shipped weights: {err}") from None
    except ValueError as err:  # not UTF-8 or not JSON
        raise WeightsIntegrityError(f"cannot read {str(path)!r}: {err}") from None
    if (
        not isinstance(document, Mapping)
        or document.get("format") != _INDEX_FORMAT
        or document.get("version") != 1
        or not isinstance(document.get("weights"), list)
        or not isinstance(document.get("retired", []), list)
    ):
        raise WeightsIntegrityError(
            f"{str(path)!r} is not a table of shipped weights (expected {{'format': "
            f"{_INDEX_FORMAT!r}, 'version': 1, 'weights': [...], optionally 'retired': [...]}})"
        )
    return path, document


def read_index(directory: str | os.PathLike[str] | None = None) -> tuple[ShippedWeights, ...]:
    """The entries of ``directory/index.json`` (default :func:`weights_dir`), sorted by model and
    quality.

    Raises:
        WeightsIntegrityError: a missing or malformed index, or a (model, quality) listed twice.
    """
    return _entries(*_read_index_document(directory))


def _entries(path: Path, document: Mapping[str, Any]) -> tuple[ShippedWeights, ...]:
    entries = [
        ShippedWeights.from_json(raw, f"{path}, entry {i}")
        for i, raw in enumerate(document["weights"])
    ]
    keys = [(e.model, e.quality) for e in entries]
    twice = sorted({k for k in keys if keys.count(k) > 1})
    if twice:
        raise WeightsIntegrityError(f"{str(path)!r} lists {twice} more than once")
    return tuple(sorted(entries, key=lambda e: (e.model, e.quality)))


def read_retired(directory: str | os.PathLike[str] | None = None) -> tuple[RetiredWeights, ...]:
    """The weights that shipped once in ``directory`` (default :func:`weights_dir`) and were
    replaced (``index.json``'s ``"retired"``, oldest first; empty if it has none).

    Raises:
        WeightsIntegrityError: a missing or malformed index or entry.
    """
    return _retired(*_read_index_document(directory))


def _retired(path: Path, document: Mapping[str, Any]) -> tuple[RetiredWeights, ...]:
    return tuple(
        RetiredWeights.from_json(raw, f"{path}, retired entry {i}")
        for i, raw in enumerate(document.get("retired", []))
    )


def shipped_weights() -> tuple[ShippedWeights, ...]:
    """Every shipped (model, quality), sorted: the table of :func:`weights_dir`."""
    return read_index()


def pretrained_models() -> list[str]:
    """The models with shipped weights, sorted."""
    return sorted({e.model for e in shipped_weights()})


def qualities(model: str) -> tuple[int, ...]:
    """The shipped qualities of ``model``, increasing (empty if none ship)."""
    return tuple(e.quality for e in shipped_weights() if e.model == model)


def _shipped_listing(entries: tuple[ShippedWeights, ...]) -> str:
    if not entries:
        return (
            "this installation ships no weights yet (give a checkpoint, or random weights for a "
            "smoke test)"
        )
    models = sorted({e.model for e in entries})
    listed = "; ".join(
        f"{m} (qualities {', '.join(str(e.quality) for e in entries if e.model == m)})"
        for m in models
    )
    return f"shipped: {listed}"


def default_quality(model: str) -> int:
    """The middle shipped quality of ``model`` (the lower middle of an even count).

    Raises:
        PretrainedWeightsError: no weights of ``model`` ship.
    """
    return find_weights(model).quality


def find_weights(model: str, quality: int | None = None) -> ShippedWeights:
    """The table entry of ``model`` at ``quality`` (default: the middle shipped quality).

    Raises:
        PretrainedWeightsError: ``model`` has no shipped weights, or not at ``quality`` (the
            message lists what ships).
    """
    entries = shipped_weights()
    own = [e for e in entries if e.model == model]
    if not own:
        listing = _shipped_listing(entries)
        raise PretrainedWeightsError(f"no shipped weights for {model!r}; {listing}")
    if quality is None:
        return own[(len(own) - 1) // 2]
    for entry in own:
        if type(quality) is int and entry.quality == quality:
            return entry
    available = ", ".join(str(e.quality) for e in own)
    raise PretrainedWeightsError(
        f"{model} has no shipped quality {quality!r}; available: {available} (1 = lowest rate)"
    )


def weights_for_file(model_id: str, file_weights_hash: bytes) -> ShippedWeights:
    """The shipped weights a ``.hpcm`` file was encoded with (its header's model id and weights
    hash).

    Raises:
        PretrainedWeightsError: no shipped weights have that model and hash.
    """
    entries = shipped_weights()
    for entry in entries:
        if entry.model == model_id and entry.weights_hash == file_weights_hash.hex():
            return entry
    for old in reversed(read_retired()):
        if old.model == model_id and old.weights_hash == file_weights_hash.hex():
            raise PretrainedWeightsError(
                f"the file was encoded with {old.label} weights {old.weights_hash}, which shipped "
                f"until {old.retired} and have been replaced ({_shipped_listing(entries)}); "
                f"decode it with --checkpoint and that weights file (SHA-256 {old.sha256}, in "
                "hpcm-models' history)"
            )
    raise PretrainedWeightsError(
        f"the file was encoded with {model_id} weights {file_weights_hash.hex()}, which are not "
        f"shipped with this installation ({_shipped_listing(entries)}); decode it with the "
        "checkpoint it was encoded with"
    )


def weights_path(entry: ShippedWeights) -> Path:
    """The file of ``entry``, after checking its size and SHA-256 against the table.

    Raises:
        WeightsIntegrityError: the file is missing, or its size or SHA-256 differ.
    """
    path = weights_dir() / entry.file
    try:
        st = path.stat()
    except OSError:
        raise WeightsIntegrityError(
            f"the weights file of {entry.label} is missing: {str(path)!r} (reinstall hpcm-models)"
        ) from None
    if not stat.S_ISREG(st.st_mode):
        raise WeightsIntegrityError(
            f"the weights file of {entry.label}, {str(path)!r}, is {file_kind(st.st_mode)}, not a "
            "regular file"
        )
    size = st.st_size
    if size != entry.bytes:
        raise WeightsIntegrityError(
            f"{str(path)!r} has {size} bytes, the table says {entry.bytes}: damaged or replaced"
        )
    digest = _sha256(path)
    if digest != entry.sha256:
        raise WeightsIntegrityError(
            f"SHA-256 of {str(path)!r} is {digest}, the table says {entry.sha256}: damaged or "
            "replaced"
        )
    return path


def shipped_files() -> dict[str, Path]:
    """The files of the shipped weights by what they are (the table, then each weights file):
    what ``hpcm compress`` and ``decompress`` must never write over while they use them.

    Raises:
        WeightsIntegrityError: the table is missing or malformed.
    """
    directory = weights_dir()
    files = {"table of shipped weights": directory / INDEX_NAME}
    for entry in shipped_weights():
        files[f"shipped weights {entry.label}"] = directory / entry.file
    return files


def _sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


# ---------------------------------------------------------------------------- loading


def load_pretrained(
    model: str,
    quality: int | None = None,
    *,
    device: str | torch.device = "cpu",
    **kwargs: Any,
) -> HPCM:
    """The shipped weights of ``model`` at ``quality``, ready to code (eval mode, the file's
    rANS tables), checked against the table (SHA-256, size, weights hash).

    Args:
        model: a model from :func:`pretrained_models`.
        quality: a quality from :func:`qualities` (1 = lowest rate); default the middle one.
        device: where the model goes.
        **kwargs: constructor arguments; allowed only where they equal the shipped model's
            (e.g. ``M=64``), since the weights fix the architecture.

    Raises:
        PretrainedWeightsError: nothing ships for ``model``/``quality``, or ``kwargs`` differ
            from the shipped model.
        WeightsIntegrityError: the file is missing, damaged or does not match the table.
    """
    entry = find_weights(model, quality)
    path = weights_path(entry)
    try:
        net = load_checkpoint(path, entry.model, device=device, tables="file")
    except CheckpointError as err:
        raise WeightsIntegrityError(f"shipped weights {entry.label}: {err}") from None
    built = weights_hash(net).hex()
    if built != entry.weights_hash:
        raise WeightsIntegrityError(
            f"{str(path)!r} builds weights {built}, the table says {entry.weights_hash}"
        )
    _check_kwargs(net, entry, kwargs)
    return net


_ABSENT = object()


def _check_kwargs(model: HPCM, entry: ShippedWeights, kwargs: Mapping[str, Any]) -> None:
    """Refuse constructor arguments that contradict the shipped model."""
    conflicts = []
    for key, value in kwargs.items():
        have = getattr(model, key, _ABSENT)
        if key == "config" and isinstance(value, Mapping):
            value = model_kwargs_from_json(entry.model, {"config": value})["config"]
        if have is _ABSENT:
            conflicts.append(f"{key}={value!r} (not a setting of {entry.model})")
        elif to_json(have) != to_json(value):
            conflicts.append(f"{key}={value!r} (the weights have {have!r})")
    if conflicts:
        raise PretrainedWeightsError(
            f"the shipped weights {entry.label} fix the model's architecture; conflicting "
            f"arguments: {'; '.join(conflicts)}. Leave them out, or build an untrained model "
            "with pretrained=False"
        )


# ---------------------------------------------------------------------------- making them


def make_weights_file(
    source: str | os.PathLike[str],
    target: str | os.PathLike[str],
    *,
    quality: int,
    lmbda: float | None = None,
    model_name: str | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
) -> ShippedWeights:
    """Turn a checkpoint into a weights file that can ship: fp16 weights, the rANS tables built
    once here and carried in the file, the hashes, and the training metadata.

    Args:
        source: an ``hpcm train`` checkpoint (``latest.pt``), an fp16 export of
            ``tools/train_codecs.py``, a weights file, or any checkpoint
            :func:`~hpcm_models.checkpoints.load_checkpoint` reads.
        target: the file to write (atomically); its name becomes the table's ``file``.
        quality: the rate point it will ship as (1 = lowest rate).
        lmbda: the training λ; default: read from the checkpoint (its run or training settings).
        model_name, model_kwargs: for checkpoints that do not name their model.

    Returns:
        The table entry of the new file (add it with :func:`add_to_index`).

    Raises:
        CheckpointError: unreadable source, unknown model, weights beyond fp16's range.
        ValueError: no λ given or found, bad ``quality``.
    """
    if type(quality) is not int or quality < 1:
        raise ValueError(f"expected quality to be an int >= 1, got {quality!r}")
    source_str, target = str(source), Path(target)
    obj = read_checkpoint(source)
    state, saved_name, saved_kwargs = unwrap_checkpoint(obj, source_str)
    meta = _source_meta(obj)
    lmbda = lmbda if lmbda is not None else _find_lmbda(meta)
    if lmbda is None or not lmbda > 0:
        raise ValueError(f"{source_str!r} does not say its λ: give lmbda (got {lmbda!r})")
    kwargs = saved_kwargs if saved_kwargs is not None else model_kwargs
    payload: dict[str, Any] = {
        "format": WEIGHTS_FORMAT,
        "version": WEIGHTS_VERSION,
        "model": fp16_state_dict(remap_keys(state), source_str),
        "model_name": saved_name or model_name,
        "model_kwargs": to_json(dict(kwargs or {})),
    }
    # A source that carries tables (a weights file made again) keeps them: files coded with it
    # must stay decodable.
    carried = isinstance(obj, Mapping) and TABLES_KEY in obj
    if carried:
        payload[TABLES_KEY] = obj[TABLES_KEY]
    restored = _restore_flushed_bounds(payload["model"], payload["model_name"], kwargs)
    if restored:
        meta["restored_bounds"] = restored
    model = _load_fp16(payload, source_str, model_name, model_kwargs)
    payload[TABLES_KEY] = model.entropy_estimation.packed_tables()
    payload["weights_hash"] = weights_hash(model).hex()
    payload["meta"] = {
        **meta,
        "quality": quality,
        "lmbda": lmbda,
        "coding_tables": meta.get("coding_tables") if carried else _build_info(),
    }
    save_checkpoint(payload, target)
    try:
        _check_written(target, model, payload["weights_hash"])
    except CheckpointError:
        target.unlink()
        raise
    return ShippedWeights(
        model=str(payload["model_name"]),
        quality=quality,
        lmbda=float(lmbda),
        file=target.name,
        sha256=_sha256(target),
        bytes=target.stat().st_size,
        weights_hash=payload["weights_hash"],
        trained=_training_summary(meta),
    )


def _load_fp16(
    payload: Mapping[str, Any],
    source: str,
    model_name: str | None,
    model_kwargs: Mapping[str, Any] | None,
) -> HPCM:
    """The model that loading ``payload`` gives, with its tables if it carries them, else tables
    built from exactly the weights users will load. Errors name ``source``."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "weights.pt"
        save_checkpoint(payload, path)
        tables = "file" if TABLES_KEY in payload else "rebuild"
        try:
            return load_checkpoint(path, model_name, model_kwargs=model_kwargs, tables=tables)
        except CheckpointError as err:
            raise CheckpointError(str(err).replace(str(path), source)) from None


def _source_meta(obj: Any) -> dict[str, Any]:
    """What a checkpoint says about how it was trained (``"meta"`` of exports; step and settings
    of training checkpoints)."""
    if not isinstance(obj, Mapping):
        return {}
    meta = dict(obj["meta"]) if isinstance(obj.get("meta"), Mapping) else {}
    for key in ("quality", "lmbda"):  # the new file's own
        meta.pop(key, None)
    if obj.get("format") == CHECKPOINT_FORMAT:
        meta.setdefault("step", obj.get("step"))
        meta.setdefault("train_args", obj.get("args"))
    return to_json(meta)


def _find_lmbda(meta: Mapping[str, Any]) -> float | None:
    for where in (meta, meta.get("run"), meta.get("train_args")):
        if isinstance(where, Mapping) and isinstance(where.get("lmbda"), int | float):
            return float(where["lmbda"])
    return None


def _restore_flushed_bounds(
    state: dict[str, torch.Tensor], name: Any, kwargs: Mapping[str, Any] | None
) -> list[str]:
    """Put back the lower bounds (``*lower_bound.bound``) that an export writing every tensor in
    fp16 flushed to 0 (the likelihood bound 1e-9 is below fp16's range), from the model's own
    constructor; returns their keys. Only zeros that the model does not have are replaced."""
    flushed = [
        key
        for key, value in state.items()
        if key.endswith("lower_bound.bound") and value.is_floating_point() and not value.any()
    ]
    if not flushed or not isinstance(name, str):
        return []
    try:
        fresh = build_model(name, kwargs).state_dict()
    except (KeyError, TypeError, ValueError):
        return []  # _load_fp16 names the problem
    restored = [key for key in flushed if key in fresh and bool(fresh[key].any())]
    for key in restored:
        state[key] = fresh[key].detach().float().clone()
    return restored


# Tensors this small stay in float32 when weights are stored in fp16: they are constants such as
# the likelihood bound 1e-9, which fp16 (smallest subnormal 6e-8) would turn into 0, and so an
# infinite rate; they cost nothing.
FP32_MAX_NUMEL = 64


def fp16_state_dict(
    state: Mapping[str, Any], source: str = "state dict"
) -> dict[str, torch.Tensor]:
    """The state dict for shipping: without its rANS tables, floating tensors in fp16 except
    those of at most :data:`FP32_MAX_NUMEL` elements, which stay float32 (copies, so that no larger
    storage is saved with them).

    Raises:
        CheckpointError: if a tensor does not fit fp16 (``|x| > 65504``), naming it.
    """
    out = {}
    for key, value in state.items():
        if key in CODING_BUFFERS or not isinstance(value, torch.Tensor):
            continue
        value = value.detach().to("cpu")
        if value.is_floating_point():
            value = value.float() if value.numel() <= FP32_MAX_NUMEL else value.half()
            if not bool(torch.isfinite(value).all()):
                raise CheckpointError(f"{source!r}: {key} is not finite in fp16 (|x| > 65504)")
        out[key] = value.clone()
    return out


def _build_info() -> dict[str, Any]:
    """Where and with what the rANS tables were built."""
    import hpcm_models

    return {
        "hpcm_models": hpcm_models.__version__,
        "torch": str(torch.__version__),  # a plain str: weights_only loads need no allowlist
        "machine": platform.machine(),
        "processor": platform.processor(),
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }


def _training_summary(meta: Mapping[str, Any]) -> dict[str, Any]:
    summary = {k: meta[k] for k in _META_KEYS if meta.get(k) is not None}
    args = meta.get("train_args")
    if isinstance(args, Mapping):
        summary |= {k: args[k] for k in _TRAIN_KEYS if args.get(k) is not None}
    return summary


def _check_written(path: Path, model: HPCM, digest: str) -> None:
    """Load the written file as users will and check that it gives the same model and tables."""
    loaded = load_checkpoint(path, tables="file")
    same_tables = all(
        torch.equal(a, b)
        for a, b in zip(
            loaded.entropy_estimation.tables().values(),
            model.entropy_estimation.tables().values(),
            strict=True,
        )
    )
    if weights_hash(loaded).hex() != digest or not same_tables:
        raise CheckpointError(f"{str(path)!r} does not load back to the model it was made from")


def add_to_index(entry: ShippedWeights, directory: str | os.PathLike[str]) -> list[ShippedWeights]:
    """Add ``entry`` to ``directory/index.json`` (created if missing), replacing the entry of the
    same model and quality; written atomically. Replaced weights (another weights hash) are kept
    under ``"retired"`` (:class:`RetiredWeights`), so files coded with them are named when
    refused. Returns the new table.

    Raises:
        WeightsIntegrityError: an existing index is malformed, or the entry's file is not in
            ``directory`` with the entry's size and SHA-256.
    """
    directory = Path(directory)
    path = directory / entry.file
    if not path.is_file() or path.stat().st_size != entry.bytes or _sha256(path) != entry.sha256:
        raise WeightsIntegrityError(f"{str(path)!r} is not the file of {entry.label}")
    entries: list[ShippedWeights] = []
    retired: list[RetiredWeights] = []
    if (directory / INDEX_NAME).is_file():
        path, document = _read_index_document(directory)
        entries, retired = list(_entries(path, document)), list(_retired(path, document))
    for old in entries:
        same_row = (old.model, old.quality) == (entry.model, entry.quality)
        if same_row and old.weights_hash != entry.weights_hash:
            retired.append(
                RetiredWeights(
                    model=old.model,
                    quality=old.quality,
                    weights_hash=old.weights_hash,
                    sha256=old.sha256,
                    retired=_dt.date.today().isoformat(),
                    replaced_by=entry.weights_hash,
                )
            )
    entries = [e for e in entries if (e.model, e.quality) != (entry.model, entry.quality)]
    entries = sorted([*entries, entry], key=lambda e: (e.model, e.quality))
    document: dict[str, Any] = {
        "format": _INDEX_FORMAT,
        "version": 1,
        "weights": [e.to_json() for e in entries],
    }
    if retired:
        document["retired"] = [dataclasses.asdict(r) for r in retired]
    text = json.dumps(document, indent=1) + "\n"
    write_atomic(directory / INDEX_NAME, lambda f: f.write(text.encode()))
    return entries
