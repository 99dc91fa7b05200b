"""Shared test configuration: the `cuda` marker, a guard against runs that test nothing, and
Triton's interpreter where there is no GPU."""

from __future__ import annotations

import os
import sys

import pytest
import torch
from hypothesis import settings

# Without a GPU, Triton's interpreter runs the Triton kernels on CPU tensors (tests/kernel/
# test_triton.py). triton.jit reads TRITON_INTERPRET when a kernel is defined, so it must be set
# before anything imports triton; nothing else in the tests compiles Triton code on a CPU.
if not torch.cuda.is_available() and "triton" not in sys.modules:
    os.environ.setdefault("TRITON_INTERPRET", "1")

# CI runs the property tests derandomized (same examples every run, so a red CI is reproducible);
# locally they explore new examples each run. .ci/run sets HYPOTHESIS_PROFILE=ci.
settings.register_profile("ci", derandomize=True, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip_cuda = pytest.mark.skip(reason="needs a CUDA GPU (none visible to torch)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip_cuda)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # A run in which nothing passed (all skipped, or everything deselected) proves nothing: fail it.
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None or exitstatus != 0 or session.config.option.collectonly:
        return
    if not reporter.stats.get("passed"):
        reporter.write_line("error: no test passed in this run", red=True)
        session.exitstatus = pytest.ExitCode.NO_TESTS_COLLECTED


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread for a module (``pytestmark = pytest.mark.usefixtures(...)``): the
    codec codes with one CPU thread anyway, and the machine is shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def device() -> torch.device:
    """The accelerator if there is one, else the CPU (for tests that run on either)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
