"""Guarded loading of the CUDA kernels, JIT-built with ``torch.utils.cpp_extension`` on first use.

Nothing here runs at import: the package imports without a GPU and without a compiler. The first
:func:`load_extension` finds a CUDA toolkit whose major version matches torch's, compiles
``csrc/`` for the visible GPUs' architectures (or ``TORCH_CUDA_ARCH_LIST``) with ninja and caches
the result in a directory keyed by everything that affects the binary, so later processes only
import it.

Environment variables:

- ``BIWKV4_DISABLE_CUDA=1``: never use the CUDA kernel (the op runs the Triton kernels or the
  PyTorch scan).
- ``BIWKV4_CUDA_HOME``: the CUDA toolkit to build with (overrides everything below).
- ``BIWKV4_BUILD_DIR``: where builds are cached (default ``~/.cache/biwkv4_kernel``, or under
  ``$XDG_CACHE_HOME``).
- ``TORCH_CUDA_ARCH_LIST``: architectures to compile for, e.g. ``9.0`` or ``8.0;9.0``; needed
  where no GPU is visible (CI compiles the sources that way).

The toolkit is looked for in this order: ``BIWKV4_CUDA_HOME``; ``CUDA_HOME`` / ``CUDA_PATH``; the
``nvcc`` on ``PATH``, resolved to its real toolkit root (``nvcc`` is often a wrapper script or a
symlink, from which torch's own guess goes wrong); a pip-installed nvcc (``nvidia-cuda-nvcc``,
``nvidia/cu13/`` layout, or ``nvidia-cuda-nvcc-cu12``, ``nvidia/cuda_nvcc/`` layout); then
``/usr/local/cuda*`` and ``/opt/cuda``. A toolkit given explicitly (the first two) is used or
rejected as is; among the others the first complete one whose major version matches
``torch.version.cuda`` wins.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import shutil
import site
import subprocess
import sys
import sysconfig
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import torch

from ._availability import availability

__all__ = [
    "BuildError",
    "CudaToolkit",
    "build_directory",
    "cuda_kernel_available",
    "cuda_kernel_status",
    "find_cuda_toolkit",
    "load_extension",
]

DISABLE_ENV = "BIWKV4_DISABLE_CUDA"
CUDA_HOME_ENV = "BIWKV4_CUDA_HOME"
BUILD_DIR_ENV = "BIWKV4_BUILD_DIR"

CSRC = Path(__file__).resolve().parent / "csrc"
SOURCES = ("biwkv4_cuda.cu", "biwkv4_ext.cpp")
HEADERS = ("biwkv4.h",)
EXTRA_CFLAGS = ("-O3",)
EXTRA_CUDA_CFLAGS = ("-O3",)

_FIX = (
    "Set BIWKV4_CUDA_HOME (or CUDA_HOME) to a CUDA toolkit whose major version matches torch's, "
    "or install one from PyPI (`pip install nvidia-cuda-nvcc` for CUDA 13, "
    "`nvidia-cuda-nvcc-cu12 nvidia-cuda-runtime-cu12` for CUDA 12), "
    "or set BIWKV4_DISABLE_CUDA=1 not to try (the Triton kernels or the PyTorch path run instead)."
)


class BuildError(RuntimeError):
    """The CUDA extension could not be built or loaded; the message says what was tried."""


@dataclass(frozen=True)
class CudaToolkit:
    """A CUDA toolkit the extension can be built with.

    Attributes:
        root: the directory CUDA_HOME is set to for the build (holds ``bin/nvcc``).
        nvcc: the compiler.
        version: nvcc's release, e.g. ``"13.0"``.
        found_by: how it was found, for messages.
        include_dirs: directories holding ``cuda_runtime.h`` (outside ``root/include`` for the
            split pip layout of CUDA 12).
        library_dirs: directories holding ``libcudart``.
    """

    root: Path
    nvcc: Path
    version: str
    found_by: str
    include_dirs: tuple[Path, ...] = ()
    library_dirs: tuple[Path, ...] = ()

    @property
    def major(self) -> int:
        return int(self.version.split(".")[0])

    def describe(self) -> str:
        return f"nvcc {self.version} at {self.nvcc} (CUDA_HOME={self.root}, from {self.found_by})"


# ---------------------------------------------------------------------------------------------
# Finding a toolkit
# ---------------------------------------------------------------------------------------------


def _site_package_dirs() -> list[Path]:
    """Every directory pip may have installed ``nvidia/...`` into, in import order."""
    dirs: list[str] = []
    with contextlib.suppress(AttributeError):  # virtualenvs of old `site` lack these
        dirs += site.getsitepackages()
    with contextlib.suppress(AttributeError):
        dirs.append(site.getusersitepackages())
    dirs += [sysconfig.get_path("purelib"), sysconfig.get_path("platlib")]
    dirs += [p for p in sys.path if p]
    seen: dict[Path, None] = {}
    for d in dirs:
        path = Path(d)
        if path.is_dir():
            seen.setdefault(path.resolve(), None)
    return list(seen)


def _system_roots() -> list[Path]:
    """Conventional install locations, newest version first."""

    def version_key(path: Path) -> tuple[int, ...]:
        return tuple(int(x) for x in re.findall(r"\d+", path.name)) or (1 << 30,)

    roots = [Path("/usr/local/cuda")]
    roots += sorted(Path("/usr/local").glob("cuda-*"), key=version_key, reverse=True)
    roots.append(Path("/opt/cuda"))
    return roots


def _run(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)


def _nvcc_version(nvcc: Path) -> str:
    try:
        out = _run([str(nvcc), "--version"])
    except (OSError, subprocess.SubprocessError) as exc:
        raise ValueError(f"`{nvcc} --version` failed: {exc}") from exc
    match = re.search(r"release (\d+)\.(\d+)", out.stdout + out.stderr)
    if out.returncode != 0 or match is None:
        detail = (out.stdout + out.stderr).strip().splitlines()[-1:] or ["no output"]
        raise ValueError(f"`{nvcc} --version` gave no release number ({detail[0]})")
    return f"{match.group(1)}.{match.group(2)}"


def _nvcc_toolkit_root(nvcc: Path) -> Path:
    """The toolkit an ``nvcc`` on PATH belongs to, asking nvcc itself (it prints ``TOP=``).

    Works through wrapper scripts (``exec /usr/local/cuda-13.0/bin/nvcc "$@"``) and symlinks, where
    the parent of the ``bin`` holding the found file is not the toolkit.
    """
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = _run([str(nvcc), "--dryrun", "-x", "cu", "-c", os.devnull, "-o", os.devnull])
        match = re.search(r"^#\$ TOP=(.+)$", out.stdout + out.stderr, flags=re.M)
        if match:
            return Path(match.group(1).strip()).resolve()
    return nvcc.resolve().parent.parent


def _candidates(environ: Mapping[str, str]) -> Iterator[tuple[Path, str, bool]]:
    """(root, how it was found, whether the user named it) in the order they are tried."""
    for var in (CUDA_HOME_ENV, "CUDA_HOME", "CUDA_PATH"):
        if environ.get(var):
            yield Path(environ[var]), f"${var}", True
            return  # an explicit toolkit is used or rejected, never silently replaced
    nvcc = shutil.which("nvcc", path=environ.get("PATH", os.defpath))
    if nvcc is not None:
        yield _nvcc_toolkit_root(Path(nvcc)), f"nvcc on PATH ({nvcc})", False
    for sp in _site_package_dirs():
        for root in sorted((sp / "nvidia").glob("cu[0-9]*"), reverse=True):
            yield root, f"pip package nvidia-cuda-nvcc ({root})", False
        yield sp / "nvidia" / "cuda_nvcc", f"pip package nvidia-cuda-nvcc-cu12 ({sp})", False
    for root in _system_roots():
        yield root, "a standard install location", False


def _first_existing(dirs: list[Path], pattern: str) -> Path | None:
    for d in dirs:
        if d.is_dir() and any(d.glob(pattern)):
            return d
    return None


def _inspect(root: Path, found_by: str) -> CudaToolkit:
    """A complete toolkit at ``root``, or ValueError saying what is missing."""
    nvcc = root / "bin" / "nvcc"
    if not (nvcc.is_file() and os.access(nvcc, os.X_OK)):
        raise ValueError(f"no executable {nvcc}")
    # CUDA 12 wheels split the toolkit: nvcc in nvidia/cuda_nvcc, the runtime in .../cuda_runtime.
    siblings = [root.parent / "cuda_runtime"] if root.name == "cuda_nvcc" else []
    targets = sorted((root / "targets").glob("*"))
    include = _first_existing(
        [root / "include", *(t / "include" for t in targets), *(s / "include" for s in siblings)],
        "cuda_runtime.h",
    )
    if include is None:
        raise ValueError(f"no cuda_runtime.h under {root} (install the CUDA runtime headers)")
    lib = _first_existing(
        [
            root / "lib64",
            root / "lib",
            *(t / "lib" for t in targets),
            *(s / "lib" for s in siblings),
        ],
        "libcudart.so*",
    )
    if lib is None:
        raise ValueError(f"no libcudart.so* under {root} (install the CUDA runtime library)")
    return CudaToolkit(
        root=root,
        nvcc=nvcc,
        version=_nvcc_version(nvcc),
        found_by=found_by,
        include_dirs=(include,),
        library_dirs=(lib,),
    )


def find_cuda_toolkit(
    torch_cuda: str | None = None, environ: Mapping[str, str] | None = None
) -> CudaToolkit:
    """The CUDA toolkit to build the extension with (see the module docstring for the order).

    Args:
        torch_cuda: the CUDA version torch was built with (default ``torch.version.cuda``).
        environ: the environment to read (default ``os.environ``).

    Raises:
        BuildError: naming every candidate tried and why it was rejected, or the nvcc and torch
            CUDA versions when they do not match.
    """
    environ = os.environ if environ is None else environ
    torch_cuda = torch.version.cuda if torch_cuda is None else torch_cuda
    if not torch_cuda:
        raise BuildError(
            f"this PyTorch build ({torch.__version__}) has no CUDA support (torch.version.cuda is "
            "None); install a CUDA build of torch to use the CUDA kernel"
        )
    want = int(torch_cuda.split(".")[0])
    tried: list[str] = []
    seen: set[Path] = set()
    for root, found_by, explicit in _candidates(environ):
        key = root.resolve() if root.exists() else root
        if key in seen:
            continue
        seen.add(key)
        try:
            toolkit = _inspect(root, found_by)
        except ValueError as exc:
            tried.append(f"  {root} (from {found_by}): {exc}")
            if explicit:
                break
            continue
        if toolkit.major == want:
            return toolkit
        tried.append(
            f"  {root} (from {found_by}): nvcc {toolkit.version} does not match the CUDA "
            f"{torch_cuda} that torch {torch.__version__} was built with"
        )
        if explicit:
            raise BuildError(
                f"nvcc {toolkit.version} at {toolkit.nvcc} (from {found_by}) does not match the "
                f"CUDA {torch_cuda} that torch {torch.__version__} was built with: the major "
                f"versions must be equal. {_FIX}"
            )
    listing = "\n".join(tried) if tried else "  (no candidate exists)"
    raise BuildError(
        f"no usable CUDA {want}.x toolkit found for torch {torch.__version__} (CUDA "
        f"{torch_cuda}). Tried:\n{listing}\n{_FIX}"
    )


# ---------------------------------------------------------------------------------------------
# Building
# ---------------------------------------------------------------------------------------------


def _arch_list(environ: Mapping[str, str]) -> str:
    """TORCH_CUDA_ARCH_LIST if set, else the compute capabilities of the visible GPUs."""
    if environ.get("TORCH_CUDA_ARCH_LIST"):
        return environ["TORCH_CUDA_ARCH_LIST"].strip()
    if torch.cuda.is_available():
        caps = sorted(
            {torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())}
        )
        return ";".join(f"{major}.{minor}" for major, minor in caps)
    raise BuildError(
        "no CUDA GPU is visible and TORCH_CUDA_ARCH_LIST is not set, so there is no architecture "
        "to compile for: set e.g. TORCH_CUDA_ARCH_LIST=9.0 to build without a GPU"
    )


def _cache_root(environ: Mapping[str, str]) -> Path:
    if environ.get(BUILD_DIR_ENV):
        # Absolute: ninja runs inside the build directory, so relative -L paths would break.
        return Path(environ[BUILD_DIR_ENV]).expanduser().absolute()
    xdg = environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "biwkv4_kernel"


def _build_key(toolkit: CudaToolkit, arch_list: str) -> str:
    digest = hashlib.sha256()
    for name in (*SOURCES, *HEADERS):
        digest.update(name.encode() + b"\0" + (CSRC / name).read_bytes() + b"\0")
    for part in (
        torch.__version__,
        str(torch.version.cuda),
        toolkit.version,
        str(toolkit.root.resolve()),
        arch_list,
        sys.implementation.cache_tag,
        sysconfig.get_platform(),
        " ".join(EXTRA_CFLAGS + EXTRA_CUDA_CFLAGS),
    ):
        digest.update(part.encode() + b"\0")
    return digest.hexdigest()[:16]


def build_directory(
    toolkit: CudaToolkit, arch_list: str, environ: Mapping[str, str] | None = None
) -> Path:
    """Cache directory of the build for this toolkit, torch, Python, architectures and sources."""
    environ = os.environ if environ is None else environ
    tag = re.sub(r"[^A-Za-z0-9.]+", "_", f"torch{torch.__version__}-cu{toolkit.version}")
    arch = re.sub(r"[^A-Za-z0-9.]+", "_", arch_list)
    name = f"{tag}-{sys.implementation.cache_tag}-sm{arch}-{_build_key(toolkit, arch_list)}"
    return _cache_root(environ) / name


def _cpp_extension() -> ModuleType:
    """torch.utils.cpp_extension, imported without its import-time guess of CUDA_HOME being logged
    (on a machine without a GPU it warns about a directory this module does not use)."""
    log = logging.getLogger("torch.utils.cpp_extension")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        from torch.utils import cpp_extension
    except ImportError as exc:  # it imports setuptools, which not every environment has
        raise BuildError(
            f"torch.utils.cpp_extension cannot be imported ({exc}): `pip install setuptools`"
        ) from exc
    finally:
        log.setLevel(level)
    return cpp_extension


@contextlib.contextmanager
def _build_environment(toolkit: CudaToolkit, arch_list: str) -> Iterator[None]:
    """CUDA_HOME and TORCH_CUDA_ARCH_LIST for the duration of the build only.

    torch reads CUDA_HOME once, at import of torch.utils.cpp_extension, into a module global: that
    global is what its build uses, so it is swapped too and restored afterwards.
    """
    cpp_extension = _cpp_extension()
    saved_env = {var: os.environ.get(var) for var in ("CUDA_HOME", "TORCH_CUDA_ARCH_LIST")}
    saved_home = cpp_extension.CUDA_HOME
    os.environ["CUDA_HOME"] = str(toolkit.root)
    os.environ["TORCH_CUDA_ARCH_LIST"] = arch_list
    cpp_extension.CUDA_HOME = str(toolkit.root)
    try:
        yield
    finally:
        cpp_extension.CUDA_HOME = saved_home
        for var, value in saved_env.items():
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value


def _link_flags(toolkit: CudaToolkit, directory: Path) -> list[str]:
    """-L flags under which ``-lcudart`` (which torch always adds) resolves.

    Pip wheels ship only ``libcudart.so.<major>``, not the ``libcudart.so`` the linker looks for:
    link against a symlink to it in the build directory.
    """
    flags = [f"-L{d}" for d in toolkit.library_dirs]
    for lib_dir in toolkit.library_dirs:
        if (lib_dir / "libcudart.so").exists():
            return flags
    versioned = sorted(
        p for d in toolkit.library_dirs for p in d.glob("libcudart.so.*") if "static" not in p.name
    )
    if versioned:
        link_dir = directory / "cudart"
        link_dir.mkdir(parents=True, exist_ok=True)
        # Replaced atomically: processes building at the same time never see it missing.
        tmp = link_dir / f"libcudart.so.{os.getpid()}.tmp"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(versioned[0])
        os.replace(tmp, link_dir / "libcudart.so")
        flags.append(f"-L{link_dir}")
    return flags


def _build(toolkit: CudaToolkit, arch_list: str, directory: Path, verbose: bool) -> ModuleType:
    cpp_extension = _cpp_extension()
    directory.mkdir(parents=True, exist_ok=True)
    name = f"biwkv4_cuda_{directory.name.rsplit('-', 1)[-1][:12]}"
    with _build_environment(toolkit, arch_list):
        try:
            return cpp_extension.load(
                name=name,
                sources=[str(CSRC / s) for s in SOURCES],
                extra_cflags=list(EXTRA_CFLAGS),
                extra_cuda_cflags=list(EXTRA_CUDA_CFLAGS),
                extra_ldflags=_link_flags(toolkit, directory),
                extra_include_paths=[str(CSRC), *(str(d) for d in toolkit.include_dirs)],
                build_directory=str(directory),
                verbose=verbose,
            )
        except (RuntimeError, OSError, ImportError, subprocess.SubprocessError) as exc:
            raise BuildError(
                f"building the biwkv4 CUDA extension with {toolkit.describe()} for "
                f"TORCH_CUDA_ARCH_LIST={arch_list} in {directory} failed: {exc}\n{_FIX}"
            ) from exc


_LOCK = threading.Lock()
_LOADED: ModuleType | None = None
_STATUS: dict[str, object] = {}


def load_extension(verbose: bool = False) -> ModuleType:
    """Build (once, cached on disk) and import the CUDA extension; later calls return it at once.

    The module has ``forward(w, u, k, v, need_stats) -> (y, lse)`` and
    ``backward(w, u, k, v, y, lse, gy) -> (gw, gu, gk, gv)``; see ``docs/kernel.md``.

    Args:
        verbose: print the compiler commands and output.

    Raises:
        BuildError: no matching toolkit, no architecture to compile for, or the build failed.
    """
    global _LOADED
    if _LOADED is not None:
        return _LOADED
    with _LOCK:
        if _LOADED is None:
            toolkit = find_cuda_toolkit()
            arch_list = _arch_list(os.environ)
            directory = build_directory(toolkit, arch_list)
            _LOADED = _build(toolkit, arch_list, directory, verbose)
            _STATUS["built"] = (
                f"built with {toolkit.describe()} for TORCH_CUDA_ARCH_LIST={arch_list} "
                f"in {directory}"
            )
    return _LOADED


def _build_once() -> str:
    load_extension()
    return str(_STATUS["built"])


def _availability() -> tuple[bool, str]:
    # No warning on a failure: the op falls back to the Triton kernels, and warns only if it has
    # to fall back to the PyTorch scan (ops._warn_pytorch_path_on_gpu).
    return availability(_STATUS, DISABLE_ENV, _build_once, (BuildError,))


def cuda_kernel_available() -> bool:
    """Whether the CUDA kernel is used: a GPU is visible, ``BIWKV4_DISABLE_CUDA`` is not set and the
    extension builds and loads (tried once per process)."""
    return _availability()[0]


def cuda_kernel_status() -> str:
    """One line (or, on a build failure, the full error) saying why the kernel is or is not used."""
    return _availability()[1]
