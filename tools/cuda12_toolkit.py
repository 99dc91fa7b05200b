"""Assemble a relocatable CUDA 12.4 toolkit from registry packages, for the `cuda_build` matrix.

NVIDIA's CUDA 12 wheels on PyPI (`nvidia-cuda-nvcc-cu12`) ship `ptxas` and the NVVM library but
not the `nvcc` driver, `cicc` or `cudafe++`, so a CUDA 12 `nvcc` cannot come from PyPI alone. Debian
(trixie, non-free) packages CUDA 12.4's compiler; this script downloads those two `.deb`s from
deb.debian.org, unpacks them with `dpkg-deb -x` (no root, nothing installed system-wide), adds the
runtime, `crt` and CCCL headers from PyPI wheels, writes an `nvcc.profile` that makes the tree
relocatable, and copies the headers of the `nvidia-*-cu12` wheels found in the given site-packages
(cuBLAS, cuSPARSE, … which torch's headers include).

Usage: python tools/cuda12_toolkit.py DEST [--site-packages DIR]
The result is a CUDA_HOME with bin/nvcc, include/, lib64/ and nvvm/.
"""

from __future__ import annotations

import argparse
import lzma
import shutil
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from pathlib import Path

DEBIAN = "http://deb.debian.org/debian"
DEBIAN_INDEX = f"{DEBIAN}/dists/trixie/non-free/binary-amd64/Packages.xz"
DEBIAN_PACKAGES = ("nvidia-cuda-toolkit", "libnvvm4")
# Header-only pieces from PyPI, versions matching the 12.4 compiler (CCCL 12.4's wheel lacks nv/).
WHEELS = (
    "nvidia-cuda-runtime-cu12==12.4.127",
    "nvidia-cuda-nvcc-cu12==12.4.131",
    "nvidia-cuda-cccl-cu12==12.6.77",
)
PROFILE = """\
TOP                = $(_HERE_)/..
NVVMIR_LIBRARY_DIR = $(TOP)/nvvm/libdevice
LD_LIBRARY_PATH   += $(TOP)/lib64:$(TOP)/nvvm/lib64:
PATH              += $(TOP)/nvvm/bin:$(_HERE_):
INCLUDES          +=  "-I$(TOP)/include" $(_SPACE_)
LIBRARIES          =+ $(_SPACE_) "-L$(TOP)/lib64"
"""


def _debian_filenames() -> dict[str, str]:
    with urllib.request.urlopen(DEBIAN_INDEX, timeout=120) as response:
        index = lzma.decompress(response.read()).decode()
    found: dict[str, str] = {}
    for stanza in index.split("\n\n"):
        fields = dict(
            line.split(": ", 1) for line in stanza.splitlines() if ": " in line and line[0] != " "
        )
        if fields.get("Package") in DEBIAN_PACKAGES:
            found[fields["Package"]] = fields["Filename"]
    missing = set(DEBIAN_PACKAGES) - set(found)
    if missing:
        sys.exit(f"not in Debian trixie non-free: {sorted(missing)}")
    return found


def _download(url: str, dest: Path) -> Path:
    with urllib.request.urlopen(url, timeout=600) as response, dest.open("wb") as out:
        shutil.copyfileobj(response, out)
    return dest


def assemble(dest: Path, site_packages: list[Path]) -> None:
    if (dest / "bin" / "nvcc").exists():
        print(f"{dest} already exists")
        return
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        unpacked = tmp / "root"
        for name, filename in _debian_filenames().items():
            deb = _download(f"{DEBIAN}/{filename}", tmp / f"{name}.deb")
            subprocess.run(["dpkg-deb", "-x", str(deb), str(unpacked)], check=True)
        pip = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps"]
        subprocess.run([*pip, "-d", str(tmp / "w"), *WHEELS], check=True)
        for wheel in (tmp / "w").glob("*.whl"):
            zipfile.ZipFile(wheel).extractall(tmp / "pip")

        staging = dest.with_name(dest.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        for sub in ("bin", "include", "lib64", "nvvm/bin", "nvvm/lib64", "nvvm/libdevice"):
            (staging / sub).mkdir(parents=True, exist_ok=True)
        usr = unpacked / "usr"
        for tool in ("bin2c", "cudafe++", "fatbinary", "nvlink", "ptxas", "nvprune", "cuobjdump"):
            shutil.copy2(usr / "bin" / tool, staging / "bin" / tool)
        toolkit = usr / "lib" / "nvidia-cuda-toolkit"
        shutil.copy2(toolkit / "bin" / "nvcc", staging / "bin" / "nvcc")
        shutil.copytree(toolkit / "bin" / "crt", staging / "bin" / "crt")
        shutil.copy2(toolkit / "bin" / "cicc", staging / "nvvm" / "bin" / "cicc")
        for f in (toolkit / "libdevice").iterdir():
            shutil.copy2(f, staging / "nvvm" / "libdevice" / f.name)
        for f in (usr / "lib" / "x86_64-linux-gnu").glob("libnvvm.so*"):
            shutil.copy2(f, staging / "nvvm" / "lib64" / f.name, follow_symlinks=False)
        (staging / "bin" / "nvcc.profile").write_text(PROFILE)

        pip_nvidia = tmp / "pip" / "nvidia"
        for part in ("cuda_runtime", "cuda_nvcc", "cuda_cccl"):
            shutil.copytree(pip_nvidia / part / "include", staging / "include", dirs_exist_ok=True)
        for f in (pip_nvidia / "cuda_runtime" / "lib").glob("libcudart*"):
            shutil.copy2(f, staging / "lib64" / f.name)
        cudart = sorted((staging / "lib64").glob("libcudart.so.*"))
        if cudart and not (staging / "lib64" / "libcudart.so").exists():
            (staging / "lib64" / "libcudart.so").symlink_to(cudart[0].name)
        # Headers of the CUDA libraries torch's own headers include (cuBLAS, cuSPARSE, ...).
        for sp in site_packages:
            for include in sorted((sp / "nvidia").glob("*/include")):
                if include.parent.name not in ("cuda_runtime", "cuda_nvcc", "cuda_cccl"):
                    shutil.copytree(include, staging / "include", dirs_exist_ok=True)
        (staging / "include" / "__init__.py").unlink(missing_ok=True)
        staging.rename(dest)
    print(f"assembled CUDA 12.4 toolkit in {dest}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dest", type=Path)
    parser.add_argument("--site-packages", type=Path, action="append", default=[])
    args = parser.parse_args()
    assemble(args.dest.resolve(), args.site_packages)


if __name__ == "__main__":
    main()
