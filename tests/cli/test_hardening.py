"""Issue 18: no input, path or checkpoint can crash ``hpcm compress``/``decompress``, exhaust
memory or destroy a file. One test (or more) per item of the issue, at the CLI where the issue
describes the CLI; signals are sent to real processes."""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import signal
import stat
import struct
import subprocess
import sys
import time
import warnings
import zlib
from importlib.resources import files

import pytest
import torch
from helpers import drain_fifo, feed_fifo
from PIL import Image
from shipped import make_weights_dir

from hpcm_models import HPCM_MICRO
from hpcm_models.checkpoints import TABLES_KEY, model_kwargs_to_json, random_model
from hpcm_models.cli import main
from hpcm_models.container import FORMAT_VERSION, MAGIC, Limits, read_container
from hpcm_models.errors import ImageError
from hpcm_models.files import STALE_TEMP_SECONDS, TEMP_SUFFIX
from hpcm_models.image_io import image_size, read_image
from hpcm_models.pretrained import WEIGHTS_ENV

MICRO = model_kwargs_to_json({"M": 16, "N": 8, "config": HPCM_MICRO})
CONFIG_JSON = json.dumps({"config": MICRO["config"]})
RANDOM = ["--random-weights", "--model-kwargs", CONFIG_JSON]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A checkpoint, a small image and its ``.hpcm`` file."""
    root = tmp_path_factory.mktemp("hardening")
    model = random_model("hpcm-base", seed=0, **MICRO)
    ckpt = {"model": model.state_dict(), "model_name": "hpcm-base", "model_kwargs": MICRO}
    torch.save(ckpt, root / "a.pt")
    with Image.open(files("hpcm_models") / "data" / "rocket.png") as image:
        image.convert("RGB").crop((0, 0, 40, 30)).save(root / "rgb.png")
    assert (
        main(
            [
                "compress",
                str(root / "rgb.png"),
                str(root / "ok.hpcm"),
                "--checkpoint",
                str(root / "a.pt"),
            ]
        )
        == 0
    )
    return root


def hpcm(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def refused(capsys, fragment: str, *args) -> str:
    """Run ``hpcm *args``: exit status 1, nothing on stdout, one line on stderr with
    ``fragment``."""
    code, out, err = hpcm(capsys, *args)
    assert (code, out) == (1, ""), err
    assert err.count("\n") == 1, err
    assert err.startswith(f"hpcm {args[0]}: error: "), err
    assert fragment in err, err
    assert "\x1b" not in err
    return err


def forge(header, streams, **fields) -> bytes:
    """A file with ``header`` changed by ``fields`` and valid CRCs of the header (the streams'
    lengths and CRCs are whatever ``fields`` say)."""
    body = dataclasses.replace(header, **fields).pack()
    head = struct.pack("<8sHI", MAGIC, FORMAT_VERSION, len(body)) + body
    return head + struct.pack("<I", zlib.crc32(head)) + b"".join(streams)


def listing(path) -> set[str]:
    return {p.name for p in path.iterdir()}


def compress(work, out, *more) -> list:
    return ["compress", work / "rgb.png", out, "--checkpoint", work / "a.pt", *more]


def decompress(work, out, *more, source=None) -> list:
    return ["decompress", source or work / "ok.hpcm", out, "--checkpoint", work / "a.pt", *more]


# ---------------------------------------------------------------- 1. outputs that are not files


def test_1_outputs_that_are_not_regular_files_are_refused(capsys, work, tmp_path) -> None:
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "real.hpcm").write_bytes(b"old")
    (tmp_path / "link.hpcm").symlink_to(tmp_path / "real.hpcm")
    (tmp_path / "stdout").symlink_to("/proc/self/fd/1")
    (tmp_path / "dir").mkdir()
    before = listing(tmp_path)
    refused(
        capsys,
        "it is a character device, not a regular file; pass --force",
        *compress(work, "/dev/null"),
    )
    refused(capsys, "it is a FIFO (named pipe)", *compress(work, tmp_path / "fifo"))
    refused(capsys, "it is a symbolic link (to", *compress(work, tmp_path / "link.hpcm"))
    refused(
        capsys, "it is a symbolic link (to '/proc/self/fd/1')", *compress(work, tmp_path / "stdout")
    )
    refused(capsys, "it is a directory", *compress(work, tmp_path / "dir", "--force"))
    (tmp_path / "link.png").symlink_to(tmp_path / "real.hpcm")
    refused(capsys, "it is a symbolic link", *decompress(work, tmp_path / "link.png"))
    assert listing(tmp_path) == before | {"link.png"}
    assert (tmp_path / "real.hpcm").read_bytes() == b"old"
    assert stat.S_ISFIFO(os.lstat(tmp_path / "fifo").st_mode)


def test_1_force_writes_through_links_and_into_fifos(capsys, work, tmp_path) -> None:
    expected = (work / "ok.hpcm").read_bytes()
    (tmp_path / "real.hpcm").write_bytes(b"old")
    (tmp_path / "link.hpcm").symlink_to(tmp_path / "real.hpcm")
    assert hpcm(capsys, *compress(work, tmp_path / "link.hpcm", "--force"))[0] == 0
    assert (tmp_path / "link.hpcm").is_symlink()
    assert (tmp_path / "real.hpcm").read_bytes() == expected
    assert hpcm(capsys, *compress(work, "/dev/null", "-f"))[0] == 0
    os.mkfifo(tmp_path / "fifo")
    thread, received = drain_fifo(tmp_path / "fifo")
    assert hpcm(capsys, *compress(work, tmp_path / "fifo", "--force"))[0] == 0
    thread.join(timeout=30)
    assert received == [expected]
    assert listing(tmp_path) == {"real.hpcm", "link.hpcm", "fifo"}


# ---------------------------------------------------------------- 2. the checkpoint is protected


def test_2_the_checkpoint_and_the_input_are_never_overwritten(capsys, work, tmp_path) -> None:
    ckpt = tmp_path / "ck.pt"
    ckpt.write_bytes((work / "a.pt").read_bytes())
    (tmp_path / "hard.hpcm").hardlink_to(ckpt)
    (tmp_path / "soft.hpcm").symlink_to(ckpt)
    (tmp_path / "ck.png").hardlink_to(ckpt)
    for out in (ckpt, tmp_path / "hard.hpcm", tmp_path / "soft.hpcm"):
        for more in ([], ["--force"]):
            refused(
                capsys,
                "refusing to overwrite the checkpoint",
                "compress",
                work / "rgb.png",
                out,
                "--checkpoint",
                ckpt,
                *more,
            )
    refused(
        capsys,
        "refusing to overwrite the checkpoint",
        "decompress",
        work / "ok.hpcm",
        tmp_path / "ck.png",
        "--checkpoint",
        ckpt,
    )
    (tmp_path / "in.png").hardlink_to(work / "rgb.png")
    refused(
        capsys,
        "refusing to overwrite the input",
        "compress",
        work / "rgb.png",
        tmp_path / "in.png",
        *RANDOM,
        "--model",
        "hpcm-base",
    )
    assert ckpt.read_bytes() == (work / "a.pt").read_bytes()


@pytest.fixture(scope="module")
def shipped_dir(tmp_path_factory):
    """Shipped weights (micro hpcm-small, qualities 1 and 2) for ``HPCM_WEIGHTS_DIR``."""
    return make_weights_dir(tmp_path_factory.mktemp("shipped"), qualities=(1, 2))


def test_2_the_shipped_weights_in_use_are_never_overwritten(
    capsys, work, tmp_path, shipped_dir, monkeypatch
) -> None:
    monkeypatch.setenv(WEIGHTS_ENV, str(shipped_dir))
    before = {p.name: p.read_bytes() for p in shipped_dir.iterdir()}
    (tmp_path / "q1.png").hardlink_to(shipped_dir / "hpcm-small-q1.pt")
    (tmp_path / "index.hpcm").symlink_to(shipped_dir / "index.json")
    for out, fragment in (
        (shipped_dir / "hpcm-small-q1.pt", "shipped weights hpcm-small q1"),
        (shipped_dir / "hpcm-small-q2.pt", "shipped weights hpcm-small q2"),
        (tmp_path / "index.hpcm", "table of shipped weights"),
    ):
        for more in ([], ["--force"]):
            refused(
                capsys,
                f"refusing to overwrite the {fragment}",
                "compress",
                work / "rgb.png",
                out,
                *more,
            )
    # decompress finds its weights only in the file's header: every shipped file is protected.
    refused(
        capsys,
        "refusing to overwrite the shipped weights hpcm-small q1",
        "decompress",
        work / "ok.hpcm",
        tmp_path / "q1.png",
    )
    assert {p.name: p.read_bytes() for p in shipped_dir.iterdir()} == before


# ---------------------------------------------------------------- 3. bounded reads


def test_3_reads_are_bounded_whatever_the_reported_size(capsys, work, tmp_path) -> None:
    refused(capsys, "not an hpcm file", *decompress(work, tmp_path / "o.png", source="/dev/zero"))
    refused(
        capsys,
        "not an image Pillow can read",
        "compress",
        "/dev/zero",
        tmp_path / "o.hpcm",
        *RANDOM,
        "--model",
        "hpcm-base",
    )
    # A valid file from a pipe that does not end: read up to what its header announces.
    os.mkfifo(tmp_path / "fifo")
    valid = (work / "ok.hpcm").read_bytes()
    thread = feed_fifo(tmp_path / "fifo", valid, b"\0" * 65536)
    refused(
        capsys,
        "unexpected bytes after the streams",
        *decompress(work, tmp_path / "o.png", source=tmp_path / "fifo"),
    )
    thread.join(timeout=30)
    # A header announcing more than the file limit is refused before the streams are read.
    header, streams = read_container(valid)
    lengths = (header.stream_lengths[0], 0xFFFFFFFF)
    (tmp_path / "long.hpcm").write_bytes(forge(header, streams, stream_lengths=lengths))
    refused(
        capsys,
        "the header announces a file of",
        *decompress(work, tmp_path / "o.png", source=tmp_path / "long.hpcm"),
    )
    # An image from a pipe of endless zeros: cut at 16 bytes per allowed pixel + 16 MiB.
    thread = feed_fifo(tmp_path / "fifo", b"", b"\0" * 65536)
    refused(
        capsys,
        "more than any image within the limit of 1000 pixels",
        "compress",
        tmp_path / "fifo",
        tmp_path / "o.hpcm",
        *RANDOM,
        "--model",
        "hpcm-base",
        "--max-pixels",
        "1000",
    )
    thread.join(timeout=30)
    assert listing(tmp_path) == {"fifo", "long.hpcm"}


def test_3_the_table_of_shipped_weights_is_read_bounded(
    capsys, work, tmp_path, monkeypatch
) -> None:
    monkeypatch.setenv(WEIGHTS_ENV, str(tmp_path))
    # A FIFO: refused unread (a reader that opened it would get a valid, empty table and fail
    # below for the wrong reason instead of hanging).
    os.mkfifo(tmp_path / "index.json")
    feed_fifo(
        tmp_path / "index.json", b'{"format": "hpcm-weights-index", "version": 1, "weights": []}'
    )
    out = tmp_path / "o.hpcm"
    fragment = "index.json' is a FIFO (named pipe), not a regular file"
    refused(capsys, fragment, "compress", work / "rgb.png", out)
    os.unlink(tmp_path / "index.json")
    with open(tmp_path / "index.json", "wb") as f:  # 2 MiB of JSON whitespace
        f.write(b'{"format": "hpcm-weights-index", "version": 1, "weights": []' + b" " * (2 << 20))
    refused(capsys, "the limit is 1048576 bytes", "compress", work / "rgb.png", out)
    (tmp_path / "index.json").write_bytes(b"\xff\xfe not UTF-8")
    refused(capsys, "cannot read", "decompress", work / "ok.hpcm", tmp_path / "o.png")
    assert listing(tmp_path) == {"index.json"}


# ---------------------------------------------------------------- 4. memory bounded by the limits


def _forged_huge(work) -> bytes:
    """153 bytes with valid CRCs claiming a 16384x16384 image (8-byte rANS streams)."""
    header, _ = read_container((work / "ok.hpcm").read_bytes())
    streams = [b"\0\0\0\x80" * 2, b"\0\0\0\x80" * 2]
    return forge(
        header,
        streams,
        width=16384,
        height=16384,
        padded_width=16384,
        padded_height=16384,
        y_shape=(16, 1024, 1024),
        z_shape=(8, 256, 256),
        stream_lengths=(8, 8),
        stream_crcs=tuple(zlib.crc32(s) for s in streams),
    )


def test_4_forged_headers_fail_before_any_model_or_allocation(
    capsys, work, tmp_path, monkeypatch
) -> None:
    import hpcm_models.checkpoints as checkpoints

    def no_model(*args, **kwargs):
        raise AssertionError("a model was built for a file beyond the limits")

    monkeypatch.setattr(checkpoints, "random_model", no_model)
    monkeypatch.setattr(checkpoints, "load_checkpoint", no_model)
    data = _forged_huge(work)
    assert len(data) == 153
    (tmp_path / "huge.hpcm").write_bytes(data)
    refused(
        capsys,
        "16384x16384 pixels, coded as 16384x16384, exceeds the limit of 8388608",
        "decompress",
        tmp_path / "huge.hpcm",
        tmp_path / "o.png",
        *RANDOM,
    )
    refused(
        capsys,
        "exceeds the limit of 8388608",
        *decompress(work, tmp_path / "o.png", source=tmp_path / "huge.hpcm"),
    )
    # --random-weights builds its model from the header's M: checked first.
    header, streams = read_container((work / "ok.hpcm").read_bytes())
    (tmp_path / "wide.hpcm").write_bytes(forge(header, streams, y_shape=(100_000, 3, 2)))
    refused(
        capsys,
        "y latent of 100000 channels exceeds the limit of 512",
        "decompress",
        tmp_path / "wide.hpcm",
        tmp_path / "o.png",
        *RANDOM,
    )
    # --max-pixels lowers (or raises) the limit.
    refused(
        capsys,
        "exceeds the limit of 1000 pixels",
        *decompress(work, tmp_path / "o.png", "--max-pixels", "1000"),
    )
    assert listing(tmp_path) == {"huge.hpcm", "wide.hpcm"}


def test_4_image_bombs_are_refused_from_their_header(capsys, work, tmp_path) -> None:
    bomb = tmp_path / "bomb.png"
    Image.new("1", (13000, 13000)).save(bomb)  # 169 M pixels, ~20 KB
    assert bomb.stat().st_size < 200_000
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no DecompressionBombWarning either
        refused(
            capsys,
            "13000x13000 pixels, coded as 13056x13056, exceeds the limit of 8388608",
            "compress",
            bomb,
            tmp_path / "o.hpcm",
            *RANDOM,
            "--model",
            "hpcm-base",
        )
    # Beyond twice Pillow's own limit (its DecompressionBombError): our limit decides either way.
    limits = Limits(max_pixels=13056 * 13056)
    assert image_size(bomb, limits) == (13000, 13000)
    with pytest.raises(ImageError, match="exceeds the limit of 8388608"):
        image_size(bomb)
    assert listing(tmp_path) == {"bomb.png"}


# ---------------------------------------------------------------- 5. checkpoint contents


def _table_cases(state: dict, tables: dict) -> dict[str, tuple[object, str]]:
    """Weights files carry their rANS tables (``coding_tables``): malformed or oversized ones."""

    def carried(**changes) -> dict:
        return {
            "model": state,
            "model_name": "hpcm-base",
            "model_kwargs": MICRO,
            TABLES_KEY: {**tables, **changes},
        }

    # 4000 scales whose y rows are short but one: unpacked to [4000, 65537], 1 GiB of int32.
    lengths = torch.full((4000,), 4, dtype=torch.int32)
    lengths[0] = 65537
    wide = {
        "scale_table": torch.linspace(0.1, 64, 4000),
        "cdf_length_y": lengths,
        "offset_y": -torch.div(lengths - 3, 2, rounding_mode="floor"),
        "quantized_cdf_y": torch.zeros(int(lengths.sum()), dtype=torch.int32),
    }
    return {
        "tables list": ({**carried(), TABLES_KEY: [1, 2]}, "expected the coding tables"),
        "tables meta": (
            carried(scale_table=torch.empty(60, device="meta")),
            "as dense tensors",
        ),
        "tables million scales": (
            carried(scale_table=torch.linspace(0.1, 64, 1_000_000)),
            "the file's scale table has 1000000 entries; expected 1..4096",
        ),
        "tables wide rows": (carried(**wide), "exceed the limits (4096 rows, 4194304 entries)"),
    }


def _checkpoint_cases(state: dict, tables: dict) -> dict[str, tuple[object, str]]:
    def train(**changes) -> dict:
        return {"model": state, "model_name": "hpcm-base", "model_kwargs": MICRO, **changes}

    config = MICRO["config"]
    return _table_cases(state, tables) | {
        "kwargs list": (train(model_kwargs=[1, 2]), "model kwargs must be a dict"),
        "kwargs str": (train(model_kwargs="M=16"), "model kwargs must be a dict"),
        "config str": (train(model_kwargs={**MICRO, "config": "big"}), "'config' must be a dict"),
        "heads 0": (
            train(model_kwargs={**MICRO, "config": {**config, "num_heads": 0}}),
            "HPCMConfig.num_heads must be an int in 1..4096, got 0",
        ),
        "windows 0": (
            train(model_kwargs={**MICRO, "config": {**config, "window_sizes": [0, 0, 0]}}),
            "HPCMConfig.window_sizes must be ints in 1..1024",
        ),
        "channels str": (
            train(model_kwargs={**MICRO, "config": {**config, "transform_channels": "abc"}}),
            "transform_channels must be a tuple of 3 ints",
        ),
        "huge M": (train(model_kwargs={**MICRO, "M": 10**9}), "'M' must be an int in 1..4096"),
        "name int": (train(model_name=7), "model_name must be a string"),
        "non-tensor": (train(model={**state, "g_a.branch.0.weight": "x"}), "g_a.branch.0.weight"),
        "complex": (
            train(model={**state, "means_hyper": state["means_hyper"].to(torch.complex64)}),
            "complex64",
        ),
        "million scales": (
            train(model={**state, "scale_table": torch.linspace(0.1, 1e5, 1_000_000)}),
            "expected scales of shape [S] with 1 <= S <= 4096, got [1000000]",
        ),
        "wide scales": (
            train(model={**state, "scales_hyper": torch.full_like(state["scales_hyper"], 1e30)}),
            "would need tables of",
        ),
        "nan scales": (
            train(
                model={
                    **state,
                    "scales_hyper": torch.full_like(state["scales_hyper"], float("nan")),
                }
            ),
            "would need tables of",
        ),
        "wrong shape": (
            train(model={**state, "means_hyper": torch.zeros(1, 4096, 1, 1)}),
            "checkpoint does not match HPCMBase(M=16, N=4096): wrong shapes for [scales_hyper",
        ),
        "huge channels": (
            train(model={**state, "means_hyper": torch.zeros(1, 5000, 1, 1)}),
            "means more than 4096 channels",
        ),
    }


def test_5_bad_checkpoint_contents_are_one_line_errors(capsys, work, tmp_path) -> None:
    state = torch.load(work / "a.pt", weights_only=True)["model"]
    tables = random_model("hpcm-base", seed=0, **MICRO).entropy_estimation.packed_tables()
    for name, (obj, fragment) in _checkpoint_cases(state, tables).items():
        path = tmp_path / "bad.pt"
        torch.save(obj, path)
        err = refused(
            capsys,
            fragment,
            "compress",
            work / "rgb.png",
            tmp_path / "o.hpcm",
            "--checkpoint",
            path,
        )
        assert "Traceback" not in err, name
    assert listing(tmp_path) == {"bad.pt"}


# ---------------------------------------------------------------- 6. signals


# Runs `hpcm`, stalling in the atomic writer's fsync (the temporary file exists then) after
# touching the file named by argv[1], so that a test can signal it in the middle of a write.
_STALLING_HPCM = """
import os, signal, sys, time

