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

# (torch, torchvision): the oldest torch we support (the GPU machine's) and the newest on PyPI.
# Each torchvision is the one built against that torch.
TORCH_MATRIX = [("2.11.0", "0.26.0"), ("2.15.0", "0.29.2")]

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


def _editable_packages() -> list[str]:
    args: list[str] = []
    for package in PACKAGES:
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
def tests(session: nox.Session, torch: str, torchvision: str) -> None:
    """Run the whole test suite on CPU against one torch release."""
    session.env.update(ENV)
    session.install(
        f"torch=={torch}",
        f"torchvision=={torchvision}",
        *_editable_packages(),
        *_dev_requirements(),
    )
    session.run("python", "-c", "import torch; print('torch', torch.__version__)")
    session.run("pytest", *session.posargs)


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
