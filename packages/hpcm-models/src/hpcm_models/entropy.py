"""The generalized Gaussian entropy model of HPCM and its rANS tables.

HPCM codes every latent with a zero-mean generalized Gaussian of shape β = 1.5 (Zhang et al.,
"On Generalized Gaussian Models for Learned Image Compression", 2024), discretized on the integer
grid:

    p(x | α) = F((x + ½) / α) − F((x − ½) / α),
    F(u) = ½ (1 + sign(u) · P(1/β, |u|^β)),

with P the regularized lower incomplete gamma function, α the scale (bounded below by 0.12) and
p bounded below by 1e-9. Entropy coding uses CompressAI's rANS with one quantized CDF per entry of
a scale table, as CompressAI's ``GaussianConditional`` does for Gaussians: the entropy model owns
those tables (:meth:`GeneralizedGaussian.update`), maps scales to table rows
(:meth:`~GeneralizedGaussian.build_indexes`) and hands the tables to the coder
(:meth:`~GeneralizedGaussian.rans_tables`, :class:`RansTables`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.stats
import torch
from compressai._CXX import pmf_to_quantized_cdf
from compressai.ops import LowerBound
from torch import nn

from .errors import CheckpointError

__all__ = [
    "CODING_BUFFERS",
    "MAX_TABLE_ENTRIES",
    "MAX_TABLE_ROWS",
    "RANS_PRECISION",
    "GeneralizedGaussian",
    "RansTables",
    "default_scale_table",
    "generalized_gaussian_cdf",
    "generalized_gaussian_cdf_reference",
    "is_dense_tensor",
]

#: The rANS tables of :class:`GeneralizedGaussian`, in the order and under the names that HPCM's
#: state dict (and the official checkpoints) give them: the scale table, then for the
#: hyper-latent ``z`` (one row per channel) and the latent ``y`` (one row per scale-table entry)
#: the quantized CDFs, their lengths and the offsets of their first symbols.
CODING_BUFFERS: tuple[str, ...] = (
    "scale_table",
    "quantized_cdf_z",
    "cdf_length_z",
    "offset_z",
    "quantized_cdf_y",
    "cdf_length_y",
    "offset_y",
)

#: Bits of the quantized CDFs: CompressAI's rANS (ryg_rans, 64-bit state) codes 16-bit frequencies.
RANS_PRECISION = 16
_RANS_TOTAL = 1 << RANS_PRECISION

# The scale table of the official test script: 60 log-spaced scales from 0.12 to 64.
SCALE_TABLE_MIN = 0.12
SCALE_TABLE_MAX = 64.0
SCALE_TABLE_LEVELS = 60


# The default table as float32 bit patterns: exp(linspace(log 0.12, log 64, 60)) exactly as ATen
# computes it in float32 with its AVX2 kernels (a linspace whose `start + step * i` the compiler
# contracts into an FMA, then SLEEF's vectorized expf). Computing it at run time gave other last
# bits on other CPUs (ATen's scalar kernels, ATEN_CPU_CAPABILITY=default, differ in 29 of the 60
# entries), and the config hash of every file whose checkpoint carries no table (the authors')
# covers these bits: such files were refused across machines. Written out, the table is the same
# everywhere, and files made by earlier code on AVX2 machines keep decoding.
_DEFAULT_SCALE_TABLE_BITS = (
    0x3DF5C28F, 0x3E08ADCD, 0x3E180703, 0x3E291974, 0x3E3C16AE, 0x3E5135CD, 0x3E68B41F, 0x3E816AEA,
    0x3E8FF360, 0x3EA01DA1, 0x3EB21899, 0x3EC61875, 0x3EDC5742, 0x3EF5158F, 0x3F084D96, 0x3F179BFE,
    0x3F28A26B, 0x3F3B9247, 0x3F50A288, 0x3F681050, 0x3F810FCF, 0x3F8F8E0B, 0x3F9FACEC, 0x3FB19B3B,
    0x3FC58D03, 0x3FDBBC27, 0x3FF46908, 0x4007EDA3, 0x40173145, 0x40282BB6, 0x403B0E3B, 0x40500FA8,
    0x40676CF2, 0x4080B4F4, 0x408F28FD, 0x409F3C83, 0x40B11E33, 0x40C501F1, 0x40DB2177, 0x40F3BCFB,
    0x41078DF4, 0x4116C6D6, 0x4127B554, 0x413A8A90, 0x414F7D31, 0x4166CA09, 0x41805A5A, 0x418EC435,
    0x419ECC6C, 0x41B0A185, 0x41C47743, 0x41DA8737, 0x41F31168, 0x42072E88, 0x42165CB1, 0x42273F43,
    0x423A073E, 0x424EEB23, 0x42662793, 0x42800000,
)  # fmt: skip

#: Largest rANS tables :meth:`GeneralizedGaussian.quantized_cdfs` builds: rows (scales), and rows
#: times the longest row. The default y table has 60 rows of at most 699 entries; a scale table
#: or hyper-latent scales from a checkpoint beyond these are refused before anything is allocated.
MAX_TABLE_ROWS = 4096
MAX_TABLE_ENTRIES = 1 << 22


def default_scale_table(
    min_scale: float = SCALE_TABLE_MIN,
    max_scale: float = SCALE_TABLE_MAX,
    levels: int = SCALE_TABLE_LEVELS,
) -> torch.Tensor:
    """``exp(linspace(log min, log max, levels))`` in float32: the scales that get a quantized CDF.

    The default arguments give a fixed table (the same bits on every machine; see the comment on
    ``_DEFAULT_SCALE_TABLE_BITS``); other arguments are computed in float64 by Python's ``math``
    and rounded to float32 once.
    """
    if (min_scale, max_scale, levels) == (SCALE_TABLE_MIN, SCALE_TABLE_MAX, SCALE_TABLE_LEVELS):
        bits = torch.tensor(_DEFAULT_SCALE_TABLE_BITS, dtype=torch.int64).to(torch.int32)
        return bits.view(torch.float32)
    if levels < 2 or not 0 < min_scale < max_scale:
        raise ValueError(
            f"expected 0 < min < max and levels >= 2, got {min_scale, max_scale, levels}"
        )
    low, high = math.log(min_scale), math.log(max_scale)
    steps = [math.exp(low + (high - low) * i / (levels - 1)) for i in range(levels)]
    return torch.tensor(steps, dtype=torch.float32)


class _GeneralizedGaussianCDF(torch.autograd.Function):
    """Standard generalized Gaussian CDF with the closed-form derivative (its density)."""

    @staticmethod
    def forward(ctx, beta: torch.Tensor, u: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        # Same float operations, in the same order, as the official model (parity depends on it).
        power = torch.pow(torch.abs(u), beta)
        ctx.save_for_backward(beta, power)
        return (1 + torch.sign(u) * torch.special.gammainc(1 / beta, power)) / 2

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[None, torch.Tensor]:  # type: ignore[override]
        beta, power = ctx.saved_tensors
        density = torch.exp(-power - torch.special.gammaln(1 / beta)) * beta / 2
        return None, grad * density


def generalized_gaussian_cdf(u: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """CDF of the standard (unit-scale) generalized Gaussian of shape ``beta``, elementwise.

    ``F(u) = ½ (1 + sign(u) · P(1/β, |u|^β))``. The gradient is the closed-form density
    ``β / (2Γ(1/β)) · exp(−|u|^β)`` (no gradient for ``beta``), which stays finite at ``u = 0``
    where differentiating through ``|u|^β`` would not.

    Args:
        u: standardized values, any shape.
        beta: shape parameter, a tensor broadcastable to ``u`` (``[1]`` in HPCM).
    """
    return _GeneralizedGaussianCDF.apply(beta, u)


def generalized_gaussian_cdf_reference(u: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """:func:`generalized_gaussian_cdf` through plain autograd (the reference for tests)."""
    return (1 + torch.sign(u) * torch.special.gammainc(1 / beta, torch.abs(u) ** beta)) / 2


@dataclass(frozen=True)
class RansTables:
    """One latent's rANS tables as CompressAI's coder takes them, and each row's symbol range.

    Row ``i`` has ``sizes[i]`` CDF entries and codes the symbols ``offsets[i] + j``; the regular
    symbols are ``low[i] … high[i]``, and the last symbol of a row (``high[i] + 1``) is the escape
    ("bypass") symbol of values outside that range.

    :meth:`from_model` builds escape-free tables: the escape's frequency goes to the last regular
    symbol (``cdf[n-2] = 2^16``), so a decoder can never enter bypass decoding, whose reads are
    unbounded on garbage; escaped values travel in a stream of their own instead
    (:mod:`hpcm_models.rans`). Costs at most 2^-16 of probability mass per row.
    """

    cdfs: list[list[int]]
    sizes: list[int]
    offsets: list[int]
    low: np.ndarray  # int64 [rows]: smallest regular symbol
    high: np.ndarray  # int64 [rows]: largest regular symbol

    @classmethod
    def from_model(cls, model: Any, latent: str) -> RansTables:
        """Escape-free tables of ``latent`` (``"z"`` or ``"y"``), validated row by row, from any
        object holding the tables (a :class:`GeneralizedGaussian`, or an HPCM model).

        Raises:
            CheckpointError: empty or malformed tables (the C++ coder trusts its tables).
        """
        cdf = getattr(model, f"quantized_cdf_{latent}").detach().to("cpu", torch.int64)
        lengths = getattr(model, f"cdf_length_{latent}").detach().to("cpu", torch.int64).flatten()
        offsets = getattr(model, f"offset_{latent}").detach().to("cpu", torch.int64).flatten()
        rows = cdf.shape[0] if cdf.dim() == 2 else -1
        if rows < 1 or lengths.numel() != rows or offsets.numel() != rows:
            raise CheckpointError(
                f"rANS tables of {latent} are malformed: quantized_cdf_{latent} "
                f"{list(cdf.shape)}, cdf_length_{latent} {list(lengths.shape)}, "
                f"offset_{latent} {list(offsets.shape)}"
            )
        cdfs, sizes = [], []
        for i, n in enumerate(lengths.tolist()):
            row = cdf[i, :n].tolist() if 4 <= n <= cdf.shape[1] else []
            valid = (
                len(row) == n
                and row[0] == 0
                and row[-1] == _RANS_TOTAL
                and bool((np.diff(row) > 0).all())
            )
            if not valid:
                # The C++ decoder trusts its tables; a malformed row would make it read astray.
                raise CheckpointError(
                    f"rANS table row {i} of {latent} is malformed (expected >= 4 strictly "
                    f"increasing entries from 0 to {_RANS_TOTAL}); rebuild with model.update()"
                )
            row[n - 2] = _RANS_TOTAL
            cdfs.append(row)
            sizes.append(n)
        return cls(cdfs, sizes, offsets.tolist(), *_symbol_range(offsets, lengths))


def _symbol_range(offsets: torch.Tensor, lengths: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    low = offsets.numpy().astype(np.int64)
    return low, low + lengths.numpy().astype(np.int64) - 3


class GeneralizedGaussian(nn.Module):
    """Discretized zero-mean generalized Gaussian likelihoods (the official ``GGM``), and its rANS
    tables.

    Buffers saved in its state dict: ``beta`` [1], ``scale_lower_bound.bound`` [1],
    ``likelihood_lower_bound.bound`` [1]. The rANS tables (:data:`CODING_BUFFERS`, built by
    :meth:`update`) are buffers too, but not in this module's state dict: HPCM saves them at the
    top level of its own, under those names, as the official checkpoints do.

    Args:
        beta: shape parameter β (1.5 in HPCM; 2 is a Gaussian, 1 a Laplacian).
        scale_bound: lower bound on scales α.
        likelihood_bound: lower bound on returned likelihoods.
    """

    def __init__(
        self, beta: float = 1.5, scale_bound: float = 0.12, likelihood_bound: float = 1e-9
    ) -> None:
        super().__init__()
        self.scale_lower_bound = LowerBound(scale_bound)
        self.likelihood_lower_bound = LowerBound(likelihood_bound)
        self.register_buffer("beta", torch.tensor([float(beta)]))
        for name in CODING_BUFFERS:
            self.register_buffer(name, torch.empty(0), persistent=False)

    def forward(
        self, inputs: torch.Tensor, scales: torch.Tensor, means: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Likelihood of each element of ``inputs`` (broadcast against ``scales``/``means``).

        Args:
            inputs: values (integers when coding; noisy values when training).
            scales: scales α, broadcastable to ``inputs``.
            means: optional means subtracted first.

        Returns:
            likelihoods in ``[likelihood_bound, 1]``, the broadcast shape.
        """
        values = inputs - means if means is not None else inputs
        scales = self.scale_lower_bound(scales)
        upper = generalized_gaussian_cdf((values + 0.5) / scales, self.beta)
        lower = generalized_gaussian_cdf((values - 0.5) / scales, self.beta)
        return self.likelihood_lower_bound(upper - lower)

    @torch.no_grad()
    def quantized_cdfs(
        self, scales: torch.Tensor, tail_mass: float = 1e-6, precision: int = 16
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """rANS tables for the distributions of the given scales, CompressAI's layout.

        Each scale α gets a pmf over the integers ``[-c, c]`` with ``c = ceil(α · q)``, ``q`` the
        ``1 − tail_mass/2`` quantile of the unit distribution, plus one escape symbol that carries
        the tails; the pmf is quantized to ``precision`` bits by
        CompressAI's ``pmf_to_quantized_cdf``. Computed in float64.

        Args:
            scales: ``[S]`` scales (bounded below by the module's scale bound).
            tail_mass: probability left outside ``[-c, c]`` (coded by the escape symbol).
            precision: bits of the quantized CDFs (16 for CompressAI's rANS).

        Returns:
            ``(cdf, cdf_length, offset)``: int32 ``[S, L + 2]``, ``[S]`` and ``[S]``, where ``L`` is
            the longest pmf; row ``i`` holds ``cdf_length[i]`` valid entries and symbol ``s`` maps
            to CDF entry ``s - offset[i]``.
        """
        if scales.dim() != 1 or not 0 < scales.numel() <= MAX_TABLE_ROWS:
            raise ValueError(
                f"expected scales of shape [S] with 1 <= S <= {MAX_TABLE_ROWS}, got "
                f"{list(scales.shape)}"
            )
        beta = float(self.beta.item())
        bound = float(self.scale_lower_bound.bound)
        scales64 = scales.detach().double().cpu().clamp_min(bound)
        multiplier = -float(scipy.stats.gennorm.ppf(tail_mass / 2, beta))
        half_widths = torch.ceil(scales64 * multiplier)
        longest = float(half_widths.max()) * 2 + 3
        if not math.isfinite(longest) or len(scales64) * longest > MAX_TABLE_ENTRIES:
            raise ValueError(
                f"{len(scales64)} scales up to {float(scales64.max()):.4g} would need tables of "
                f"{len(scales64)} x {longest:.4g} entries; the limit is {MAX_TABLE_ENTRIES}"
            )
        center = half_widths.to(torch.int32)
        pmf_length = 2 * center + 1
        max_length = int(pmf_length.max())

        samples = torch.arange(max_length, dtype=torch.float64) - center[:, None].double()
        beta64 = torch.tensor([beta], dtype=torch.float64)
        upper = generalized_gaussian_cdf_reference((samples + 0.5) / scales64[:, None], beta64)
        lower = generalized_gaussian_cdf_reference((samples - 0.5) / scales64[:, None], beta64)
        pmf = upper - lower
        tail = lower[:, 0] + (1 - upper.gather(1, (pmf_length - 1).long()[:, None])[:, 0])

        cdf = torch.zeros(len(scales64), max_length + 2, dtype=torch.int32)
        for i in range(len(scales64)):
            n = int(pmf_length[i])
            row = pmf_to_quantized_cdf([*pmf[i, :n].tolist(), float(tail[i])], precision)
            cdf[i, : len(row)] = torch.tensor(row, dtype=torch.int32)
        device = scales.device
        return cdf.to(device), (pmf_length + 2).to(device), (-center).to(device)

    # ------------------------------------------------------------------ rANS tables

    def update(
        self,
        hyper_scales: torch.Tensor,
        scale_table: torch.Tensor | None = None,
        force: bool = False,
    ) -> bool:
        """Build the rANS tables: one CDF per channel of ``z`` (scales ``hyper_scales``) and one
        per entry of the scale table for ``y``.

        Args:
            hyper_scales: the hyper-latent's per-channel scales (any shape, one per channel); the
                tables go to their device.
            scale_table: increasing positive scales ``[S]``; default :func:`default_scale_table`.
            force: rebuild even if the tables exist.

        Returns:
            True if the tables were (re)built.

        Raises:
            ValueError: for a scale table that is empty, not positive or not increasing.
        """
        if self.offset_y.numel() > 0 and not force:
            return False
        table = default_scale_table() if scale_table is None else torch.as_tensor(scale_table)
        table = table.detach().float().flatten()
        if not bool((table > 0).all()) or not bool((table.diff() > 0).all()):
            shown = table if table.numel() <= 8 else f"{table.numel()} entries"
            raise ValueError(f"expected an increasing table of positive scales, got {shown}")
        device = hyper_scales.device
        cdf_z, length_z, offset_z = self.quantized_cdfs(hyper_scales.detach().flatten())
        cdf_y, length_y, offset_y = self.quantized_cdfs(table)
        tables = (table, cdf_z, length_z, offset_z, cdf_y, length_y, offset_y)
        for name, value in zip(CODING_BUFFERS, tables, strict=True):
            self.register_buffer(name, value.to(device), persistent=False)
        return True

    def clear_tables(self) -> None:
        """Empty the rANS tables (training changes the scales they were built from)."""
        for name in CODING_BUFFERS:
            self.register_buffer(name, torch.empty(0, device=self.beta.device), persistent=False)

    def tables(self) -> dict[str, torch.Tensor]:
        """The rANS tables by name (:data:`CODING_BUFFERS`), as stored (empty before
        :meth:`update`)."""
        return {name: getattr(self, name) for name in CODING_BUFFERS}

    def set_table(self, name: str, value: torch.Tensor) -> None:
        """Replace the table ``name`` by a copy of ``value``, whatever its size and integer type
        (e.g. from a checkpoint), on this module's device."""
        if name not in CODING_BUFFERS:
            raise KeyError(f"{name!r} is not a coding table; expected one of {CODING_BUFFERS}")
        copy = value.detach().to(self.beta.device, copy=True)
        self.register_buffer(name, copy, persistent=False)

    def build_indexes(self, scales: torch.Tensor) -> torch.Tensor:
        """Row of the ``y`` table of each scale: the first scale-table entry >= it (the last
        entry for larger scales); int64, flattened, on the scales' device."""
        boundaries = self.scale_table[:-1].to(scales)
        index = torch.bucketize(scales, boundaries).flatten()
        return index.clamp_(0, self.scale_table.numel() - 1)

    def rans_tables(self, latent: str, *, escapes: bool = True) -> RansTables:
        """The tables of ``latent`` (``"z"`` or ``"y"``) as the rANS coder takes them.

        Args:
            latent: ``"z"`` or ``"y"``.
            escapes: keep CompressAI's escape symbol, coded in bypass mode
                (:meth:`hpcm_models.HPCM.compress`); ``False``: escape-free and validated
                (:meth:`RansTables.from_model`, what the ``.hpcm`` codec uses).

        Raises:
            RuntimeError: the tables are empty (``escapes=True``; call :meth:`update` first).
            CheckpointError: the tables are empty or malformed (``escapes=False``).
        """
        if not escapes:
            return RansTables.from_model(self, latent)
        offsets = getattr(self, f"offset_{latent}")
        if offsets.numel() == 0:
            raise RuntimeError(
                "the entropy-coding tables are empty: call model.update() once after loading the "
                "weights, before compress() or decompress()"
            )
        lengths = getattr(self, f"cdf_length_{latent}").reshape(-1).int()
        offsets = offsets.reshape(-1).int()
        return RansTables(
            getattr(self, f"quantized_cdf_{latent}").tolist(),
            lengths.tolist(),
            offsets.tolist(),
            *_symbol_range(offsets.cpu().long(), lengths.cpu().long()),
        )

    # ------------------------------------------------------------------ tables in files

    def packed_tables(self) -> dict[str, torch.Tensor]:
        """The rANS tables as a weights file carries them (:data:`CODING_BUFFERS`, on the CPU):
        ``quantized_cdf_z`` / ``quantized_cdf_y`` hold their rows' valid entries back to back,
        int32 ``[sum(cdf_length)]`` (the padded ``[rows, longest]`` layout is mostly zeros);
        :meth:`load_packed_tables` restores them.

        Raises:
            RuntimeError: the tables are empty (call :meth:`update` first).
        """
        if self.offset_y.numel() == 0 or self.offset_z.numel() == 0:
            raise RuntimeError("the rANS tables are empty: call update() before packing them")
        packed = {}
        for name, value in self.tables().items():
            value = value.detach().to("cpu")
            if name.startswith("quantized_cdf_"):
                lengths = getattr(self, f"cdf_length_{name[-1]}").reshape(-1).tolist()
                value = torch.cat([row[:n] for row, n in zip(value, lengths, strict=True)])
            packed[name] = value.to(torch.float32 if name == "scale_table" else torch.int32)
        return packed

    def load_packed_tables(self, tables: Mapping[str, Any], channels: int) -> None:
        """Install tables from :meth:`packed_tables` (e.g. read from a weights file) instead of
        building them, after checking that they are complete and well formed: an increasing
        positive scale table, one ``z`` row per hyper-latent channel and one ``y`` row per scale,
        symmetric rows (``offset = -(cdf_length - 3) / 2``) and valid CDFs
        (:meth:`RansTables.from_model`).

        Args:
            tables: the seven tables by name.
            channels: the hyper-latent's channels (N), the rows of the ``z`` table.

        Raises:
            CheckpointError: names what is missing or malformed; nothing is installed then.
        """
        names = set(tables) if isinstance(tables, Mapping) else set()
        if names != set(CODING_BUFFERS) or not all(is_dense_tensor(v) for v in tables.values()):
            raise CheckpointError(
                f"expected the coding tables {', '.join(CODING_BUFFERS)} as dense tensors, got "
                f"{sorted(map(str, names))[:10] if names else type(tables).__name__}"
            )
        scales = tables["scale_table"].detach().to("cpu")
        if not 1 <= scales.numel() <= MAX_TABLE_ROWS:
            raise CheckpointError(
                f"the file's scale table has {scales.numel()} entries; expected 1..{MAX_TABLE_ROWS}"
            )
        if not (
            scales.is_floating_point()
            and scales.dim() == 1
            and bool(torch.isfinite(scales).all())
            and bool((scales > 0).all())
            and bool((scales.diff() > 0).all())
        ):
            raise CheckpointError(
                f"the file's scale table is not an increasing table of positive scales: {scales}"
            )
        unpacked: dict[str, torch.Tensor] = {"scale_table": scales.float().clone()}
        for latent, rows in (("z", channels), ("y", scales.numel())):
            cdf, lengths, offsets = _unpack_rows(tables, latent, rows)
            unpacked |= {
                f"quantized_cdf_{latent}": cdf,
                f"cdf_length_{latent}": lengths,
                f"offset_{latent}": offsets,
            }
        for latent in ("z", "y"):  # every row a valid CDF, before anything is installed
            RansTables.from_model(_Tables(unpacked), latent)
        for name, value in unpacked.items():
            self.set_table(name, value)

    def extra_repr(self) -> str:
        return f"beta={float(self.beta.item()):g}"


def is_dense_tensor(value: Any) -> bool:
    """Whether ``value`` is a tensor with ordinary storage (not sparse, quantized or on the meta
    device): what tables and weights read from a file must be."""
    return (
        isinstance(value, torch.Tensor)
        and value.layout == torch.strided
        and not value.is_meta
        and not value.is_quantized
    )


class _Tables:
    """Tables by name as attributes (what :meth:`RansTables.from_model` reads)."""

    def __init__(self, tables: Mapping[str, torch.Tensor]) -> None:
        self.__dict__.update(tables)


def _unpack_rows(
    tables: Mapping[str, torch.Tensor], latent: str, rows: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(cdf [rows, longest], cdf_length [rows], offset [rows])`` of one latent's packed tables,
    checked for counts and symmetry (the CDF values are checked by :class:`RansTables`)."""
    flat, lengths, offsets = (
        tables[f"{kind}_{latent}"].detach().to("cpu")
        for kind in ("quantized_cdf", "cdf_length", "offset")
    )
    if any(t.is_floating_point() or t.is_complex() or t.dim() != 1 for t in (flat, lengths)) or (
        offsets.is_floating_point() or offsets.dim() != 1
    ):
        raise CheckpointError(
            f"expected 1-D integer tables for {latent}, got quantized_cdf_{latent} "
            f"{flat.dtype}{list(flat.shape)}, cdf_length_{latent} {lengths.dtype}"
            f"{list(lengths.shape)}, offset_{latent} {offsets.dtype}{list(offsets.shape)}"
        )
    lengths, offsets = lengths.long(), offsets.long()
    if lengths.numel() != rows or offsets.numel() != rows:
        raise CheckpointError(
            f"expected {rows} rows in the {latent} tables, got {lengths.numel()} lengths and "
            f"{offsets.numel()} offsets"
        )
    # A 16-bit CDF has at most 2^16 symbols (each needs a frequency >= 1): 2^16 + 1 entries.
    if bool((lengths < 4).any()) or bool((lengths > _RANS_TOTAL + 1).any()):
        raise CheckpointError(f"the {latent} table has rows shorter than 4 or longer than 2^16+1")
    # The rows are unpacked into [rows, longest]: bounded like the tables update() builds.
    if rows > MAX_TABLE_ROWS or rows * int(lengths.max()) > MAX_TABLE_ENTRIES:
        raise CheckpointError(
            f"the {latent} tables of {rows} rows up to {int(lengths.max())} entries exceed the "
            f"limits ({MAX_TABLE_ROWS} rows, {MAX_TABLE_ENTRIES} entries)"
        )
    if int(lengths.sum()) != flat.numel():
        raise CheckpointError(
            f"quantized_cdf_{latent} holds {flat.numel()} entries, its rows need "
            f"{int(lengths.sum())}"
        )
    if not torch.equal(offsets, -torch.div(lengths - 3, 2, rounding_mode="floor")):
        raise CheckpointError(
            f"offset_{latent} does not fit cdf_length_{latent}: the rows must be symmetric "
            "(offset = -(cdf_length - 3) / 2)"
        )
    cdf = torch.zeros(rows, int(lengths.max()), dtype=torch.int32)
    for i, row in enumerate(torch.split(flat.long(), lengths.tolist())):
        cdf[i, : row.numel()] = row.to(torch.int32)
    return cdf, lengths.to(torch.int32), offsets.to(torch.int32)
