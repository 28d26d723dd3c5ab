"""The scripts in examples/ run as a user runs them (a subprocess, from the repository root) at a
tiny size with a fixed seed, exit 0, and end with a JSON line whose metrics are clearly better
than chance. The tiny sizes were checked on seeds 0-7 (0-5 for seq2seq) with a wide margin:
classifier accuracy 0.83-0.89, seq2seq greedy exact match 0.98-1.0, adding-problem MSE at most
0.03 of the mean-predicting baseline. Skipped where the source tree (examples/) is absent."""
import json
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"

pytestmark = pytest.mark.skipif(not EXAMPLES.is_dir(),
                                reason="examples/ is not here (an installed package without "
                                       "the source tree)")


def run_example(name, *options):
    """Run examples/NAME with --json and OPTIONS; return the last stdout line as JSON."""
    proc = subprocess.run([sys.executable, str(EXAMPLES / name), "--json", *options], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"{name} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    lines = proc.stdout.strip().splitlines()
    assert lines, f"{name} printed nothing:\n{proc.stderr}"
    return json.loads(lines[-1])


def test_classify_with_lengths():
    m = run_example("classify_with_lengths.py", "--epochs", "4", "--train-size", "1000",
                    "--test-size", "300", "--hidden", "32", "--max-len", "10", "--seed", "0")
    assert m["test_accuracy"] > 0.6 and m["test_accuracy"] > 2 * m["majority_baseline"]
    assert m["final_loss"] < 0.7 * m["first_loss"]
    assert m["checkpoint_reloaded_same"] is True


def test_seq2seq_attention():
    m = run_example("seq2seq_attention.py", "--epochs", "2", "--train-size", "2000",
                    "--test-size", "50", "--hidden", "32", "--max-len", "5", "--beam", "4",
                    "--seed", "0")
    assert m["greedy_exact_match"] >= 0.7
    assert m["beam4_exact_match"] >= 0.7
    assert m["final_loss"] < 0.5 * m["first_loss"]
    rows, cols = m["attention_shape"]
    assert 1 <= rows <= 6 and cols == 5          # the longest held-out source has 5 tokens


def test_functional_training_loop():
    m = run_example("functional_training_loop.py", "--steps", "300", "--T", "10",
                    "--hidden", "32", "--seed", "0")
    assert m["test_mse"] < 0.3 * m["baseline_mse"]
    assert m["test_mse"] < 0.1 * m["first_loss"]
    assert m["max_rel_grad_diff_vs_reference"] < 1e-10


@pytest.mark.parametrize("name,options,message", [
    ("classify_with_lengths.py", ["--max-len", "1"],
     "--max-len: expected an integer of at least 2"),
    ("classify_with_lengths.py", ["--batch-size", "0"], "--batch-size: expected a positive"),
    ("functional_training_loop.py", ["--T", "1"], "--T: expected an integer of at least 2"),
    ("seq2seq_attention.py", ["--min-len", "5", "--max-len", "3"],
     "--max-len: expected at least --min-len"),
    ("seq2seq_attention.py", ["--seed", "-1"], "--seed: expected a non-negative integer"),
])
def test_examples_refuse_nonsense_sizes_in_one_line(name, options, message):
    """A size the script cannot run is argparse's one-line error naming the option (exit 2),
    not a traceback from deep inside the data generation."""
    proc = subprocess.run([sys.executable, str(EXAMPLES / name), *options], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
