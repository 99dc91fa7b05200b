"""Models by name: ``get_model("hpcm-base", M=320, N=256)``.

Every model registered here is also registered with CompressAI's registry
(``compressai.registry.register_model``), so CompressAI tooling finds it under the same name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from compressai.registry import register_model as _compressai_register_model

if TYPE_CHECKING:
    from torch import nn

__all__ = [
    "BUILTIN_MODELS",
    "available_models",
    "get_model",
    "model_class",
    "register_model",
    "registered_name",
]

_MODELS: dict[str, type[nn.Module]] = {}

#: The models this package ships, baseline first (the order of tables in the docs and tools).
BUILTIN_MODELS: tuple[str, ...] = (
    "hpcm-base",
    "hpcm-large",
    "hpcm-phase1",
    "hpcm-phase1-lite",
    "hpcm-phase2",
    "hpcm-phase3",
    "hpcm-phase4",
)

T = TypeVar("T", bound="type[nn.Module]")


def register_model(name: str) -> Callable[[T], T]:
    """Class decorator: make a model constructible as ``get_model(name, **kwargs)``.

    Raises:
        ValueError: if ``name`` is already taken by another class.
    """

    def decorator(cls: T) -> T:
        if name in _MODELS and _MODELS[name] is not cls:
            raise ValueError(
                f"model name {name!r} is already registered to {_MODELS[name].__qualname__}"
            )
        _MODELS[name] = cls
        _compressai_register_model(name)(cls)
        return cls

    return decorator


def _load_builtin_models() -> None:
    # Importing the model modules runs their @register_model decorators.
    from . import hpcm, phases, presets  # noqa: F401


def available_models() -> list[str]:
    """Names accepted by :func:`get_model`, sorted."""
    _load_builtin_models()
    return sorted(_MODELS)


def model_class(name: str) -> type[nn.Module]:
    """The class registered as ``name``.

    Raises:
        ValueError: for an unknown name (the message lists the known ones).
    """
    _load_builtin_models()
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(sorted(_MODELS))}")
    return _MODELS[name]


def registered_name(model: nn.Module) -> str:
    """The name ``model``'s class is registered under.

    Raises:
        ValueError: if the class is not registered (or registered under several names).
    """
    _load_builtin_models()
    names = [name for name, cls in _MODELS.items() if cls is type(model)]
    if len(names) != 1:
        raise ValueError(
            f"cannot tell the registry name of a {type(model).__qualname__} "
            f"(candidates: {names}); pass model_id"
        )
    return names[0]


def get_model(
    name: str, *, quality: int | None = None, pretrained: bool = False, **kwargs: Any
) -> nn.Module:
    """Build a registered model: freshly initialized, or with the weights shipped in the package
    (``pretrained=True``, CompressAI's zoo style; :mod:`hpcm_models.pretrained`).

    Args:
        name: a name from :func:`available_models`, e.g. ``"hpcm-base"`` or ``"hpcm-small"``.
        quality: with ``pretrained``: the shipped rate point, 1 = lowest rate (default: the
            middle one).
        pretrained: load the shipped weights: the model comes back in eval mode, ready to code.
        **kwargs: constructor arguments, e.g. ``M=320, N=256``; with ``pretrained`` only those
            that equal the shipped model's.

    Raises:
        ValueError: for an unknown name (the message lists the known ones), or ``quality``
            without ``pretrained``.
        PretrainedWeightsError: (a ``ValueError``) nothing ships for ``name`` at ``quality``, or
            ``kwargs`` contradict the shipped model.
        WeightsIntegrityError: a shipped file is missing or damaged.
    """
    if pretrained:
        from .pretrained import load_pretrained  # builds on checkpoints, which imports this module

        model_class(name)  # an unknown name is a ValueError like any other
        return load_pretrained(name, quality, **kwargs)
    if quality is not None:
        raise ValueError(
            f"quality={quality!r} selects shipped weights: pass pretrained=True as well"
        )
    return model_class(name)(**kwargs)
