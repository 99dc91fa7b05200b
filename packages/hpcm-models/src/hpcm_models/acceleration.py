"""Fast paths for the fixed-shape parts of the models: precision modes and CUDA graphs.

HPCM is launch-bound on a GPU: a 768×512 eval forward pass is ~1,100 kernels, most of them
microseconds long, so the host's Python and launch overhead, not the arithmetic, sets the pace
(``docs/performance.md`` has the profile). A CUDA graph records those launches once and replays
them with one call. Everything here is shape-specialized: build one object per input shape.

- :func:`precision`: ``"fp32"`` (IEEE float32 everywhere), ``"tf32"`` (TF32 tensor cores for
  float32 matmuls and convolutions) or ``"bf16"`` (bfloat16 autocast).
- :class:`GraphChain`: a computation captured as a chain of CUDA graphs, split wherever the
  host must step in (the entropy decoder between coding steps).
- :class:`GraphedForward`: ``model(x)`` replayed from a graph.
- :class:`GraphedTrainStep`: forward, loss, backward, gradient clipping and Adam, replayed from
  one graph.

Nothing here changes what is computed, only how it is launched; the precision mode is the one
knob that changes arithmetic, and the codec keeps everything that decides the coded bits in
IEEE float32 (see :class:`hpcm_models.ImageCodec`).

One module (a little over 500 lines): the graph classes share the side stream they warm up and
capture on, and the precision modes.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

__all__ = [
    "PRECISIONS",
    "GraphChain",
    "GraphedForward",
    "GraphedTrainStep",
    "RecentGraphs",
    "Split",
    "capturable_adam",
    "check_precision",
    "fp32_precision",
    "precision",
]

#: Arithmetic of :func:`precision`: IEEE float32, TF32 tensor cores for float32, bf16 autocast.
PRECISIONS: tuple[str, ...] = ("fp32", "tf32", "bf16")

# PyTorch's per-backend float32 precision settings (the API of torch >= 2.9). Only the new API is
# used: torch refuses to read the legacy flags (allow_tf32) once the two APIs disagree.
_FP32_PRECISION_KNOBS = (
    "backends",
    "backends.cuda.matmul",
    "backends.cudnn",
    "backends.cudnn.conv",
    "backends.cudnn.rnn",
    "backends.mkldnn",
    "backends.mkldnn.matmul",
    "backends.mkldnn.conv",
    "backends.mkldnn.rnn",
)


def _knobs(names: Sequence[str]) -> list[Any]:
    knobs = []
    for path in names:
        obj: Any = torch
        for part in path.split("."):
            obj = getattr(obj, part, None)
        if obj is not None and hasattr(obj, "fp32_precision"):
            knobs.append(obj)
    return knobs


@contextlib.contextmanager
def fp32_precision(value: str, *, cuda_only: bool = False) -> Iterator[None]:
    """Set every ``torch.backends.*.fp32_precision`` to ``value`` (``"ieee"`` or ``"tf32"``)
    inside the block, restoring the previous values after.

    Args:
        value: ``"ieee"`` (full float32) or ``"tf32"``.
        cuda_only: leave the CPU backends (oneDNN) alone; TF32 only exists on CUDA.
    """
    names = [n for n in _FP32_PRECISION_KNOBS if not (cuda_only and "mkldnn" in n)]
    if cuda_only:
        names.remove("backends")
    knobs = _knobs(names)
    saved = [knob.fp32_precision for knob in knobs]
    try:
        for knob in knobs:
            knob.fp32_precision = value
        yield
    finally:
        for knob, old in zip(knobs, saved, strict=True):
            knob.fp32_precision = old


def check_precision(mode: object) -> str:
    """``mode`` if it is one of :data:`PRECISIONS`; ValueError otherwise."""
    if mode not in PRECISIONS:
        raise ValueError(f"expected a precision in {PRECISIONS}, got {mode!r}")
    return str(mode)


@contextlib.contextmanager
def precision(mode: str, device: torch.device | str) -> Iterator[None]:
    """Run the block in one arithmetic mode.

    - ``"fp32"``: IEEE float32 matmuls and convolutions (PyTorch's default lets cuDNN use TF32).
    - ``"tf32"``: TF32 tensor cores for float32 matmuls and convolutions on CUDA (10-bit
      mantissa products, float32 accumulation); the same as ``"fp32"`` on the CPU.
    - ``"bf16"``: bfloat16 autocast (weight cache off, so the block can be captured in a CUDA
      graph), with TF32 for what autocast leaves in float32.

    Raises:
        ValueError: for any other mode.
    """
    mode = check_precision(mode)
    device = torch.device(device)
    with contextlib.ExitStack() as stack:
        if mode == "fp32":
            stack.enter_context(fp32_precision("ieee", cuda_only=True))
        else:
            stack.enter_context(fp32_precision("tf32", cuda_only=True))
        if mode == "bf16":
            stack.enter_context(torch.autocast(device.type, torch.bfloat16, cache_enabled=False))
        yield


#: What :class:`GraphChain` hands its body: ``split(outputs, like)`` ends the current graph with
#: ``outputs``. With a tensor ``like`` it returns a buffer shaped like it that the host fills
#: before the next graph runs (a *feed*); with ``like=None`` the host only reads ``outputs``, in
#: parallel with the next graph (a *tap*), and it returns None.
Split = Callable[[Sequence[torch.Tensor], torch.Tensor | None], torch.Tensor | None]


def _capture_stream(device: torch.device) -> torch.cuda.Stream:
    # One side stream per device for every warm-up and capture (as torch.cuda.graph does):
    # cuBLAS and cuDNN keep a workspace per stream for the life of the process, so a new stream
    # per graph would leave one behind each time.
    index = device.index if device.index is not None else torch.cuda.current_device()
    return _stream_of(index)


@functools.cache
def _stream_of(index: int) -> torch.cuda.Stream:
    return torch.cuda.Stream(torch.device("cuda", index))


def _require_cuda(device: torch.device, what: str) -> None:
    if device.type != "cuda" or not torch.cuda.is_available():
        raise ValueError(f"{what} needs a CUDA device, got {device}")


class GraphChain:
    """A computation captured as a chain of CUDA graphs, split where the host steps in.

    ``body(split)`` is run ``warmup`` times eagerly (cuDNN/cuBLAS handles, lazy allocations),
    then once under capture. Each call ``split(outputs, like)`` in it ends the current graph
    (see :data:`Split`):

    - a *feed* (``like`` a tensor) returns a static buffer shaped like ``like``; at replay, after
      graph ``k``, the host computes the buffer's values with ``feed(k, outputs_k)`` — in the
      codec's decoder, the symbols that the entropy decoder reads with the scales of graph
      ``k`` — and the chain goes on;
    - a *tap* (``like=None``) returns None; at replay, ``outputs_k`` are copied to pinned host
      memory behind graph ``k`` and handed to ``consume(k, host_outputs_k)`` only after graph
      ``k + 1`` has been launched, so the host works while the device runs (the codec's encoder
      entropy-codes step ``k`` while the GPU computes step ``k + 1``). Taps are consumed in
      order.

    The body's return value (tensors in the graphs' memory) is :attr:`result`; each replay
    overwrites it. Inputs are whatever static tensors the body closes over: fill them in place
    before a replay. During warm-up feeds return zeros and taps do nothing, so the body must
    accept any buffer values.

    Args:
        body: the computation; all its CUDA work must be capturable (no host synchronization,
            no host-to-device copies of pageable memory).
        device: its CUDA device.
        warmup: eager runs before the capture.
    """

    def __init__(
        self,
        body: Callable[[Split], Any],
        device: torch.device | str,
        warmup: int = 2,
    ) -> None:
        device = torch.device(device)
        _require_cuda(device, "GraphChain")
        self.device = device
        self.graphs: list[torch.cuda.CUDAGraph] = []
        self.outputs: list[tuple[torch.Tensor, ...]] = []
        # Per split: the feed buffer, or for a tap the pinned host copies of its outputs.
        self.buffers: list[torch.Tensor | None] = []
        self.host: list[tuple[torch.Tensor, ...] | None] = []
        stream = _capture_stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))

        def warm(outputs: Sequence[torch.Tensor], like: torch.Tensor | None) -> Any:
            return None if like is None else torch.zeros_like(like)

        with torch.cuda.stream(stream):
            for _ in range(warmup):
                body(warm)
        torch.cuda.synchronize(device)
        pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()

        def split(
            outputs: Sequence[torch.Tensor], like: torch.Tensor | None
        ) -> torch.Tensor | None:
            nonlocal graph
            graph.capture_end()
            self.graphs.append(graph)
            self.outputs.append(tuple(outputs))
            # Between two captures: ordinary allocations.
            if like is None:
                self.buffers.append(None)
                self.host.append(
                    tuple(torch.empty_like(t, device="cpu").pin_memory() for t in outputs)
                )
            else:
                self.buffers.append(torch.zeros_like(like))
                self.host.append(None)
            graph = torch.cuda.CUDAGraph()
            graph.capture_begin(pool=pool)
            return self.buffers[-1]

        with torch.cuda.stream(stream):
            graph.capture_begin(pool=pool)
            try:
                self.result = body(split)
            except BaseException:
                with contextlib.suppress(RuntimeError):
                    graph.capture_end()
                raise
            graph.capture_end()
            self.graphs.append(graph)
        torch.cuda.current_stream(device).wait_stream(stream)
        self._events = [torch.cuda.Event() if h is not None else None for h in self.host]

    def __len__(self) -> int:
        return len(self.graphs)

    def replay(
        self,
        feed: Callable[[int, tuple[torch.Tensor, ...]], torch.Tensor] | None = None,
        consume: Callable[[int, tuple[torch.Tensor, ...]], None] | None = None,
    ) -> Any:
        """Run the chain on the current stream; returns :attr:`result`.

        Args:
            feed: ``feed(k, outputs_k)`` → the values of feed buffer ``k`` (any device).
                Required if the body has feeds.
            consume: ``consume(k, host_outputs_k)`` for each tap ``k`` (CPU tensors, valid
                during the call). Required if the body has taps.
        """
        if any(b is not None for b in self.buffers) and feed is None:
            raise ValueError("this chain has feeds: replay needs a feed function")
        if any(h is not None for h in self.host) and consume is None:
            raise ValueError("this chain has taps: replay needs a consume function")
        waiting: list[int] = []

        def drain() -> None:
            for j in waiting:
                event, host = self._events[j], self.host[j]
                assert event is not None
                assert host is not None
                assert consume is not None
                event.synchronize()
                consume(j, host)
            waiting.clear()

        for k, graph in enumerate(self.graphs):
            graph.replay()
            drain()  # earlier taps, while graph k runs
            if k == len(self.buffers):
                break
            buffer, host = self.buffers[k], self.host[k]
            if buffer is not None:
                assert feed is not None
                buffer.copy_(feed(k, self.outputs[k]).view_as(buffer))
            else:
                assert host is not None
                for dst, src in zip(host, self.outputs[k], strict=True):
                    dst.copy_(src, non_blocking=True)
                event = self._events[k]
                assert event is not None
                event.record()
                waiting.append(k)
        drain()
        return self.result


def _clone(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, Mapping):
        return {k: _clone(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_clone(v) for v in value)
    return value


class RecentGraphs:
    """At most ``max_entries`` values (graph chains and their static inputs) by key, the least
    recently used dropped first: a CUDA graph holds its memory pool, so per-shape caches must be
    bounded. ``get(key, build)`` returns the cached value or stores ``build()``."""

    def __init__(self, max_entries: int) -> None:
        if isinstance(max_entries, bool) or not isinstance(max_entries, int) or max_entries < 1:
            raise ValueError(f"expected max_entries to be an int >= 1, got {max_entries!r}")
        self.max_entries = max_entries
        self._entries: dict[Any, Any] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def keys(self) -> list[Any]:
        """Keys from least to most recently used."""
        return list(self._entries)

    def get(self, key: Any, build: Callable[[], Any]) -> Any:
        value = self._entries.pop(key, None)
        if value is None:
            value = build()
            while len(self._entries) >= self.max_entries:
                self._entries.pop(next(iter(self._entries)))
        self._entries[key] = value
        return value


def capturable_adam(
    params: Iterable[Any], lr: float, device: torch.device | str
) -> torch.optim.Adam:
    """``torch.optim.Adam`` as :class:`GraphedTrainStep` needs it: fused, capturable, and with
    every learning rate (``lr`` and each param group's own) a tensor on ``device``, so that
    schedulers update it in place instead of it being frozen into the graph.

    Args:
        params: parameters, or param groups (dicts, as for any optimizer).
        lr: the default learning rate.
        device: the parameters' CUDA device.
    """
    items = list(params)
    if items and all(isinstance(g, dict) for g in items):
        groups = [
            {**g, "lr": torch.tensor(float(g["lr"]), device=device)} if "lr" in g else g
            for g in items
        ]
    else:
        groups = [{"params": items}]
    return torch.optim.Adam(
        groups, lr=torch.tensor(float(lr), device=device), fused=True, capturable=True
    )


class GraphedForward:
    """``model(x, training=False)`` under no-grad, replayed from a CUDA graph per input shape.

    The model's parameters are read in place at every replay, so weight updates (training,
    ``load_state_dict``) are seen; replacing parameter tensors or changing the model's structure
    is not: build a new object then. Outputs are copies, safe to keep.

    Args:
        model: an HPCM model (or any module whose forward takes ``(x, training=False)``), on a
            CUDA device.
        precision: ``"fp32"``, ``"tf32"`` or ``"bf16"`` (see :func:`precision`).
        max_shapes: graphs kept (least recently used dropped first).

    Example:
        >>> fast = GraphedForward(model.cuda().eval(), precision="bf16")
        >>> out = fast(x)  # first call per shape captures (~3 forward passes)
    """

    def __init__(self, model: nn.Module, precision: str = "bf16", max_shapes: int = 4) -> None:
        self.model = model
        self.precision = check_precision(precision)
        self._graphs = RecentGraphs(max_shapes)

    def __call__(self, x: torch.Tensor) -> dict[str, Any]:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"expected x to be a torch.Tensor, got {type(x).__name__}")
        _require_cuda(x.device, "GraphedForward")
        key = (tuple(x.shape), x.dtype, x.device)
        static, chain = self._graphs.get(key, lambda: self._capture(x))
        static.copy_(x)
        return _clone(chain.replay())

    def _capture(self, x: torch.Tensor) -> tuple[torch.Tensor, GraphChain]:
        static = x.detach().clone()
        model, mode = self.model, self.precision

        def body(split: Split) -> Any:
            with torch.no_grad(), precision(mode, static.device):
                return model(static, training=False)

        return static, GraphChain(body, x.device)


class GraphedTrainStep:
    """A whole training step replayed from one CUDA graph: forward (with the model's training
    noise), loss, backward, gradient clipping and the Adam update.

    At batch 16 × 256² HPCM's step is ~5,000 kernel launches; eagerly the host cannot issue them
    as fast as the H200 runs them. The graph removes that overhead (docs/performance.md).

    Semantics are those of the eager loop of ``hpcm train``: gradients are clipped to
    ``max_norm`` and a step whose gradient norm is not finite leaves parameters and optimizer
    state untouched (through the fused Adam's ``found_inf``). Quantization noise comes from the
    CUDA generator, which graphs replay correctly: seed it before a step for reproducibility.

    Requirements, checked: a CUDA model; ``torch.optim.Adam`` or ``AdamW`` with ``fused=True``
    and ``capturable=True`` (:func:`capturable_adam` builds one); learning rates as CUDA tensors
    if they are to change between steps (a float learning rate is frozen into the graph; LR
    schedulers update tensor learning rates in place). The optimizer state is created at
    construction if missing (with the update skipped, so nothing changes).

    Args:
        model: the model, in training mode, on a CUDA device.
        optimizer: see above.
        loss_fn: ``loss_fn(output, batch) -> {"loss": scalar, ...}`` (e.g.
            :class:`~hpcm_models.losses.RateDistortionLoss`).
        example: a batch of the shape and dtype every step will get.
        amp: bf16 autocast of the forward pass.
        max_norm: gradient clipping norm (``inf``: measure the norm, do not clip).

    Calling it with a batch returns the loss terms plus ``grad_norm`` and ``skipped`` (1.0 when
    the update was skipped) as CUDA scalars owned by the graph: read or copy them before the
    next call.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        loss_fn: Callable[[Any, torch.Tensor], Mapping[str, torch.Tensor]],
        example: torch.Tensor,
        *,
        amp: bool = True,
        max_norm: float = math.inf,
    ) -> None:
        _require_cuda(example.device, "GraphedTrainStep")
        if not isinstance(optimizer, torch.optim.Adam | torch.optim.AdamW):
            raise ValueError(
                f"GraphedTrainStep supports torch.optim.Adam/AdamW, got {type(optimizer).__name__}"
            )
        if not (optimizer.defaults.get("fused") and optimizer.defaults.get("capturable")):
            raise ValueError(
                "GraphedTrainStep needs the optimizer built with fused=True, capturable=True "
                "(the fused kernel can skip a non-finite step inside the graph)"
            )
        if not math.isinf(max_norm) and not max_norm > 0:
            raise ValueError(f"expected max_norm > 0 (or inf), got {max_norm!r}")
        self.model, self.optimizer, self.loss_fn = model, optimizer, loss_fn
        self.static = example.detach().clone()
        params = [p for group in optimizer.param_groups for p in group["params"]]
        self.params = [p for p in params if p.requires_grad]
        found_inf = torch.zeros((), dtype=torch.float32, device=example.device)

        def forward_backward() -> tuple[dict[str, torch.Tensor], torch.Tensor]:
            with torch.autocast(
                example.device.type, torch.bfloat16, enabled=amp, cache_enabled=False
            ):
                output = model(self.static)
            terms = dict(loss_fn(output, self.static))
            terms["loss"].backward()
            norm = torch.nn.utils.clip_grad_norm_(self.params, max_norm, foreach=True)
            return terms, norm

        def body(split: Split) -> dict[str, torch.Tensor]:
            optimizer.zero_grad(set_to_none=False)
            terms, norm = forward_backward()
            found_inf.copy_((~torch.isfinite(norm)).float())
            optimizer.step()
            out = {k: v.detach() for k, v in terms.items()}
            out.update(grad_norm=norm.detach(), skipped=found_inf)
            return out

        # The fused Adam reads `found_inf` when step() is called, i.e. at capture; the graph then
        # keeps the tensor itself.
        optimizer.found_inf = found_inf  # type: ignore[attr-defined]
        try:
            # Warm-up outside the graph (two forward/backward passes, no update): allocates the
            # gradients and, if missing, the optimizer state — with found_inf = 1, so the fused
            # kernel leaves parameters and moments alone and gives the step counters back.
            stream = _capture_stream(example.device)
            stream.wait_stream(torch.cuda.current_stream(example.device))
            with torch.cuda.stream(stream):
                for _ in range(2):
                    forward_backward()
                found_inf.fill_(1.0)
                optimizer.step()
                optimizer.zero_grad(set_to_none=False)
            torch.cuda.synchronize(example.device)
            self._chain = GraphChain(body, example.device, warmup=0)
        finally:
            del optimizer.found_inf  # type: ignore[attr-defined]

    def __call__(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        if batch.shape != self.static.shape or batch.dtype != self.static.dtype:
            raise ValueError(
                f"this graphed step was built for batches {list(self.static.shape)} "
                f"{self.static.dtype}, got {list(batch.shape)} {batch.dtype}"
            )
        self.static.copy_(batch)
        return self._chain.replay()
