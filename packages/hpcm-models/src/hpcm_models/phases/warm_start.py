"""Start an RWKV variant from a trained HPCM checkpoint: shared parts load, the rest is new."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from ..checkpoints import remap_keys
from ..entropy import CODING_BUFFERS
from ..errors import CheckpointError
from ..hpcm.model import HPCM, _listing
from ..registry import get_model
from .model import HPCMRWKV, _is_under

__all__ = ["WarmStart", "from_baseline"]


@dataclass(frozen=True)
class WarmStart:
    """What :func:`from_baseline` built.

    Attributes:
        model: the variant, in training mode, with every unchanged part loaded.
        fresh: state-dict prefixes of the modules that keep their fresh initialization (the
            model's :attr:`~hpcm_models.HPCMRWKV.rwkv_modules`; empty for HPCM itself).
        loaded: number of tensors (parameters and buffers) copied from the checkpoint.
        ignored: checkpoint keys under the fresh modules (the baseline's weights of the replaced
            parts), which were not used.
    """

    model: HPCM
    fresh: tuple[str, ...]
    loaded: int
    ignored: tuple[str, ...]

    def named_fresh_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """``(name, parameter)`` of the fresh modules, e.g. for their own learning rate, or to
        train them alone first (freeze the rest)."""
        for name, param in self.model.named_parameters():
            if _is_under(name, self.fresh):
                yield name, param

    def fresh_parameters(self) -> list[nn.Parameter]:
        """The parameters of the fresh modules."""
        return [p for _, p in self.named_fresh_parameters()]


def from_baseline(name: str, state_dict: Mapping[str, Any], **kwargs: Any) -> WarmStart:
    """Build the registered model ``name`` and load a trained HPCM checkpoint into every part it
    shares with HPCM; the RWKV parts keep their fresh initialization.

    This is how a variant is fine-tuned from a trained baseline. M and N are read from the
    checkpoint unless given. The checkpoint's weights of the replaced modules are ignored
    (:attr:`WarmStart.ignored`); every other key of the model must be in the checkpoint with the
    same shape, and the checkpoint may hold no other key. The coding tables are not copied (they
    go stale as soon as training changes ``scales_hyper``): call ``model.update()`` after
    fine-tuning, before coding.

    Args:
        name: a registered name, e.g. ``"hpcm-phase2"`` (see :func:`~hpcm_models.available_models`).
        state_dict: an HPCM-Base checkpoint (or HPCM-Large with ``config=HPCM_LARGE``); keys are
            remapped first (:func:`hpcm_models.checkpoints.remap_keys`).
        **kwargs: constructor options of the variant (``config``, ``cell_hidden_rates``,
            ``use_checkpoint``, …; see :class:`~hpcm_models.HPCMRWKV`).

    Returns:
        A :class:`WarmStart`: the model, the fresh module prefixes, counts of what was loaded.

    Raises:
        CheckpointError: if the checkpoint's unchanged parts do not fit the model: keys missing
            or unexpected (named), wrong shapes, or M and N unreadable.
    """
    if not isinstance(state_dict, Mapping):
        raise CheckpointError(f"expected a state dict (a mapping), got {type(state_dict).__name__}")
    state_dict = remap_keys(state_dict)
    if "M" not in kwargs or "N" not in kwargs:
        try:
            kwargs.setdefault("N", int(state_dict["means_hyper"].shape[1]))
            kwargs.setdefault("M", int(state_dict["adaptive_params_list.0"].shape[1]) // 3)
        except (KeyError, IndexError, AttributeError, TypeError) as err:
            raise CheckpointError(
                f"not an HPCM checkpoint: cannot read M and N ({type(err).__name__}: {err})"
            ) from None
    model = get_model(name, **kwargs)
    if not isinstance(model, HPCM):
        raise TypeError(f"{name!r} is not an HPCM model ({type(model).__qualname__})")
    fresh = model.rwkv_modules if isinstance(model, HPCMRWKV) else ()

    own = model.state_dict()
    shared = [k for k in own if k not in CODING_BUFFERS and not _is_under(k, fresh)]
    missing = [k for k in shared if k not in state_dict]
    unexpected = [
        k
        for k in state_dict
        if k not in own and k not in CODING_BUFFERS and not _is_under(k, fresh)
    ]
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint does not fit the parts of {type(model).__name__}(M={model.M}, "
            f"N={model.N}) shared with HPCM: missing keys {_listing(missing)}; unexpected keys "
            f"{_listing(unexpected)}"
        )
    # Shapes are checked by HPCM.load_state_dict (CheckpointError naming each key).
    result = model.load_state_dict({k: state_dict[k] for k in shared}, strict=False)
    assert not result.unexpected_keys
    assert all(k in CODING_BUFFERS or _is_under(k, fresh) for k in result.missing_keys)
    return WarmStart(
        model=model,
        fresh=tuple(fresh),
        loaded=len(shared),
        ignored=tuple(k for k in state_dict if _is_under(k, fresh)),
    )
