"""What a ``.hpcm`` file records about the model and the latents that made it (``docs/format.md``).

- :func:`weights_hash`: the weights (without the rANS tables, which are rebuilt from them);
- :func:`config_hash`: the architecture and the rANS tables the codec derives from the model;
- :func:`latent_hasher`: the integer latents and the image they belong to, hashed as they are
  coded, so a decoder that lost synchronization refuses the image; :class:`LatentHasher`
  computes the same digest in a worker thread, off the codec's critical path.

All are 16-byte BLAKE2b digests with a personalization per kind.
"""

from __future__ import annotations

import hashlib
import json
import struct
from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType
from typing import Any

import numpy as np
import torch

from .checkpoints import to_json
from .container import HASH_BYTES, ImageMode
from .entropy import CODING_BUFFERS
from .hpcm.model import HPCM

__all__ = ["LatentHasher", "config_hash", "latent_hasher", "weights_hash"]

# Attributes of the RWKV variants that change the architecture (beyond M, N and the config).
_ARCH_ATTRIBUTES = ("cell_hidden_rates", "fusion_hidden_rate", "fusion_blocks", "prior_hidden_rate")


def _hasher(person: bytes) -> Any:
    return hashlib.blake2b(digest_size=HASH_BYTES, person=person)


def latent_hasher(width: int, height: int, mode: ImageMode) -> Any:
    """The latent hash covers the symbols and the image they belong to (size and mode)."""
    h = _hasher(b"hpcm-latents")
    h.update(struct.pack("<IIB", width, height, int(mode)))
    return h


class LatentHasher:
    """The latent hash (:func:`latent_hasher`) of symbols handed over in coding order, computed by
    one worker thread (BLAKE2b releases the GIL, as does the rANS coder): the codec goes on with
    its next coding step while the previous one is hashed. One worker, in submission order: the
    digest is that of the symbols concatenated, whatever the timing.

    Use as a context manager (or call :meth:`close`), so an error mid-file stops the worker.

    Args:
        width, height, mode: the image the latents belong to.
        threaded: ``False`` hashes in the calling thread (the reference; the same digest).
    """

    def __init__(self, width: int, height: int, mode: ImageMode, *, threaded: bool = True) -> None:
        self._hash = latent_hasher(width, height, mode)
        self._worker = ThreadPoolExecutor(1, "hpcm-latent-hash") if threaded else None
        self._pending: list[Future[None]] = []

    def update(self, symbols: np.ndarray) -> None:
        """Add ``symbols`` (integers ``[n]``, hashed as ``<i4``). The worker reads the array
        later: the caller must not change it afterwards."""
        data = np.ascontiguousarray(symbols, dtype="<i4")  # a view where it already is
        if self._worker is None:
            self._hash.update(data)
        else:
            self._pending.append(self._worker.submit(self._hash.update, data))

    def digest(self) -> bytes:
        """The 16-byte digest of everything added (waits for the worker)."""
        for job in self._pending:
            job.result()
        self._pending.clear()
        return self._hash.digest()

    def close(self) -> None:
        """Stop the worker: waits for the hash in progress, drops the queued ones."""
        if self._worker is not None:
            self._worker.shutdown(wait=True, cancel_futures=True)
            self._worker = None

    def __enter__(self) -> LatentHasher:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def _update_field(h: Any, data: bytes | memoryview) -> None:
    h.update(struct.pack("<Q", len(data)))
    h.update(data)


def _tensor_bytes(t: torch.Tensor) -> memoryview:
    flat = t.detach().to("cpu").contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy())


def weights_hash(model: torch.nn.Module) -> bytes:
    """16-byte BLAKE2b of the state dict, without the rANS tables that ``update()`` rebuilds.

    Keys are taken in sorted order; each entry contributes its name, dtype, shape and raw
    little-endian bytes. Independent of the device the model is on.
    """
    h = _hasher(b"hpcm-weights")
    state = model.state_dict()
    for key in sorted(state):
        if key in CODING_BUFFERS:
            continue
        t = state[key]
        _update_field(h, key.encode())
        _update_field(h, f"{t.dtype}{tuple(t.shape)}".encode())
        _update_field(h, _tensor_bytes(t))
    return h.digest()


def _architecture(model: HPCM, model_id: str) -> dict[str, Any]:
    arch: dict[str, Any] = {"model": model_id, "M": model.M, "N": model.N}
    arch["config"] = to_json(model.config)
    for name in _ARCH_ATTRIBUTES:
        if hasattr(model, name):
            arch[name] = to_json(getattr(model, name))
    return arch


def config_hash(model: HPCM, model_id: str) -> bytes:
    """16-byte BLAKE2b of the architecture and the rANS tables the codec derives from the model.

    Covers the registry name, M, N, every :class:`~hpcm_models.HPCMConfig` field, the RWKV
    variants' width and depth settings, the scale table and the quantized CDFs (so weights coded
    with other tables, e.g. another scale table, are refused instead of desynchronizing).
    """
    h = _hasher(b"hpcm-config")
    _update_field(h, json.dumps(_architecture(model, model_id), sort_keys=True).encode())
    _update_field(h, _tensor_bytes(model.entropy_estimation.scale_table.float()))
    for latent in ("z", "y"):
        tables = model.entropy_estimation.rans_tables(latent, escapes=False)
        for row in tables.cdfs:
            _update_field(h, np.asarray(row, dtype="<i4").tobytes())
        _update_field(h, np.asarray(tables.offsets, dtype="<i4").tobytes())
    return h.digest()
