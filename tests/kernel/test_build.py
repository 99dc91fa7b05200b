"""Building the CUDA extension without a GPU, and finding the CUDA toolkit to build it with.

CI has nvcc but no GPU: `test_extension_compiles_for_hopper` compiles the real sources for sm_90
(so a compile error never lands) and imports the module. Where no nvcc is found it is skipped,
unless BIWKV4_REQUIRE_NVCC=1 (CI sets it), which turns the skip into a failure. The discovery
tests run everywhere: they build fake toolkits (a shell script standing in for nvcc) in tmp dirs.
"""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import pytest
import torch

from biwkv4_kernel import _ext
from biwkv4_kernel._ext import BuildError, build_directory, find_cuda_toolkit


def _nvcc_or_skip() -> _ext.CudaToolkit:
    try:
        return find_cuda_toolkit()
    except BuildError as exc:
        if os.environ.get("BIWKV4_REQUIRE_NVCC") == "1":
            raise
        pytest.skip(f"no CUDA toolkit matching torch found, so nothing to compile with: {exc}")


@pytest.mark.skipif(sys.platform != "linux", reason="the JIT build is set up for Linux")
def test_extension_compiles_for_hopper(tmp_path, monkeypatch):
    from torch.utils import cpp_extension

    toolkit = _nvcc_or_skip()
    monkeypatch.setenv("BIWKV4_BUILD_DIR", str(tmp_path))
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "9.0")
    monkeypatch.setattr(_ext, "_LOADED", None)
    env_before, global_before = os.environ.get("CUDA_HOME"), cpp_extension.CUDA_HOME
    module = _ext.load_extension()
    # CUDA_HOME was set for the build only.
    assert (os.environ.get("CUDA_HOME"), cpp_extension.CUDA_HOME) == (env_before, global_before)
    built = build_directory(toolkit, "9.0")
    assert built.parent == tmp_path
    assert any(built.glob("*.so")), "no shared library in the build directory"
    assert {"forward", "backward"} <= set(dir(module))
    # The glue's checks run before anything touches a GPU.
    w = torch.zeros(4)
    k = torch.zeros(1, 3, 4)
    with pytest.raises(ValueError, match="expected w on a CUDA device"):
        module.forward(w, w, k, k, False)
    with pytest.raises(ValueError, match=r"expected k of shape \[B, T, C\], got \[3, 4\]"):
        module.backward(w, w, k[0], k[0], k[0], k[0], k[0])


# --- finding a toolkit --------------------------------------------------------------------------


