"""CPU benchmark: fusedrnn against PyTorch, ONNX Runtime and the NumPy reference.
Same as `fusedrnn bench`; see python/fusedrnn/benchmark.py. Example:
    python bench/cpu_bench.py --json bench/results/cpu.json
"""
import argparse
import sys

from fusedrnn.benchmark import add_arguments, run

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(p)
    sys.exit(run(p.parse_args()))
