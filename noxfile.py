"""Every way to test, lint and benchmark this workspace. `nox -l` lists the sessions.

The default sessions (`nox` alone) are the ones CI runs: `tests` over the torch matrix, `lint` and
`check_versions`. `gpu` and `bench` are opt-in and run in the *current* environment, because the GPU
machine has no network to build a virtualenv from.
"""

from __future__ import annotations

import os
import re
import sys
import tomllib
from pathlib import Path

import nox

ROOT = Path(__file__).parent
PACKAGES = ("biwkv4-kernel", "rwkv-blocks", "hpcm-models")
SRC_DIRS = [ROOT / "packages" / p / "src" for p in PACKAGES]

# (torch, torchvision) of the CPU test matrix, each torchvision the one built against that torch:
# the oldest torch biwkv4-kernel and rwkv-blocks support, the oldest hpcm-models supports (the GPU
# machine's) and the newest on PyPI. A cell without torchvision is below hpcm-models' floor: only
# those two packages are installed and only tests/kernel and tests/blocks run (docs/development.md
# says why hpcm-models needs torch >= 2.11).
TORCH_MATRIX = [("2.4.0", None), ("2.11.0", "0.26.0"), ("2.15.0", "0.29.2")]
LOWER_LAYERS = PACKAGES[:2]

nox.needs_version = ">=2025.2.9"
nox.options.default_venv_backend = "uv"
nox.options.sessions = ["tests", "lint", "check_versions"]
nox.options.error_on_missing_interpreters = True

# Every torch import costs ~15 s without bytecode caches (the shell sets PYTHONDONTWRITEBYTECODE).
ENV = {"UV_COMPILE_BYTECODE": "1", "PYTHONDONTWRITEBYTECODE": ""}


def _dev_requirements() -> list[str]:
    """The root `dev` dependency group, minus the workspace members (installed editable)."""
    group = nox.project.dependency_groups(nox.project.load_toml(ROOT / "pyproject.toml"), "dev")
    return [req for req in group if re.split(r"[<>=!~ \[;]", req, maxsplit=1)[0] not in PACKAGES]


def _editable_packages(packages: tuple[str, ...] = PACKAGES) -> list[str]:
    args: list[str] = []
    for package in packages:
        args += ["-e", str(ROOT / "packages" / package)]
    return args


def _current_env_pythonpath() -> dict[str, str]:
    """PYTHONPATH that makes the sources importable where the packages are not installed."""
    paths = [str(p) for p in SRC_DIRS]
    if os.environ.get("PYTHONPATH"):
        paths.append(os.environ["PYTHONPATH"])
    return {"PYTHONPATH": os.pathsep.join(paths)}


@nox.session
@nox.parametrize(
    ("torch", "torchvision"),
    [nox.param(t, tv, id=f"torch{t}") for t, tv in TORCH_MATRIX],
)
def tests(session: nox.Session, torch: str, torchvision: str | None) -> None:
    """Run the test suite on CPU against one torch release (kernel and blocks only below 2.11)."""
    session.env.update(ENV)
    if torchvision is None:
        # This torch is a CUDA 12 build, and CI's nvcc is CUDA 13: the op refuses the mismatch, so
        # tests/kernel/test_build.py reports its compile check as skipped; `nox -s cuda_build`
        # compiles the sources against this torch with a CUDA 12 toolchain instead.
        session.env["BIWKV4_REQUIRE_NVCC"] = "0"
        # numpy < 2, as in torch 2.4's day: triton 3.0's interpreter converts 1-element arrays
        # to ints, which numpy 2 refuses.
        session.install(
            f"torch=={torch}",
            "numpy<2",
            *_editable_packages(LOWER_LAYERS),
            *_dev_requirements(),
        )
        paths = ["tests/kernel", "tests/blocks"]
    else:
        session.install(
            f"torch=={torch}",
            f"torchvision=={torchvision}",
            *_editable_packages(),
            *_dev_requirements(),
        )
        paths = []
    session.run("python", "-c", "import torch; print('torch', torch.__version__)")
    session.run("pytest", *paths, *session.posargs)


