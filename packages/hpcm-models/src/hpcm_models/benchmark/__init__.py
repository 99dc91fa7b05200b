"""Cost of the models and of the s3 context cell: parameters, FLOPs, latency, memory.

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` (matrix products, convolutions
and attention, 2 FLOPs per multiply–add) plus an analytic count of the bidirectional WKV op, which
the counter cannot see into (:func:`biwkv4_flops`, registered with the counter through its
``custom_mapping``). Element-wise operations (activations, normalizations, the entropy model)
are not counted, as is usual for learned codecs.

Latencies are medians of ``repeat`` timed runs after ``warmup`` untimed ones, synchronized on
CUDA; peak memory is ``torch.cuda.max_memory_allocated`` over one run (CUDA only: there is no
allocator statistic on CPU). The context cells are also timed replayed from a CUDA graph, their
memory is counted as what the cell itself needs (:func:`bench_cells`), and their launches as
dispatched ops (:func:`count_ops`). ``hpcm bench`` prints the tables and writes the JSON.

:mod:`.measure` holds what both benchmarks measure with, :mod:`.models` the models' costs,
:mod:`.cells` the context cells'.
"""

from .cells import (
    CELL_SIZES,
    CellResult,
    CellWorkload,
    bench_cells,
    cell_workload,
    context_cells,
    format_cell_ratios,
    format_cell_table,
)
from .measure import (
    BIWKV4_BACKWARD_FLOPS_PER_ELEMENT,
    BIWKV4_FORWARD_FLOPS_PER_ELEMENT,
    as_dict,
    biwkv4_flops,
    count_flops,
    count_ops,
    machine_info,
    parse_size,
    time_ms,
)
from .models import ModelResult, bench_models, format_fast_table, format_model_table

__all__ = [
    "BIWKV4_BACKWARD_FLOPS_PER_ELEMENT",
    "BIWKV4_FORWARD_FLOPS_PER_ELEMENT",
    "CELL_SIZES",
    "CellResult",
    "CellWorkload",
    "ModelResult",
    "as_dict",
    "bench_cells",
    "bench_models",
    "biwkv4_flops",
    "cell_workload",
    "context_cells",
    "count_flops",
    "count_ops",
    "format_cell_ratios",
    "format_cell_table",
    "format_fast_table",
    "format_model_table",
    "machine_info",
    "parse_size",
    "time_ms",
]
