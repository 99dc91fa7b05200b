"""Compile the biwkv4 CUDA op for sm_80 and sm_90 without a GPU and import it (nox `cuda_build`).

Checks which toolkit the op found (``--expect-found-by``), that the build contains machine code for
every requested architecture, and, with ``--expect-mismatch``, that an nvcc whose major version
differs from torch's CUDA is refused with the op's own BuildError.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ARCHS = "8.0;9.0"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--expect-found-by", default="", help="substring of how nvcc was found")
    parser.add_argument("--expect-mismatch", action="store_true")
    args = parser.parse_args()

    os.environ["TORCH_CUDA_ARCH_LIST"] = ARCHS
    os.environ.setdefault("BIWKV4_BUILD_DIR", tempfile.mkdtemp(prefix="biwkv4-build-"))
    import torch

    from biwkv4_kernel import _ext

    print(f"torch {torch.__version__} (CUDA {torch.version.cuda})")
    if args.expect_mismatch:
        try:
            toolkit = _ext.find_cuda_toolkit()
        except _ext.BuildError as err:
            message = str(err)
            print(f"refused as expected:\n{message}")
            return 0 if "does not match" in message else 1
        print(f"expected a version mismatch error, but found {toolkit.describe()}")
        return 1

    toolkit = _ext.find_cuda_toolkit()
    print(f"toolkit: {toolkit.describe()}")
    if args.expect_found_by not in toolkit.found_by:
        print(f"expected nvcc found by {args.expect_found_by!r}")
        return 1
    start = time.perf_counter()
    module = _ext.load_extension()
    print(f"built and imported {module.__name__} in {time.perf_counter() - start:.1f} s")
    for name in ("forward", "backward"):
        if not callable(getattr(module, name, None)):
            print(f"the extension lacks {name}()")
            return 1
    ninja = Path(module.__file__).parent / "build.ninja"
    flags = ninja.read_text() if ninja.exists() else ""
    for arch in ("sm_80", "sm_90"):
        if f"code={arch}" not in flags:
            print(f"{ninja} does not compile for {arch}")
            return 1
    print(f"compiled with -gencode for sm_80 and sm_90 ({ninja})")
    cuobjdump = toolkit.root / "bin" / "cuobjdump"
    if cuobjdump.exists():
        listing = subprocess.run(
            [str(cuobjdump), "--list-elf", str(Path(module.__file__))],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        for arch in ("sm_80", "sm_90"):
            if arch not in listing:
                print(f"no {arch} machine code in {module.__file__}:\n{listing}")
                return 1
        print("machine code for sm_80 and sm_90 present")
    return 0


if __name__ == "__main__":
    sys.exit(main())
