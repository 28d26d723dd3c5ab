"""fusedrnn's CUDA kernels against cuDNN (through torch.nn) on the anchors' GPU shapes: a thin
script over fusedrnn.benchmark_gpu (the same as `fusedrnn bench --device cuda`).

    python bench/gpu_bench.py [--json out.json] [--quick | --all] [--precisions fp32,tf32]
"""
import sys

from fusedrnn.benchmark_gpu import main

if __name__ == "__main__":
    sys.exit(main())
