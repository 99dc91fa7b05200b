"""Exceptions users can cause. The CLI prints these as one line and exits non-zero."""

from __future__ import annotations

import re

__all__ = [
    "BitstreamError",
    "CheckpointError",
    "CorruptBitstreamError",
    "DatasetError",
    "DecodeMismatchError",
    "DeviceError",
    "EncodeError",
    "FileAccessError",
    "HPCMError",
    "ImageError",
    "InputShapeError",
    "LimitExceededError",
    "PretrainedWeightsError",
    "ResultsFormatError",
    "TrainingDivergedError",
    "TruncatedBitstreamError",
    "UnsupportedFormatError",
    "WeightsIntegrityError",
    "WeightsMismatchError",
    "plain_text",
]

# ANSI escape sequences (CSI ... final byte, OSC ... BEL/ST), then any other control character.
_ANSI = re.compile(r"\x1b(\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(\x07|\x1b\\)?|[@-Z\\-_])")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def plain_text(text: str) -> str:
    """``text`` without terminal escape sequences and control characters (kept: newlines and
    tabs): what an error message may print, whatever a file or a library put into it."""
    return _CONTROL.sub("", _ANSI.sub("", text))


class HPCMError(Exception):
    """Base class of every error hpcm-models raises on purpose (bad input, bad file, bad flags)."""


class CheckpointError(HPCMError):
    """A checkpoint does not fit the model: missing or unexpected keys, or mismatched shapes."""


class PretrainedWeightsError(HPCMError, ValueError):
    """Shipped weights were asked for that this installation does not have (a model without
    shipped weights, an unknown quality, the weights a file names), or with constructor arguments
    that contradict them."""


class WeightsIntegrityError(CheckpointError):
    """A shipped weights file is missing, or its size or SHA-256 differs from the table's."""


class InputShapeError(HPCMError, ValueError):
    """An image or bitstream has a shape the model cannot code (e.g. sides not multiples of 128)."""


class ImageError(HPCMError):
    """An input image cannot be read or has a mode/bit depth the codec does not handle, or an
    output image cannot be written in the requested format."""


class FileAccessError(HPCMError, OSError):
    """An input file cannot be read or an output file cannot be written (missing, permissions)."""


class DeviceError(HPCMError, ValueError):
    """A requested device is unknown or not available (e.g. ``cuda`` without a GPU)."""


class EncodeError(HPCMError):
    """The model produced latents that cannot be coded (non-finite or beyond 32-bit integers):
    its weights or the input are broken."""


class DatasetError(HPCMError):
    """An image folder is missing, empty, or holds no image large enough for the patches."""


class TrainingDivergedError(HPCMError):
    """The loss became NaN or infinite; training stopped without writing a checkpoint."""


class ResultsFormatError(HPCMError):
    """A results file cannot be used: unreadable, not CompressAI's layout, or unusable points."""


class BitstreamError(HPCMError):
    """A compressed file cannot be decoded. Subclasses say why; none ever yields an image."""


class UnsupportedFormatError(BitstreamError):
    """Not an hpcm file (bad magic) or a format version this release cannot read."""


class TruncatedBitstreamError(BitstreamError):
    """The file ends before the header or a stream is complete."""


class CorruptBitstreamError(BitstreamError):
    """A checksum fails or a header field is inconsistent: the file was damaged."""


class LimitExceededError(BitstreamError):
    """A header asks for more pixels or latents than the configured safety limits allow."""


class WeightsMismatchError(BitstreamError):
    """The file was encoded with other model weights than the ones given for decoding."""


class DecodeMismatchError(BitstreamError):
    """The decoder's latents differ from the encoder's (e.g. encoded on another device whose
    floating-point results differ): the reconstruction would be wrong, so it is refused."""