# As from an interactive shell, whatever started the tests (a background job starts with SIGINT
# ignored, and an ignored signal stays ignored: test_6_ignored_signals_stay_ignored).
signal.signal(signal.SIGINT, signal.default_int_handler)
for sig in (signal.SIGTERM, signal.SIGHUP):
    signal.signal(sig, signal.SIG_DFL)

def stalled_fsync(fd):
    open(sys.argv[1], "w").close()
    time.sleep(120)

os.fsync = stalled_fsync
from hpcm_models.cli import main
sys.exit(main(sys.argv[2:]))
"""

# compressai 1.2.8 warns about torch.jit.script when hpcm_models is imported (torch >= 2.14).
_QUIET = dict(os.environ, PYTHONWARNINGS="ignore:`torch.jit.script` is deprecated:FutureWarning")


def _stalled_compress(work, tmp_path) -> tuple[subprocess.Popen, list]:
    """A real ``hpcm compress`` process stalled while writing ``tmp_path/out.hpcm``; returns it
    and the temporary files it has open."""
    (tmp_path / "stall.py").write_text(_STALLING_HPCM)
    ready = tmp_path / "ready"
    process = subprocess.Popen(
        [
            sys.executable,
            str(tmp_path / "stall.py"),
            str(ready),
            "compress",
            str(work / "rgb.png"),
            str(tmp_path / "out.hpcm"),
            "--model",
            "hpcm-base",
            "--random-weights",
            "--model-kwargs",
            json.dumps(MICRO),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_QUIET,
    )
    deadline = time.monotonic() + 240
    while not ready.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the writer never started"
        time.sleep(0.05)
    temporaries = [p for p in tmp_path.iterdir() if p.name.endswith(TEMP_SUFFIX)]
    assert len(temporaries) == 1
    assert temporaries[0].name.startswith(".out.hpcm.")
    return process, temporaries


@pytest.mark.slow  # a fresh Python process each (importing torch)
@pytest.mark.parametrize(
    ("sig", "status", "line"),
    [
        (signal.SIGTERM, 143, "hpcm compress: terminated (SIGTERM)"),
        (signal.SIGHUP, 129, "hpcm compress: terminated (SIGHUP)"),
        (signal.SIGINT, 130, "hpcm compress: interrupted (SIGINT)"),
    ],
)
def test_6_signals_clean_up_and_exit_with_one_line(work, tmp_path, sig, status, line) -> None:
    (tmp_path / "out.hpcm").write_bytes(b"previous")
    process, _ = _stalled_compress(work, tmp_path)
    process.send_signal(sig)
    out, err = process.communicate(timeout=120)
    assert process.returncode == status
    assert (out, err.splitlines()) == ("", [line])
    assert listing(tmp_path) == {"stall.py", "ready", "out.hpcm"}
    assert (tmp_path / "out.hpcm").read_bytes() == b"previous"


def test_6_ignored_signals_stay_ignored() -> None:
    """Under ``nohup`` (SIGHUP ignored) the CLI must not turn a hang-up into an exit; signals
    with their default disposition become exceptions, and every handler comes back after."""
    from hpcm_models.cli import _signals_as_exceptions, _terminate

    before = {sig: signal.getsignal(sig) for sig in (signal.SIGHUP, signal.SIGTERM)}
    try:
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        with _signals_as_exceptions():
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) is _terminate
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
        with _signals_as_exceptions():
            assert signal.getsignal(signal.SIGHUP) is _terminate
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_DFL
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


@pytest.mark.slow
def test_6_sigkill_leftovers_are_removed_by_the_next_write(capsys, work, tmp_path) -> None:
    process, temporaries = _stalled_compress(work, tmp_path)
    process.kill()
    process.communicate(timeout=120)
    assert temporaries[0].exists()  # nothing can run on SIGKILL
    # Once its process is gone and it is old enough, the next write into the folder removes it.
    old = time.time() - STALE_TEMP_SECONDS - 1
    os.utime(temporaries[0], (old, old))
    assert hpcm(capsys, *compress(work, tmp_path / "other.hpcm"))[0] == 0
    assert listing(tmp_path) == {"stall.py", "ready", "other.hpcm"}


# ---------------------------------------------------------------- 7. more than 8 bits per sample


def _png16(path, color_type: int, channels: int, width: int = 9, height: int = 7) -> None:
    """A PNG with 16 bits per sample (Pillow cannot write 16-bit RGB, RGBA or LA)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    row = bytes(range(2 * channels * width))
    raw = b"".join(b"\0" + row for _ in range(height))
    ihdr = struct.pack(">IIBBBBB", width, height, 16, color_type, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def test_7_sixteen_bit_images_are_refused_not_cut(capsys, work, tmp_path) -> None:
    _png16(tmp_path / "rgb16.png", 2, 3)
    _png16(tmp_path / "rgba16.png", 6, 4)
    _png16(tmp_path / "la16.png", 4, 2)
    Image.new("I;16", (9, 7), 40000).save(tmp_path / "gray16.png")
    (tmp_path / "rgb16.ppm").write_bytes(b"P6\n3 2\n65535\n" + bytes(range(36)))
    with Image.open(tmp_path / "rgb16.png") as image:
        assert image.mode == "RGB"  # what Pillow makes of it: the high bytes only
    for name, raw in (
        ("rgb16", "RGB;16B"),
        ("rgba16", "RGBA;16B"),
        ("la16", "LA;16B"),
        ("gray16", "I;16B"),
        ("rgb16.ppm", "RGB, maxval 65535"),
    ):
        refused(
            capsys,
            f"has more than 8 bits per sample ({raw})",
            "compress",
            tmp_path / (name if "." in name else f"{name}.png"),
            tmp_path / "o.hpcm",
            *RANDOM,
            "--model",
            "hpcm-base",
        )
        with pytest.raises(ImageError, match="more than 8 bits"):
            read_image(tmp_path / (name if "." in name else f"{name}.png"))
    assert "o.hpcm" not in listing(tmp_path)


# ---------------------------------------------------------------- 8. modes, messages, checkpoints


def test_8_replaced_outputs_keep_their_permissions(capsys, work, tmp_path) -> None:
    for out, mode, args in (
        (tmp_path / "x.hpcm", 0o600, compress(work, tmp_path / "x.hpcm")),
        (tmp_path / "x.png", 0o640, decompress(work, tmp_path / "x.png")),
    ):
        out.write_bytes(b"old")
        out.chmod(mode)
        assert hpcm(capsys, *args)[0] == 0
        assert out.read_bytes() != b"old"
        assert stat.S_IMODE(out.stat().st_mode) == mode


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_8_checkpoint_messages_are_plain_and_name_the_file_kind(capsys, work, tmp_path) -> None:
    (tmp_path / "evil.pt").write_bytes(pickle.dumps({"x": _Evil()}, protocol=2))
    err = refused(
        capsys,
        "cannot read checkpoint",
        *compress(work, tmp_path / "o.hpcm")[:4],
        tmp_path / "evil.pt",
    )
    assert "Weights only load failed" in err  # torch's message, its ANSI escapes removed
    (tmp_path / "dir.pt").mkdir()
    refused(
        capsys,
        "is a directory, not a regular file",
        *compress(work, tmp_path / "o.hpcm")[:4],
        tmp_path / "dir.pt",
    )
    os.mkfifo(tmp_path / "fifo.pt")  # torch.load would wait for a writer forever
    refused(
        capsys,
        "is a FIFO (named pipe), not a regular file",
        *compress(work, tmp_path / "o.hpcm")[:4],
        tmp_path / "fifo.pt",
    )
    refused(
        capsys, "does not exist", *compress(work, tmp_path / "o.hpcm")[:4], tmp_path / "none.pt"
    )
    assert listing(tmp_path) == {"evil.pt", "dir.pt", "fifo.pt"}
