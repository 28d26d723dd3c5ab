"""CPU benchmark: fusedrnn against PyTorch, ONNX Runtime and the NumPy reference.
Same as `fusedrnn bench` (its options, checks and messages); see python/fusedrnn/benchmark.py.
Example:
    python bench/cpu_bench.py --json cpu.json
"""
import sys

from fusedrnn.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
