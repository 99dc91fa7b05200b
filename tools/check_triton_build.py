"""Compile every Triton kernel of the biwkv4 op for sm_80 and sm_90, without a GPU (`cuda_build`).

Triton's interpreter (the CPU tests) cannot see what only its compiler checks: types, layouts,
register allocation. This compiles each kernel specialization that the launchers in
``biwkv4_kernel._triton_kernels`` use (every dtype, pass and flag) with the triton that came with
this torch, and prints its compile time and, where triton bundles ``cuobjdump``, its registers and
spill stores (``LOCAL``).
"""

from __future__ import annotations

import argparse
import inspect
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from biwkv4_kernel import _triton_kernels as K

ARCHS = (80, 90)
F32 = "*fp32"


def _specializations(dtype: str) -> list[tuple]:
    """(kernel, pointer types by argument name, constexprs) of the launchers for one k dtype."""
    data = f"*{dtype}"
    L, G, BC = K.CHUNK, K.GROUP, K._BC
    jobs = []
    # The forward pass, the backward's rows (moments) and transposed sums (scores -lse, float32).
    for neg, nv, mom, scores in (
        (False, 1, False, data),
        (False, 1, True, data),
        (True, 2, False, F32),
    ):
        ptrs = {"x_ptr": scores, "v1_ptr": data, "v2_ptr": data, "w_ptr": F32, "out_ptr": F32}
        jobs.append(
            (K._chunk_summaries, ptrs, {"NEG": neg, "NV": nv, "MOM": mom, "L": L, "BC": BC})
        )
        level = {"NV": nv, "MOM": mom}
        ptrs = {"cs_ptr": F32, "w_ptr": F32, "bs_ptr": F32}
        jobs.append((K._block_summaries, ptrs, {**level, "L": L, "G": G, "BC": BC}))
        ptrs = {"bs_ptr": F32, "w_ptr": F32, "bi_ptr": F32}
        jobs.append((K._block_states, ptrs, {**level, "SPAN": L * G, "QT": G, "BC": BC}))
    for stats in (True, False):
        ptrs = {name: data for name in ("k_ptr", "v_ptr", "y_ptr")}
        ptrs |= {name: F32 for name in ("w_ptr", "u_ptr", "cs_ptr", "bi_ptr")}
        ptrs["lse_ptr"] = F32 if stats else data  # without stats the launcher passes y
        jobs.append((K._forward_output, ptrs, {"STATS": stats, "L": L, "G": G, "BC": BC}))
    ptrs = {name: data for name in ("k_ptr", "v_ptr", "y_ptr", "gy_ptr", "gk_ptr", "gv_ptr")}
    f32_names = (
        "w_ptr",
        "u_ptr",
        "lse_ptr",
        "rs_ptr",
        "ri_ptr",
        "ts_ptr",
        "ti_ptr",
        "pw_ptr",
        "pu_ptr",
    )
    ptrs |= {name: F32 for name in f32_names}
    jobs.append((K._backward_output, ptrs, {"L": L, "G": G, "BC": BC}))
    return jobs


def _source(kernel, ptrs: dict[str, str], constexprs: dict[str, object]) -> ASTSource:
    """The kernel with these argument types, for either generation of triton's ASTSource."""
    names = kernel.arg_names
    index = {name: i for i, name in enumerate(names)}
    if "constants" in inspect.signature(ASTSource.__init__).parameters:  # triton 3.0, 3.1
        signature = {index[n]: ptrs.get(n, "i32") for n in names if n not in constexprs}
        return ASTSource(kernel, signature, {index[n]: v for n, v in constexprs.items()})
    signature = {n: "constexpr" if n in constexprs else ptrs.get(n, "i32") for n in names}
    return ASTSource(kernel, signature, {(index[n],): v for n, v in constexprs.items()})


def _resources(cubin: bytes) -> str:
    cuobjdump = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    if not cuobjdump.exists():
        return ""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run(
            [str(cuobjdump), "--dump-resource-usage", f.name], capture_output=True, text=True
        ).stdout
    usage = next((line[line.index("REG:") :] for line in out.splitlines() if "REG:" in line), "")
    return " ".join(part for part in usage.split() if part.split(":")[0] in ("REG", "LOCAL"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", type=int, nargs="+", default=ARCHS, help="e.g. 80 90")
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16", "fp16"])
    args = parser.parse_args()
    print(f"triton {triton.__version__}")
    failures = 0
    for arch in args.archs:
        for dtype in args.dtypes:
            for kernel, ptrs, constexprs in _specializations(dtype):
                flags = ",".join(f"{k}={v}" for k, v in constexprs.items() if k not in "LGBC")
                label = f"sm_{arch} {dtype} {kernel.__name__}({flags})"
                start = time.perf_counter()
                try:
                    compiled = triton.compile(
                        _source(kernel, ptrs, constexprs),
                        target=GPUTarget("cuda", arch, 32),
                        options=dict(K._OPTIONS),
                    )
                except Exception as exc:
                    failures += 1
                    print(f"FAILED {label}: {type(exc).__name__}: {exc}")
                    continue
                seconds = time.perf_counter() - start
                print(f"{label}: {seconds:.1f} s {_resources(compiled.asm['cubin'])}", flush=True)
    print(f"{failures} kernel(s) failed to compile" if failures else "every kernel compiled")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