def _script(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def _fake_nvcc(bin_dir: Path, version: str, print_top: bool = True) -> Path:
    """A stand-in nvcc: prints its release for --version and, like nvcc, TOP for --dryrun."""
    top = 'echo "#\\$ TOP=$(dirname "$0")/.." >&2' if print_top else "exit 1"
    return _script(
        bin_dir / "nvcc",
        "#!/bin/sh\n"
        'case "$1" in\n'
        f'  --version) echo "Cuda compilation tools, release {version}, V{version}.1";;\n'
        f"  --dryrun) {top};;\n"
        "esac\n",
    )


def _fake_toolkit(root: Path, version: str, lib: str = "lib64", print_top: bool = True) -> Path:
    _fake_nvcc(root / "bin", version, print_top)
    (root / "include").mkdir(parents=True, exist_ok=True)
    (root / "include" / "cuda_runtime.h").write_text("")
    (root / lib).mkdir(parents=True, exist_ok=True)
    (root / lib / f"libcudart.so.{version.split('.')[0]}").write_text("")
    return root


@pytest.fixture
def isolated(monkeypatch, tmp_path):
    """No toolkit anywhere unless a test puts one there: empty PATH, no pip or system installs."""
    sites: list[Path] = []
    roots: list[Path] = []
    monkeypatch.setattr(_ext, "_site_package_dirs", lambda: list(sites))
    monkeypatch.setattr(_ext, "_system_roots", lambda: list(roots))
    env = {"PATH": str(tmp_path / "empty-path")}
    return env, sites, roots


def test_wrapper_script_on_path_resolves_to_the_real_toolkit(tmp_path, isolated):
    env, _, _ = isolated
    real = _fake_toolkit(tmp_path / "cuda-13.0", "13.0")
    _script(tmp_path / "wrappers" / "nvcc", f'#!/bin/sh\nexec {real}/bin/nvcc "$@"\n')
    env["PATH"] = str(tmp_path / "wrappers")
    toolkit = find_cuda_toolkit("13.0", env)
    assert toolkit.root == real.resolve()
    assert toolkit.version == "13.0"
    assert "nvcc on PATH" in toolkit.found_by
    assert toolkit.library_dirs == (real.resolve() / "lib64",)


def test_symlinked_nvcc_without_dryrun_falls_back_to_the_link_target(tmp_path, isolated):
    env, _, _ = isolated
    real = _fake_toolkit(tmp_path / "cuda-12.4", "12.4", lib="lib", print_top=False)
    (tmp_path / "links").mkdir()
    (tmp_path / "links" / "nvcc").symlink_to(real / "bin" / "nvcc")
    env["PATH"] = str(tmp_path / "links")
    toolkit = find_cuda_toolkit("12.8", env)
    assert toolkit.root == real.resolve()
    assert toolkit.library_dirs == (real.resolve() / "lib",)


def test_explicit_variables_win_in_order(tmp_path, isolated):
    env, _, _ = isolated
    a = _fake_toolkit(tmp_path / "a", "13.0")
    b = _fake_toolkit(tmp_path / "b", "13.1")
    c = _fake_toolkit(tmp_path / "c", "13.2")
    _script(tmp_path / "wrappers" / "nvcc", f'#!/bin/sh\nexec {c}/bin/nvcc "$@"\n')
    env["PATH"] = str(tmp_path / "wrappers")
    assert find_cuda_toolkit("13.0", env).root == c.resolve()
    env["CUDA_PATH"] = str(b)
    assert find_cuda_toolkit("13.0", env).root == b
    env["CUDA_HOME"] = str(a)
    assert find_cuda_toolkit("13.0", env).root == a
    env["BIWKV4_CUDA_HOME"] = str(b)
    toolkit = find_cuda_toolkit("13.0", env)
    assert toolkit.root == b
    assert toolkit.found_by == "$BIWKV4_CUDA_HOME"


def test_explicit_toolkit_that_is_incomplete_is_an_error(tmp_path, isolated):
    env, sites, _ = isolated
    _fake_toolkit(tmp_path / "site" / "nvidia" / "cu13", "13.0", lib="lib")
    sites.append(tmp_path / "site")  # a usable toolkit exists, but the user named another
    broken = tmp_path / "broken"
    _fake_nvcc(broken / "bin", "13.0")
    env["BIWKV4_CUDA_HOME"] = str(broken)
    with pytest.raises(BuildError, match=r"no cuda_runtime\.h") as info:
        find_cuda_toolkit("13.0", env)
    assert "$BIWKV4_CUDA_HOME" in str(info.value)
    assert "BIWKV4_DISABLE_CUDA=1" in str(info.value)


def test_explicit_toolkit_with_another_major_version_is_an_error(tmp_path, isolated):
    env, _, _ = isolated
    env["CUDA_HOME"] = str(_fake_toolkit(tmp_path / "cuda-12.4", "12.4"))
    with pytest.raises(BuildError, match=r"nvcc 12\.4 .* does not match the CUDA 13\.0"):
        find_cuda_toolkit("13.0", env)


def test_pip_cu13_layout(tmp_path, isolated):
    env, sites, _ = isolated
    site = tmp_path / "site-packages"
    root = _fake_toolkit(site / "nvidia" / "cu13", "13.0", lib="lib")
    sites.append(site)
    toolkit = find_cuda_toolkit("13.0", env)
    assert toolkit.root == root
    assert "nvidia-cuda-nvcc" in toolkit.found_by
    assert toolkit.include_dirs == (root / "include",)


def test_pip_cu12_split_layout(tmp_path, isolated):
    env, sites, _ = isolated
    site = tmp_path / "site-packages"
    _fake_nvcc(site / "nvidia" / "cuda_nvcc" / "bin", "12.8")
    runtime = site / "nvidia" / "cuda_runtime"
    (runtime / "include").mkdir(parents=True)
    (runtime / "include" / "cuda_runtime.h").write_text("")
    (runtime / "lib").mkdir()
    (runtime / "lib" / "libcudart.so.12").write_text("")
    sites.append(site)
    toolkit = find_cuda_toolkit("12.6", env)
    assert toolkit.root == site / "nvidia" / "cuda_nvcc"
    assert toolkit.include_dirs == (runtime / "include",)
    assert toolkit.library_dirs == (runtime / "lib",)


def test_first_matching_major_version_wins_among_found_toolkits(tmp_path, isolated):
    env, _sites, roots = isolated
    old = _fake_toolkit(tmp_path / "cuda-12.4", "12.4")
    _script(tmp_path / "wrappers" / "nvcc", f'#!/bin/sh\nexec {old}/bin/nvcc "$@"\n')
    env["PATH"] = str(tmp_path / "wrappers")
    roots.append(_fake_toolkit(tmp_path / "cuda-13.0", "13.0"))
    assert find_cuda_toolkit("13.0", env).root == tmp_path / "cuda-13.0"
    assert find_cuda_toolkit("12.8", env).root == old.resolve()


def test_only_mismatched_toolkits_name_both_versions(tmp_path, isolated):
    env, _, roots = isolated
    roots.append(_fake_toolkit(tmp_path / "cuda-12.4", "12.4"))
    with pytest.raises(BuildError) as info:
        find_cuda_toolkit("13.0", env)
    message = str(info.value)
    assert "nvcc 12.4 does not match the CUDA 13.0" in message
    assert str(tmp_path / "cuda-12.4") in message


def test_nothing_found_lists_every_candidate(tmp_path, isolated):
    env, sites, roots = isolated
    sites.append(tmp_path / "site-packages")
    roots.append(tmp_path / "cuda")
    with pytest.raises(BuildError, match=r"no usable CUDA 13\.x toolkit") as info:
        find_cuda_toolkit("13.0", env)
    message = str(info.value)
    assert str(tmp_path / "cuda") in message
    assert str(tmp_path / "site-packages" / "nvidia" / "cuda_nvcc") in message
    assert "pip install nvidia-cuda-nvcc" in message


def test_torch_without_cuda_is_an_error(monkeypatch, isolated):
    env, _, _ = isolated
    monkeypatch.setattr(torch.version, "cuda", None)
    with pytest.raises(BuildError, match="no CUDA support"):
        find_cuda_toolkit(environ=env)


def test_unversioned_cudart_is_linked_through_the_build_directory(tmp_path):
    root = _fake_toolkit(tmp_path / "cu13", "13.0", lib="lib")
    toolkit = _ext.CudaToolkit(root, root / "bin" / "nvcc", "13.0", "test", (), (root / "lib",))
    flags = _ext._link_flags(toolkit, tmp_path / "build")
    link = tmp_path / "build" / "cudart" / "libcudart.so"
    assert link.resolve() == (root / "lib" / "libcudart.so.13").resolve()
    assert flags == [f"-L{root / 'lib'}", f"-L{link.parent}"]


def test_no_gpu_and_no_arch_list_is_an_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(BuildError, match="TORCH_CUDA_ARCH_LIST"):
        _ext._arch_list({})
    assert _ext._arch_list({"TORCH_CUDA_ARCH_LIST": " 8.0;9.0 "}) == "8.0;9.0"


def test_build_directory_is_keyed_and_relocatable(tmp_path):
    toolkit = _ext.CudaToolkit(tmp_path, tmp_path / "bin" / "nvcc", "13.0", "test")
    env = {"BIWKV4_BUILD_DIR": str(tmp_path / "cache")}
    a = build_directory(toolkit, "9.0", env)
    assert a.parent == tmp_path / "cache"
    assert a != build_directory(toolkit, "8.0", env)
    assert a == build_directory(toolkit, "9.0", env)
    default = build_directory(toolkit, "9.0", {"XDG_CACHE_HOME": str(tmp_path / "xdg")})
    assert default.parent == tmp_path / "xdg" / "biwkv4_kernel"


def test_relative_build_directory_is_made_absolute(tmp_path, monkeypatch):
    """ninja runs inside the build directory: a relative one would break the -L link flags."""
    monkeypatch.chdir(tmp_path)
    toolkit = _ext.CudaToolkit(tmp_path, tmp_path / "bin" / "nvcc", "13.0", "test")
    built = build_directory(toolkit, "9.0", {"BIWKV4_BUILD_DIR": "relative/cache"})
    assert built.is_absolute()
    assert built.parent == tmp_path / "relative" / "cache"


def test_disable_variable(monkeypatch):
    monkeypatch.setenv("BIWKV4_DISABLE_CUDA", "1")
    assert not _ext.cuda_kernel_available()
    assert _ext.cuda_kernel_status() == "disabled by BIWKV4_DISABLE_CUDA=1"
    monkeypatch.setenv("BIWKV4_DISABLE_CUDA", "0")
    if not torch.cuda.is_available():
        assert not _ext.cuda_kernel_available()
        assert _ext.cuda_kernel_status() == "no CUDA GPU is visible to torch"
