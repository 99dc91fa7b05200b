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


def get_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered model with freshly initialized weights.

    Args:
        name: a name from :func:`available_models`, e.g. ``"hpcm-base"`` or ``"hpcm-large"``.
        **kwargs: constructor arguments, e.g. ``M=320, N=256``.

    Raises:
        ValueError: for an unknown name (the message lists the known ones).
    """
    return model_class(name)(**kwargs)