@nox.session(venv_backend="uv")
def lint(session: nox.Session) -> None:
    """Lint and format-check with ruff."""
    session.install("ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(venv_backend="none")
def check_versions(session: nox.Session) -> None:
    """Check that each package's version ranges on its siblings admit the siblings' versions."""
    from packaging.requirements import Requirement

    versions: dict[str, str] = {}
    requirements: dict[str, list[Requirement]] = {}
    for package in PACKAGES:
        directory = ROOT / "packages" / package
        meta = tomllib.loads((directory / "pyproject.toml").read_text())["project"]
        module = package.replace("-", "_")
        init = (directory / "src" / module / "__init__.py").read_text()
        match = re.search(r'^__version__ = "([^"]+)"', init, flags=re.M)
        if match is None:
            session.error(f"{package}: no __version__ in src/{module}/__init__.py")
        versions[package] = match.group(1)
        requirements[package] = [Requirement(r) for r in meta.get("dependencies", [])]

    failures = []
    for package, reqs in requirements.items():
        for req in reqs:
            if req.name in versions and not req.specifier.contains(versions[req.name]):
                have = versions[req.name]
                failures.append(f"{package} requires {req} but the workspace has {req.name} {have}")
            if req.name in versions and not str(req.specifier):
                failures.append(f"{package} requires {req.name} without a version range")
    for package, version in versions.items():
        session.log(f"{package} {version}")
    if failures:
        session.error("\n".join(failures))


@nox.session(venv_backend="none", default=False)
def gpu(session: nox.Session) -> None:
    """Run the `cuda`-marked tests in the current environment (for the GPU machine: no network)."""
    session.run(
        sys.executable,
        "-m",
        "pytest",
        "-m",
        "cuda",
        *session.posargs,
        env=_current_env_pythonpath(),
    )


@nox.session(venv_backend="none", default=False)
def bench(session: nox.Session) -> None:
    """Run the benchmark scripts in the current environment; JSON goes to `bench-results/`."""
    out = Path(session.posargs[0]) if session.posargs else ROOT / "bench-results"
    out.mkdir(parents=True, exist_ok=True)
    scripts = sorted((ROOT / "benchmarks").glob("bench_*.py"))
    if not scripts:
        session.error("no benchmarks/bench_*.py found")
    for script in scripts:
        session.run(
            sys.executable,
            str(script),
            "--json",
            str(out / f"{script.stem}.json"),
            env=_current_env_pythonpath(),
        )


@nox.session(venv_backend="uv", default=False)
def build(session: nox.Session) -> None:
    """Build, check and smoke-install an sdist and a wheel of each package (into `dist/`)."""
    session.env.update(ENV)
    session.install("twine", "check-wheel-contents")
    dist = ROOT / "dist"
    session.run("rm", "-rf", str(dist), external=True)
    for package in PACKAGES:
        session.run("uv", "build", "--package", package, "--out-dir", str(dist / package))
        built = [*(dist / package).glob("*.whl"), *(dist / package).glob("*.tar.gz")]
        session.run("twine", "check", "--strict", *map(str, built))
        session.run("check-wheel-contents", *map(str, (dist / package).glob("*.whl")))
    wheel = next((dist / "biwkv4-kernel").glob("*.whl"))
    session.run(
        "python",
        "-c",
        "import sys, zipfile; names = zipfile.ZipFile(sys.argv[1]).namelist(); "
        "missing = [s for s in ('.cu', '.cpp') if not any(n.endswith(s) for n in names)]; "
        "sys.exit(f'wheel lacks CUDA sources: {missing}' if missing else 0)",
        str(wheel),
    )
    # Each wheel alone in a fresh venv, with only its declared dependencies (siblings from dist/),
    # then a smoke use of what it provides. The two lower layers get the oldest torch they declare.
    smoke = {
        "biwkv4-kernel": "import torch, biwkv4_kernel as b; k = torch.randn(1, 5, 4); "
        "print('biwkv4-kernel', b.__version__, b.biwkv4(k[0, 0], k[0, 1], k, k).shape)",
        "rwkv-blocks": "import torch, rwkv_blocks as r; "
        "print('rwkv-blocks', r.__version__, r.BiRWKVBlock(8)(torch.randn(1, 8, 3, 5)).shape)",
        # Every shipped weights file in the wheel with its SHA-256, then --version (which exits).
        "hpcm-models": "import hpcm_models.cli as c, hpcm_models.pretrained as p; "
        "print('shipped weights:', [p.weights_path(e).name for e in p.shipped_weights()]); "
        "c.main(['--version'])",
    }
    links = [arg for p in PACKAGES for arg in ("--find-links", str(dist / p))]
    # A rebuilt wheel keeps its name while the version is unchanged: never take uv's cached copy.
    links += [arg for p in PACKAGES for arg in ("--refresh-package", p)]
    for package in PACKAGES:
        venv = ROOT / ".nox" / "build-smoke" / package
        session.run("uv", "venv", "--quiet", "--clear", "--python", sys.executable, str(venv))
        python = str(venv / "bin" / "python")
        wheel = str(next((dist / package).glob("*.whl")))
        oldest = [f"torch=={TORCH_MATRIX[0][0]}"] if package in LOWER_LAYERS else []
        session.run("uv", "pip", "install", "--quiet", "--python", python, *links, wheel, *oldest)
        session.run(python, "-c", "import torch; print('torch', torch.__version__)", external=True)
        session.run(python, "-c", smoke[package], external=True)
        if package == "rwkv-blocks":  # the example runs with only the two lower layers installed
            example = ROOT / "packages" / "rwkv-blocks" / "examples" / "denoise.py"
            session.run(python, str(example), "--steps", "5", external=True)


# (torch, how its CUDA toolchain is obtained). CUDA 13's compiler is on PyPI, split over several
# wheels that must come from the same CUDA release (a newer cicc emits PTX an older ptxas rejects).
# CUDA 12's PyPI wheels lack the nvcc driver, so that cell assembles Debian's CUDA 12.4 compiler
# with PyPI headers (tools/cuda12_toolkit.py). No cell uses a system CUDA.
def _cuda13_wheels(minor: str) -> str:
    parts = ("nvidia-cuda-nvcc", "nvidia-nvvm", "nvidia-cuda-crt", "nvidia-cuda-cccl")
    return " ".join(f"{p}==13.{minor}.*" for p in parts)


CUDA_MATRIX = [
    nox.param("2.11.0", _cuda13_wheels("0"), id="cu13.0-torch2.11"),
    nox.param("2.15.0", _cuda13_wheels("2"), id="cu13.2-torch2.15"),
    nox.param("2.8.0", "debian:cuda-12.4", id="cu12.8-torch2.8"),
    nox.param("2.4.0", "debian:cuda-12.4", id="cu12.1-torch2.4"),  # the oldest torch supported
]


def _path_without_nvcc() -> str:
    """PATH minus every directory that holds an nvcc, so only the cell's toolchain can be found."""
    return os.pathsep.join(
        d
        for d in os.environ.get("PATH", "").split(os.pathsep)
        if d and not Path(d, "nvcc").exists()
    )


@nox.session(default=False)
@nox.parametrize(("torch", "toolchain"), CUDA_MATRIX)
def cuda_build(session: nox.Session, torch: str, toolchain: str) -> None:
    """Compile the CUDA op and the Triton kernels for sm_80/sm_90 against one torch (no GPU)."""
    session.env.update(ENV)
    # nox passes its own environment through; a toolkit named there would defeat the point.
    for var in ("CUDA_HOME", "CUDA_PATH", "BIWKV4_CUDA_HOME", "TORCH_CUDA_ARCH_LIST"):
        os.environ.pop(var, None)
    session.env["PATH"] = os.pathsep.join([str(Path(session.bin)), _path_without_nvcc()])
    session.env["BIWKV4_BUILD_DIR"] = str(Path(session.create_tmp()) / "biwkv4-build")
    # The op runs from source: this session only checks that the sources compile against that
    # torch build's headers, so nothing else of the package is installed.
    session.env["PYTHONPATH"] = str(ROOT / "packages" / "biwkv4-kernel" / "src")
    # ninja and setuptools: the package's build dependencies (torch.utils.cpp_extension imports
    # setuptools, which torch 2.4 does not install).
    session.install(f"torch=={torch}", "ninja", "setuptools")
    check = [str(ROOT / "tools" / "check_cuda_build.py")]
    site = session.run(
        "python", "-c", "import sysconfig; print(sysconfig.get_path('purelib'))", silent=True
    )
    site_packages = Path(str(site).strip().splitlines()[-1])

    if toolchain.startswith("debian:"):
        toolkit = ROOT / ".nox" / "_toolkits" / toolchain.split(":", 1)[1]
        session.run(
            sys.executable,
            str(ROOT / "tools" / "cuda12_toolkit.py"),
            str(toolkit),
            "--site-packages",
            str(site_packages),
            external=True,
        )
        session.run(
            "python",
            *check,
            "--expect-found-by",
            "BIWKV4_CUDA_HOME",
            env={"BIWKV4_CUDA_HOME": str(toolkit)},
        )
        # A CUDA 13 nvcc named explicitly for this CUDA 12 torch must be refused by the op itself.
        session.install(*_cuda13_wheels("0").split())
        session.run(
            "python",
            *check,
            "--expect-mismatch",
            env={"BIWKV4_CUDA_HOME": str(site_packages / "nvidia" / "cu13")},
        )
    else:
        session.install(*toolchain.split())
        session.run("python", *check, "--expect-found-by", "pip package")
    # The Triton kernels, with the triton this torch brings, for the same architectures.
    session.run("python", str(ROOT / "tools" / "check_triton_build.py"))
