"""Images ⇄ ``.hpcm`` bytes: the codec and its coding schedule.

:class:`ImageCodec` wraps an HPCM model (any registered variant) and codes one image per file:
Pillow image → 8-bit RGB planes (gray coded as RGB, alpha kept losslessly;
:mod:`hpcm_models.image_io`) → edge-replicated to a multiple of 128 → the model's hyperprior and
11-step context model → rANS streams (:mod:`hpcm_models.rans`) in a checksummed container
(:mod:`hpcm_models.container`, ``docs/format.md``), and back. :mod:`hpcm_models.codec_files`
does the same from and to files.

Safety, by construction:

* The container is validated completely (sizes, limits, CRCs) before anything else.
* The model must match the file: the registry name, a hash of the weights and a hash of the
  architecture and rANS tables (:mod:`hpcm_models.hashes`) are compared before decoding
  (:class:`WeightsMismatchError`).
* The rANS decoder (:mod:`hpcm_models.ans`) only ever gets CRC-checked streams with escape-free
  tables and checks every read against the stream's end (:mod:`hpcm_models.rans`).
* The decoder hashes the integer latents it decoded and refuses the image if the hash differs from
  the encoder's, or if a stream does not end exactly with its symbols
  (:class:`DecodeMismatchError`): a desync (e.g. encoder and decoder on devices with different
  floating-point results) is never returned as an image. The hash runs in a worker thread
  (:class:`~hpcm_models.hashes.LatentHasher`), beside the next coding step.
* Coding runs under :func:`~hpcm_models.devices.deterministic_coding`; the same image gives the
  same bytes every time.

The module is one class on purpose (a little over 500 lines): the encoder's and the decoder's
halves of :class:`ImageCodec` must mirror each other step for step, so they stay side by side.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image

from .acceleration import (
    GraphChain,
    RecentGraphs,
    Split,
    check_precision,
    precision,
)
from .container import (
    Header,
    Limits,
    StreamKind,
    make_header_streams,
    read_container,
    write_container,
)
from .devices import deterministic_coding
from .errors import (
    CorruptBitstreamError,
    DecodeMismatchError,
    WeightsMismatchError,
)
from .hashes import LatentHasher, config_hash, weights_hash
from .hpcm import geometry as geo
from .hpcm.model import HPCM
from .image_io import (
    check_image_size,
    image_planes,
    pad_to_multiple,
    restore_image,
)
from .rans import (
    SymbolReader,
    SymbolWriter,
    check_rans_stream,
    codec_tables,
    device_symbols,
    pack_escapes,
    parse_escapes,
    resolve_coder,
)
from .registry import registered_name

__all__ = [
    "DecodedImage",
    "EncodedImage",
    "ImageCodec",
    "decode_image",
    "encode_image",
]

#: Downsampling of the latent ``y`` and of the hyper-latent ``z`` relative to the image (HPCM).
Y_STRIDE = 16
Z_STRIDE = 64


# ---------------------------------------------------------------------------- rANS


def _scale_indexes(model: HPCM, scales: torch.Tensor) -> torch.Tensor:
    """Row of the y table for each scale (:meth:`GeneralizedGaussian.build_indexes`); the one
    place where encoder and decoder ask for it."""
    return model.entropy_estimation.build_indexes(scales)


# ---------------------------------------------------------------------------- the codec


@dataclass(frozen=True)
class EncodedImage:
    """Result of :meth:`ImageCodec.encode_detailed`.

    Attributes:
        data: the ``.hpcm`` file.
        header: its header.
        y_hat: ŷ ``[1, M, H/16, W/16]`` the decoder rebuilds (on the model's device).
        escapes: number of latents sent in the ESCAPES stream.
    """

    data: bytes
    header: Header
    y_hat: torch.Tensor
    escapes: int


@dataclass(frozen=True)
class DecodedImage:
    """Result of :meth:`ImageCodec.decode_detailed`.

    Attributes:
        image: the restored image (original size and mode).
        header: the file's header.
        y_hat: ŷ ``[1, M, H/16, W/16]`` as decoded.
        x_hat: the reconstruction ``[1, 3, H, W]`` at the padded size, in [0, 1].
    """

    image: Image.Image
    header: Header
    y_hat: torch.Tensor
    x_hat: torch.Tensor


@dataclass(frozen=True)
class _CodedLatents:
    z_stream: bytes
    y_stream: bytes
    escape_stream: bytes
    escape_count: int
    latent_hash: bytes
    y_hat: torch.Tensor
    z_shape: tuple[int, int, int]


class ImageCodec:
    """Codes images to ``.hpcm`` bytes and back with one model.

    The rANS tables and the model's hashes are prepared once, at construction: build a new codec
    after changing the weights. The model's rANS tables are built with ``model.update()`` if they
    are empty. Coding runs on the model's device, in eval mode, under
    :func:`~hpcm_models.devices.deterministic_coding`: everything that decides the coded bits
    (``g_a``, the hyperprior, the 11-step context model) runs in IEEE float32 with deterministic
    kernels, so encoder and decoder compute identical entropy parameters.

    On CUDA the network part of coding is launch-bound (~1,000 small kernels per image), so the
    codec records it in CUDA graphs per padded image size (:class:`~hpcm_models.acceleration.
    GraphChain`; the decoder's chain is split at each of the 11 coding steps, where the rANS
    decoder needs the step's scales). The graphs run exactly the kernels of the eager path, so
    files are byte-identical either way. Capturing costs about three codings, so by default a
    size is captured the second time it is seen.

    Args:
        model: an HPCM model (any registered variant).
        model_id: its registry name, written to and checked against files; found from the
            model's class if not given.
        limits: safety limits for decoding (defaults: :class:`~hpcm_models.container.Limits`).
        cuda_graphs: ``None`` (capture a size when it is seen again), ``True`` (capture at
            once) or ``False`` (always eager). Ignored on the CPU.
        synthesis: arithmetic of the decoder's synthesis transform ``g_s``, which runs after
            every bit is decoded: ``"tf32"`` (default: TF32 convolutions on CUDA, which is also
            what PyTorch's defaults give the authors' code; IEEE float32 on the CPU), ``"fp32"``
            or ``"bf16"`` (see :func:`~hpcm_models.acceleration.precision`). It changes the
            reconstruction by rounding error only (≤ 1 level of 255 measured for TF32), never
            the bits.
        coder: the entropy coder, ``"ans"`` (:mod:`hpcm_models.ans`) or ``"compressai"``
            (CompressAI's, the old path: the same bytes, ~10x slower); ``None`` (default):
            ``"ans"``, or CompressAI's with a warning where numba cannot compile
            (:func:`~hpcm_models.rans.resolve_coder`). Building a codec compiles (first run on a
            machine, a few seconds) or loads ``ans``'s kernels, so the first coding does not.

    Example:
        >>> codec = ImageCodec(load_checkpoint("hpcm_base.pth.tar", "hpcm-base"))
        >>> data = codec.encode(Image.open("kodim01.png"))
        >>> image = codec.decode(data)
    """

    #: Image sizes whose CUDA graphs are kept (least recently used dropped first).
    MAX_GRAPHS: ClassVar[int] = 4

    def __init__(
        self,
        model: HPCM,
        model_id: str | None = None,
        *,
        limits: Limits | None = None,
        cuda_graphs: bool | None = None,
        synthesis: str = "tf32",
        coder: str | None = None,
    ) -> None:
        if not isinstance(model, HPCM):
            raise TypeError(f"expected an HPCM model, got {type(model).__qualname__}")
        if cuda_graphs not in (None, True, False):
            raise ValueError(f"expected cuda_graphs None, True or False, got {cuda_graphs!r}")
        check_precision(synthesis)
        self.coder = resolve_coder(coder)
        self.model = model
        self.model_id = model_id if model_id is not None else registered_name(model)
        self.limits = limits or Limits()
        self.cuda_graphs = cuda_graphs
        self.synthesis = synthesis
        ggm = model.entropy_estimation
        if ggm.offset_y.numel() == 0 or ggm.offset_z.numel() == 0:
            model.update()
        self._tables = {latent: codec_tables(ggm, latent) for latent in ("z", "y")}
        self.weights_hash = weights_hash(model)
        self.config_hash = config_hash(model, self.model_id)
        self._graphs = RecentGraphs(self.MAX_GRAPHS)
        self._seen: set[tuple[str, tuple[int, ...]]] = set()
        self._ranges: dict[tuple[str, torch.device], tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def device(self) -> torch.device:
        return self.model.means_hyper.device

    def _graph(
        self, kind: str, example: torch.Tensor, body: Callable[[torch.Tensor, Split], Any]
    ) -> tuple[torch.Tensor, GraphChain] | None:
        """The CUDA graph chain of ``body(static_input, split)`` for ``example``'s shape, or None
        when this call should run eagerly (CPU, graphs off, or first sight of the shape)."""
        if self.device.type != "cuda" or self.cuda_graphs is False:
            return None
        key = (kind, tuple(example.shape))
        if self.cuda_graphs is None and key not in self._graphs and key not in self._seen:
            self._seen.add(key)
            return None

        def capture() -> tuple[torch.Tensor, GraphChain]:
            static = torch.zeros_like(example)
            return static, GraphChain(lambda split: body(static, split), self.device)

        return self._graphs.get(key, capture)

    @contextlib.contextmanager
    def _coding(self) -> Iterator[None]:
        was_training = self.model.training
        self.model.eval()
        try:
            with deterministic_coding(self.device), torch.no_grad():
                yield
        finally:
            self.model.train(was_training)

    # -------------------------------------------------------------- encoding

    def encode(self, image: Image.Image) -> bytes:
        """Compress a Pillow image (any size; modes RGB, L, RGBA, LA, P, 1, CMYK, YCbCr)."""
        return self.encode_detailed(image).data

    def encode_detailed(self, image: Image.Image) -> EncodedImage:
        """:meth:`encode`, also returning the header and ŷ (for tests and tools)."""
        if not isinstance(image, Image.Image):
            raise TypeError(f"expected a PIL.Image.Image, got {type(image).__qualname__}")
        check_image_size(image.width, image.height, self.limits, multiple=self.model.INPUT_MULTIPLE)
        rgb, mode, alpha = image_planes(image)
        height, width = rgb.shape[:2]
        # The 8-bit pixels go to the device as they are (a quarter of float32's bytes; PyTorch
        # would convert them on the host before copying) and are laid out and converted there.
        x = torch.from_numpy(np.array(rgb, order="C")).to(self.device)
        x = x.permute(2, 0, 1)[None].to(torch.float32)
        # Contiguous NCHW (padding a 1x1 image gives channels-last strides): a channels-last
        # input would propagate through every layer, and the schedule's views need NCHW.
        x = pad_to_multiple(x.div_(255), self.model.INPUT_MULTIPLE).contiguous()
        with self._coding(), LatentHasher(width, height, mode) as hasher:
            coded = self._encode_latents(x, hasher)
        streams = [(StreamKind.Z, coded.z_stream), (StreamKind.Y, coded.y_stream)]
        if coded.escape_count:
            streams.append((StreamKind.ESCAPES, coded.escape_stream))
        if alpha is not None:
            streams.append((StreamKind.ALPHA, zlib.compress(alpha.tobytes(), 9)))
        kinds, lengths, crcs = make_header_streams(streams)
        header = Header(
            model_id=self.model_id,
            weights_hash=self.weights_hash,
            config_hash=self.config_hash,
            width=width,
            height=height,
            mode=mode,
            padded_width=x.shape[-1],
            padded_height=x.shape[-2],
            y_shape=tuple(coded.y_hat.shape[1:]),  # type: ignore[arg-type]
            z_shape=coded.z_shape,
            latent_hash=coded.latent_hash,
            stream_kinds=kinds,
            stream_lengths=lengths,
            stream_crcs=crcs,
        )
        data = write_container(header, [s for _, s in streams])
        return EncodedImage(data, header, coded.y_hat, coded.escape_count)

    def _table_ranges(self, latent: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Each table row's smallest and largest regular symbol, int32 on the model's device."""
        key = (latent, self.device)
        if key not in self._ranges:
            tables = self._tables[latent]
            self._ranges[key] = (
                torch.from_numpy(tables.low.astype(np.int32)).to(self.device),
                torch.from_numpy(tables.high.astype(np.int32)).to(self.device),
            )
        return self._ranges[key]

    def _encoder_tensors(self, x: torch.Tensor, split: Split) -> torch.Tensor:
        """The encoder's network part; returns ŷ. Hands the entropy coder z's symbols, then each
        coding step's, through ``split(symbols, None)`` (see :func:`device_symbols`), so with
        CUDA graphs the host codes step k while the GPU computes step k + 1."""
        model = self.model
        z_low, z_high = self._table_ranges("z")
        y_low, y_high = self._table_ranges("y")
        y = model.g_a(x)
        z = model.h_a(y)
        # `+ 0.0` turns -0.0 into 0.0, the value the decoder rebuilds from integers.
        z_q = torch.round(z - model.means_hyper) + 0.0
        N, zh, zw = z_q.shape[1:]
        z_rows = torch.arange(N, device=x.device).view(N, 1).expand(N, zh * zw).reshape(-1)
        split(device_symbols(z_q, z_rows, z_low, z_high), None)
        params = model.h_s(z_q + model.means_hyper)
        y_s2 = geo.split_s2(y)
        latents = {1: geo.split_s1(y_s2), 2: y_s2, 3: y}

        def encode(step: Any) -> torch.Tensor:
            quantized = torch.round(step.select(latents[step.stage]) - step.means) + 0.0
            rows = _scale_indexes(model, step.scales)
            split(device_symbols(quantized, rows, y_low, y_high), None)
            return quantized

        return model.run_schedule(params, encode)

    def _encode_latents(self, x: torch.Tensor, hasher: LatentHasher) -> _CodedLatents:
        M, N = self.model.M, self.model.N
        ph, pw = x.shape[-2:]
        z_shape = (int(N), ph // Z_STRIDE, pw // Z_STRIDE)
        z_count, y_count = math.prod(z_shape), M * (ph // Y_STRIDE) * (pw // Y_STRIDE)
        escapes: list[tuple[np.ndarray, np.ndarray]] = []
        writers = [
            SymbolWriter(self._tables["z"], z_count, hasher, escapes, 0, self.coder),
            SymbolWriter(self._tables["y"], y_count, hasher, escapes, z_count, self.coder),
        ]

        def consume(k: int, outputs: tuple[torch.Tensor, ...]) -> None:
            # Step k's symbols (z's first), in host memory; the writer copies them, so the
            # graphs' pinned buffers may be reused.
            symbols, coded, rows, broken = (t.numpy() for t in outputs)
            writers[min(k, 1)].add(symbols, coded, rows, bool(broken[0]))

        graph = self._graph("encode", x, self._encoder_tensors)
        if graph is None:
            steps = itertools.count()

            def split(outputs: Any, like: None) -> None:
                consume(next(steps), tuple(t.cpu() for t in outputs))

            y_hat = self._encoder_tensors(x, split)
        else:
            static, chain = graph
            static.copy_(x)
            y_hat = chain.replay(consume=consume).clone()
        z_writer, y_writer = writers
        return _CodedLatents(
            z_stream=z_writer.flush(),
            y_stream=y_writer.flush(),  # while the worker hashes the last step
            escape_stream=pack_escapes(escapes),
            escape_count=sum(p.size for p, _ in escapes),
            latent_hash=hasher.digest(),
            y_hat=y_hat,
            z_shape=z_shape,
        )

    # -------------------------------------------------------------- decoding

    def decode(self, data: bytes) -> Image.Image:
        """Decompress a ``.hpcm`` file made with this model.

        Raises:
            BitstreamError: a subclass for every kind of bad file (see ``docs/format.md``);
                no image is ever returned from a damaged file or a desynchronized decoder.
        """
        return self.decode_detailed(data).image

    def check_header(self, header: Header) -> None:
        """Check that ``header`` was written by this model and is geometrically consistent.

        Raises:
            WeightsMismatchError: other model, architecture, rANS tables or weights.
            CorruptBitstreamError: sizes or streams inconsistent with the model.
        """
        if header.model_id != self.model_id:
            raise WeightsMismatchError(
                f"the file was encoded with model {header.model_id!r}, not {self.model_id!r}"
            )
        if header.weights_hash != self.weights_hash:
            raise WeightsMismatchError(
                f"the file was encoded with other weights: weights hash "
                f"{header.weights_hash.hex()} in the file, {self.weights_hash.hex()} for the "
                "given checkpoint"
            )
        if header.config_hash != self.config_hash:
            raise WeightsMismatchError(
                f"the file was encoded with another configuration of {self.model_id} "
                f"(architecture or rANS tables): config hash {header.config_hash.hex()} in the "
                f"file, {self.config_hash.hex()} for this model"
            )
        m = self.model.INPUT_MULTIPLE
        expected_padded = (-(-header.width // m) * m, -(-header.height // m) * m)
        if (header.padded_width, header.padded_height) != expected_padded:
            raise CorruptBitstreamError(
                f"padded size {header.padded_width}x{header.padded_height} does not match "
                f"{header.width}x{header.height} (expected {expected_padded[0]}x"
                f"{expected_padded[1]})"
            )
        ph, pw = header.padded_height, header.padded_width
        expected_y = (self.model.M, ph // Y_STRIDE, pw // Y_STRIDE)
        expected_z = (self.model.N, ph // Z_STRIDE, pw // Z_STRIDE)
        if header.y_shape != expected_y or header.z_shape != expected_z:
            raise CorruptBitstreamError(
                f"latent shapes y {header.y_shape}, z {header.z_shape} do not match the image "
                f"(expected {expected_y}, {expected_z})"
            )
        kinds = [StreamKind.Z, StreamKind.Y]
        if StreamKind.ESCAPES in header.stream_kinds:
            kinds.append(StreamKind.ESCAPES)
        if header.mode.has_alpha:
            kinds.append(StreamKind.ALPHA)
        if list(header.stream_kinds) != kinds:
            raise CorruptBitstreamError(
                f"streams {[k.name for k in header.stream_kinds]} do not fit a "
                f"{header.mode.name} image (expected {[k.name for k in kinds]})"
            )

    def decode_detailed(self, data: bytes) -> DecodedImage:
        """:meth:`decode`, also returning the header, ŷ and the padded reconstruction."""
        header, streams = read_container(data, self.limits)
        self.check_header(header)
        by_kind = dict(zip(header.stream_kinds, streams, strict=True))
        z_count = int(np.prod(header.z_shape))
        y_count = int(np.prod(header.y_shape))
        check_rans_stream(by_kind[StreamKind.Z], z_count, "z")
        check_rans_stream(by_kind[StreamKind.Y], y_count, "y")
        escapes = parse_escapes(by_kind.get(StreamKind.ESCAPES), z_count + y_count)
        alpha = None
        if header.mode.has_alpha:
            alpha = _inflate_alpha(by_kind[StreamKind.ALPHA], header.width, header.height)
        with self._coding(), LatentHasher(header.width, header.height, header.mode) as hasher:
            y_hat, x_hat = self._decode_latents(header, by_kind, escapes, hasher)
        return DecodedImage(restore_image(x_hat, header, alpha), header, y_hat, x_hat)

    def _decode_latents(
        self,
        header: Header,
        streams: dict[StreamKind, bytes],
        escapes: tuple[np.ndarray, np.ndarray],
        hasher: LatentHasher,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """ŷ and x̂ of a checked file. The host's work per coding step is the rANS decoding of
        the step's symbols (the next step needs them); the hashing of what was decoded runs in
        ``hasher``'s worker thread meanwhile, and the hash is compared while the synthesis
        transform runs (its result is returned only after the check)."""
        N, zh, zw = header.z_shape
        z_count, y_count = N * zh * zw, math.prod(header.y_shape)
        z_reader = SymbolReader(
            streams[StreamKind.Z], z_count, self._tables["z"], hasher, escapes, 0, self.coder
        )
        z_values = z_reader.take(np.repeat(np.arange(N, dtype=np.int32), zh * zw))
        z_reader.finish()
        z_q = torch.from_numpy(z_values.astype(np.float32)).view(1, N, zh, zw).to(self.device)
        y_reader = SymbolReader(
            streams[StreamKind.Y], y_count, self._tables["y"], hasher, escapes, z_count, self.coder
        )

        def feed(k: int, outputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
            # The entropy decoder reads step k's symbols with the table rows of its scales.
            values = y_reader.take(outputs[0].cpu().numpy())
            return torch.from_numpy(values.astype(np.float32))

        graph = self._graph("decode", z_q, self._decoder_tensors)
        if graph is None:
            steps = itertools.count()

            def split(outputs: Any, like: torch.Tensor) -> torch.Tensor:
                return feed(next(steps), tuple(outputs)).to(self.device).view_as(like)

            y_hat, x_hat = self._decoder_tensors(z_q, split)
        else:
            static, chain = graph
            static.copy_(z_q)
            y_hat, x_hat = (t.clone() for t in chain.replay(feed))
        y_reader.finish()
        latent_hash = hasher.digest()
        if latent_hash != header.latent_hash:
            raise DecodeMismatchError(
                "the decoded latents differ from the encoder's (latent hash "
                f"{latent_hash.hex()} instead of {header.latent_hash.hex()}): the decoder lost "
                "synchronization, e.g. because it runs on a device whose floating-point results "
                "differ from the encoder's (or the header's size or mode was altered); no image "
                "is returned"
            )
        return y_hat, x_hat

    def _decoder_tensors(self, z_q: torch.Tensor, split: Split) -> tuple[torch.Tensor, ...]:
        """The decoder's network part from the hyper-latent: ``(ŷ, x̂)``; ``split(outputs,
        like)`` hands each step's table rows to the entropy decoder and returns its symbols."""
        model = self.model
        params = model.h_s(z_q + model.means_hyper)

        def decode(step: Any) -> torch.Tensor:
            # int32 on the device: half the bytes to copy, and what the rANS decoder takes.
            return split((_scale_indexes(model, step.scales).to(torch.int32),), step.means)

        y_hat = model.run_schedule(params, decode)
        with precision(self.synthesis, self.device):
            x_hat = model.g_s(y_hat).float().clamp_(0, 1)
        return y_hat, x_hat


def _inflate_alpha(stream: bytes, width: int, height: int) -> np.ndarray:
    size = width * height
    inflater = zlib.decompressobj()
    try:
        plane = inflater.decompress(stream, size)
    except zlib.error as err:
        raise CorruptBitstreamError(f"alpha stream is not valid zlib data ({err})") from None
    if len(plane) != size or not inflater.eof or inflater.unconsumed_tail or inflater.unused_data:
        raise CorruptBitstreamError(f"alpha stream does not hold exactly {width}x{height} bytes")
    return np.frombuffer(plane, dtype=np.uint8).reshape(height, width)


def encode_image(model: HPCM, image: Image.Image, *, model_id: str | None = None) -> bytes:
    """Compress one image with ``model`` (see :class:`ImageCodec`; prefer it for many images)."""
    return ImageCodec(model, model_id).encode(image)


def decode_image(model: HPCM, data: bytes, *, model_id: str | None = None) -> Image.Image:
    """Decompress one ``.hpcm`` file with ``model`` (see :class:`ImageCodec`)."""
    return ImageCodec(model, model_id).decode(data)
