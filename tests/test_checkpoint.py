"""Training that survives interruption: a run stopped (Ctrl-C, or a crash) and resumed from its
checkpoint ends exactly where an uninterrupted run ends, parameters and metrics bit for bit;
checkpoints are written atomically; a bad --resume file is one clear error line.

Every comparison also counts the steps the resumed run takes: a run that silently started over
would end equal too, so each test checks that only the remaining steps were trained."""
import json
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import fusedrnn as fr
import numpy as np
import pytest
from fusedrnn import optim
from fusedrnn.cli import main
from fusedrnn.tasks import adding, caption_digits, chars, classify_text, dates, digits
from fusedrnn.training import Checkpointer, TrainingInterrupted, fit

TIME_KEYS = {"seconds", "train_seconds", "saved"}


def without_times(tree):
    """Metrics without wall-clock times (the only values a resumed run may change)."""
    if isinstance(tree, dict):
        return {k: without_times(v) for k, v in tree.items() if k not in TIME_KEYS}
    if isinstance(tree, list):
        return [without_times(v) for v in tree]
    return tree


def assert_same_arrays(a, b):
    assert list(a) == list(b)
    for key in a:
        assert a[key].dtype == b[key].dtype and np.array_equal(a[key], b[key]), key


# ---------------------------------------------------------------------------- fit, float64
class TinyRegressor(fr.nn.Module):
    """float64: a two-layer LSTM with dropout between its layers, Dropout, Linear; so every
    Generator a model can draw from is in play."""

    def __init__(self, seed):
        super().__init__()
        self.rnn = fr.nn.LSTM(3, 6, num_layers=2, dropout=0.3, dtype=np.float64, seed=seed)
        self.drop = fr.nn.Dropout(0.2, seed=seed + 1)
        self.head = fr.nn.Linear(6, 1, dtype=np.float64, seed=seed + 2)

    def forward(self, x):
        out, (h_n, _) = self.rnn(x)
        self._shapes = out.shape, h_n.shape
        return self.head(self.drop(h_n[-1]))[:, 0]

    def backward(self, dy):
        out_shape, h_shape = self._shapes
        dh_n = np.zeros(h_shape)
        dh_n[-1] = self.drop.backward(self.head.backward(dy[:, None]))
        self.rnn.backward(np.zeros(out_shape), (dh_n, None))


EPOCHS, BATCHES_PER_EPOCH = 3, 5


def tiny_run(checkpoint=None, on_step=None):
    """Three epochs of five shuffled batches (Adam, a cosine schedule, noise drawn in every
    step); returns (model, history, steps taken). ``on_step(n)`` runs before the n-th step."""
    x = np.random.default_rng(0).standard_normal((5, 40, 3))
    y = x.sum(axis=(0, 2)) / 5
    model = TinyRegressor(seed=1)
    opt = optim.Adam(model.parameters(), lr=0.01)
    sched = optim.CosineAnnealingLR(opt, T_max=EPOCHS)
    rng = np.random.default_rng(2)
    loss_fn = fr.nn.MSELoss()
    steps = [0]

    def step(idx):
        steps[0] += 1
        if on_step:
            on_step(steps[0])
        model.zero_grad()
        noise = rng.normal(0.0, 0.1, len(idx))  # the steps draw from rng too (teacher forcing)
        loss = loss_fn(model(x[:, idx]), y[idx] + noise)
        model.backward(loss_fn.backward())
        opt.step()
        return loss

    def evaluate(epoch):
        model.eval()
        mse = float(np.mean((model(x) - y) ** 2))
        model.train()
        return {"mse": mse}

    history = fit(step, lambda e: list(fr.data.batches(40, 8, rng=rng)), EPOCHS, evaluate,
                  sched, progress=False, desc="tiny",
                  state={"model": model, "optimizer": opt, "rng": rng}, checkpoint=checkpoint)
    return model, history, steps[0]


@pytest.mark.parametrize("how, at, resumes_after", [
    ("ctrl-c", 7, 7),     # mid-epoch: the step under way finishes, then the state is written
    ("ctrl-c", 10, 10),   # the last batch of an epoch: evaluation and schedule still to come
    ("ctrl-c", 15, 15),   # the very last step: the finished run is written
    ("raise", 7, 4),      # KeyboardInterrupt inside a step: back to the checkpoint of step 4
])
def test_fit_resumed_equals_uninterrupted_float64(tmp_path, capfd, how, at, resumes_after):
    model, history, total = tiny_run()
    assert total == EPOCHS * BATCHES_PER_EPOCH
    path = tmp_path / "tiny.ckpt"

    def interrupt(n):
        if n == at:
            if how == "ctrl-c":
                signal.raise_signal(signal.SIGINT)  # a real SIGINT, through fit's handler
            else:
                raise KeyboardInterrupt

    with pytest.raises(TrainingInterrupted) as stop:
        tiny_run(Checkpointer(path, every=4), on_step=interrupt)
    assert stop.value.checkpoint == str(path)
    assert ("mid-step" in str(stop.value)) == (how == "raise")
    assert fr.load(path)["stages"]["tiny"]["step"] == resumes_after
    assert os.listdir(tmp_path) == ["tiny.ckpt"]  # no temporary file left behind

    resumed, resumed_history, steps = tiny_run(Checkpointer(path, every=4, resume=path))
    assert steps == total - resumes_after
    assert_same_arrays(resumed.state_dict(), model.state_dict())
    assert without_times(resumed_history) == without_times(history)
    capfd.readouterr()  # the handler's "stopping after this step" note


def test_a_refused_resume_changes_nothing_and_may_be_retried(tmp_path):
    """A damaged position is refused before any object is restored (the weights were loaded,
    then the position refused), an infinite epoch as a damaged file (an OverflowError came
    out), and a Checkpointer whose resume was refused still resumes once the run is fixed (it
    had forgotten the stage: the retry trained from scratch over the checkpoint)."""
    path = tmp_path / "r.ckpt"
    x = np.random.default_rng(0).standard_normal((4, 3))

    def run(model, checkpoint):
        opt, steps = optim.SGD(model.parameters(), lr=0.1), [0]

        def step(idx):
            steps[0] += 1
            model.zero_grad()
            out = model(x[idx])
            model.backward(np.ones_like(out))
            opt.step()
            return float(out.sum())
        fit(step, lambda epoch: [[0, 1], [2, 3]], 3, progress=False,
            state={"m": model, "opt": opt}, checkpoint=checkpoint)
        return steps[0]

    assert run(fr.nn.Linear(3, 2, dtype=np.float64, seed=0), Checkpointer(path)) == 6
    saved = fr.load(path)
    (stage,) = saved["stages"]
    for damage in ({"next_batch": 5, "batches": [0, 1]}, {"epoch": float("inf")}):
        damaged = tmp_path / "damaged.ckpt"
        fr.save({**saved, "stages": {stage: {**saved["stages"][stage], **damage}}}, damaged)
        model = fr.nn.Linear(3, 2, dtype=np.float64, seed=1)
        before = model.state_dict()
        with pytest.raises(ValueError, match="a damaged checkpoint"):
            run(model, Checkpointer(damaged, resume=damaged))
        assert_same_arrays(model.state_dict(), before)
    checkpoint = Checkpointer(path, resume=path)
    with pytest.raises(ValueError, match="does not fit this run"):
        run(fr.nn.Linear(3, 5, dtype=np.float64, seed=1), checkpoint)
    model = fr.nn.Linear(3, 2, dtype=np.float64, seed=1)
    assert run(model, checkpoint) == 0
    assert_same_arrays(model.state_dict(), saved["stages"][stage]["objects"]["m"]["parameters"])


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    """A write that fails half-way (disk full, a kill) leaves the previous checkpoint whole, and
    the run resumes from it exactly."""
    model, history, total = tiny_run()
    path = tmp_path / "tiny.ckpt"
    import fusedrnn.io as frio
    real_savez, writes = frio.np.savez, []

    def savez_that_fails_the_second_time(f, **arrays):
        writes.append(1)
        if len(writes) == 2:
            f.write(b"PK\x03\x04partial")  # some bytes reach the disk, then the failure
            raise OSError(28, "No space left on device")
        real_savez(f, **arrays)

    monkeypatch.setattr(frio.np, "savez", savez_that_fails_the_second_time)
    with pytest.raises(OSError, match="No space left"):
        tiny_run(Checkpointer(path, every=3))
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["tiny.ckpt"]
    assert fr.load(path)["stages"]["tiny"]["step"] == 3  # the first checkpoint, whole
    resumed, resumed_history, steps = tiny_run(Checkpointer(path, resume=path))
    assert steps == total - 3
    assert_same_arrays(resumed.state_dict(), model.state_dict())
    assert without_times(resumed_history) == without_times(history)


def test_genetic_algorithm_state_round_trip():
    """The GA's state_dict carries everything that evolves: two runs restored from it agree."""
    model = fr.nn.Linear(3, 2, seed=0)
    x = np.random.default_rng(1).standard_normal((16, 3)).astype(np.float32)

    def make():
        return optim.GeneticAlgorithm(model, lambda: -float(np.sum(model(x) ** 2)),
                                      population_size=6, seed=3)

    ga = make()
    ga.run(2)
    saved = ga.state_dict()
    ga.run(3)
    other = make()
    other.load_state_dict(saved)
    other.run(3)
    assert other.history == ga.history and np.array_equal(other.population, ga.population)
    with pytest.raises(ValueError, match="population"):
        optim.GeneticAlgorithm(model, lambda: 0.0, population_size=5).load_state_dict(saved)
    # a refused state changes nothing, whichever entry is wrong, and names the entry
    before = other.state_dict()
    for key, value, match in (("best_fitness", "abc", "best_fitness"), ("rng", {"a": 1}, "rng"),
                              ("generation", 1.5, "generation"), ("scores", "x", "scores")):
        bad = dict(saved, population=saved["population"] + 1.0, **{key: value})
        with pytest.raises((TypeError, ValueError), match=match):
            other.load_state_dict(bad)
        after = other.state_dict()
        assert all(np.array_equal(after[k], before[k], equal_nan=True)
                   for k in ("population", "scores"))
        assert after["rng"] == before["rng"] and after["history"] == before["history"]
    with pytest.raises(ValueError, match="missing 'rng'"):
        other.load_state_dict({k: v for k, v in saved.items() if k != "rng"})


# ---------------------------------------------------------------------------- every CLI task
def reviews_csv(folder):
    rng = np.random.default_rng(0)
    rows = ["text,label"]
    for _ in range(60):
        label = int(rng.integers(2))
        words = list(rng.choice(["the", "movie", "was", "plot", "a"], int(rng.integers(2, 6))))
        words.append("great" if label else "awful")
        rows.append(f"\"{' '.join(words)}\",{'pos' if label else 'neg'}")
    path = folder / "reviews.csv"
    path.write_text("\n".join(rows) + "\n")
    return str(path)


# task -> (command line, the module whose fit runs the steps, the step to stop after: in the
# first epoch where a Generator shuffles each epoch, so the next epoch's order needs it)
CLI_RUNS = {
    "digits": (["train", "digits", "--limit", "96", "--hidden", "8", "--batch-size", "16",
                "--epochs", "2"], digits, 4),
    "digits-ga": (["train", "digits", "--trainer", "ga", "--population", "6", "--hidden", "4",
                   "--limit", "64", "--epochs", "2"], digits, 13),
    "adding": (["train", "adding", "--cells", "gru,lstm", "--length", "6", "--hidden", "8",
                "--steps", "4", "--batch-size", "8", "--epochs", "2"], adding, 11),  # 2nd cell
    "chars": (["train", "chars", "--max-chars", "3000", "--hidden", "16", "--embedding", "8",
               "--bptt", "8", "--batch-size", "4", "--epochs", "2"], chars, 15),
    "classify-text": (["train", "classify-text", "--data", "{csv}", "--hidden", "8",
                       "--embedding", "4", "--batch-size", "8", "--epochs", "2"],
                      classify_text, 4),
    "dates": (["train", "dates", "--train-size", "64", "--test-size", "16", "--hidden", "8",
               "--embed", "4", "--batch-size", "16", "--teacher-forcing", "0.5", "--beam", "1",
               "--epochs", "2"], dates, 5),
    "caption-digits": (["train", "caption-digits", "--hidden", "8", "--embed", "4",
                        "--batch-size", "64", "--beam", "1", "--epochs", "2"], caption_digits, 30),
    "demo": (["demo", "--no-timing", "--hidden", "8", "--epochs", "2"], digits, 50),
}


def last_line(text):
    return (text.strip().splitlines() or [""])[-1]


class StepCounter:
    """Wraps a task module's ``fit`` so that its steps are counted (across every fit of the
    run) and, at step ``stop_at``, Ctrl-C is pressed (a real SIGINT)."""

    def __init__(self, monkeypatch, module):
        self.steps, self.stop_at = 0, None
        real_fit = module.fit

        def counting_fit(train_step, *args, **kwargs):
            def step(batch):
                self.steps += 1
                if self.steps == self.stop_at:
                    signal.raise_signal(signal.SIGINT)
                return train_step(batch)
            return real_fit(step, *args, **kwargs)
        monkeypatch.setattr(module, "fit", counting_fit)

    def run(self, capfd, argv, stop_at=None):
        """(exit code, the last stdout line, the last stderr line, steps taken)."""
        self.steps, self.stop_at = 0, stop_at
        code = main(argv)
        out, err = capfd.readouterr()
        return code, last_line(out), last_line(err), self.steps


@pytest.mark.parametrize("task", list(CLI_RUNS))
def test_cli_run_stopped_by_ctrl_c_and_resumed_equals_uninterrupted(task, tmp_path, capfd,
                                                                      monkeypatch):
    argv, module, stop_at = CLI_RUNS[task]
    argv = [a.replace("{csv}", reviews_csv(tmp_path)) if a == "{csv}" else a for a in argv]
    argv += ["--json", "--no-progress", "--history"]
    counter = StepCounter(monkeypatch, module)
    code, out, _, total = counter.run(capfd, argv + ["--save", str(tmp_path / "a.npz")])
    assert code == 0 and total > stop_at
    expected = json.loads(out)

    ckpt = str(tmp_path / "run.ckpt")
    resumable = argv + ["--save", str(tmp_path / "b.npz"), "--checkpoint", ckpt,
                        "--checkpoint-every", "4"]
    code, _, err, steps = counter.run(capfd, resumable, stop_at=stop_at)
    assert code == 130 and steps == stop_at
    assert f"checkpoint written to {ckpt}; to continue: fusedrnn " in err
    assert err.endswith(f"--resume {ckpt}")

    code, out, _, steps = counter.run(capfd, resumable + ["--resume", ckpt])
    assert code == 0 and steps == total - stop_at
    assert without_times(json.loads(out)) == without_times(expected)
    a, b = fr.load(tmp_path / "a.npz"), fr.load(tmp_path / "b.npz")
    models = [("models", c) for c in a["models"]] if "models" in a else [("model", None)]
    for key, cell in models:
        assert_same_arrays(a[key][cell] if cell else a[key], b[key][cell] if cell else b[key])


CHILD = """
import sys
import fusedrnn.tasks.digits as digits
from fusedrnn.cli import main

real_fit, steps = digits.fit, [0]

def fit(train_step, *args, **kwargs):
    def step(batch):
        steps[0] += 1
        if steps[0] == 9:  # mid-training: tell the parent, wait until it has pressed Ctrl-C
            print("READY", flush=True)
            sys.stdin.readline()
        return train_step(batch)
    return real_fit(step, *args, **kwargs)

digits.fit = fit
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a child process: POSIX")
def test_sigint_to_a_training_process_then_the_printed_command_resumes_it(tmp_path, capsys):
    argv = ["train", "digits", "--limit", "96", "--hidden", "8", "--batch-size", "16",
            "--epochs", "2", "--json", "--no-progress"]
    assert main(argv + ["--save", str(tmp_path / "a.npz")]) == 0
    expected = json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    ckpt = str(tmp_path / "run.ckpt")
    child = subprocess.Popen([sys.executable, "-c", CHILD, *argv, "--checkpoint", ckpt],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "READY"
        child.send_signal(signal.SIGINT)
        _, err = child.communicate("go\n", timeout=60)
    finally:
        child.kill()
    assert child.returncode == 130, err
    assert "stopping after this step" in err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"fusedrnn: interrupted (digits: epoch 2/2, after batch 3/6); "
                           f"checkpoint written to {ckpt}; to continue: fusedrnn train digits")
    command = shlex.split(last.partition("to continue: ")[2])
    assert main(command[1:] + ["--save", str(tmp_path / "b.npz")]) == 0
    resumed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert without_times(resumed) == without_times(expected)
    assert_same_arrays(fr.load(tmp_path / "a.npz")["model"], fr.load(tmp_path / "b.npz")["model"])


# ---------------------------------------------------------------------------- clear errors
DIGITS = ["train", "digits", "--limit", "32", "--hidden", "4", "--batch-size", "16",
          "--epochs", "1", "--no-progress"]


def error_of(capsys, *argv):
    assert main(list(argv)) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fusedrnn: error: "), lines
    return lines[0]


@pytest.fixture
def digits_checkpoint(tmp_path, capsys):
    path = tmp_path / "digits.ckpt"
    assert main(DIGITS + ["--checkpoint", str(path)]) == 0
    capsys.readouterr()
    return path


def test_bad_resume_files_are_one_clear_line(tmp_path, capsys, digits_checkpoint):
    missing = tmp_path / "missing.ckpt"
    assert f"{missing}: No such file" in error_of(capsys, *DIGITS, "--resume", str(missing))
    text = tmp_path / "notes.ckpt"
    text.write_text("not a checkpoint")
    assert f"{text}: not a fusedrnn/NumPy .npz file" in error_of(capsys, *DIGITS, "--resume",
                                                                 str(text))
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(digits_checkpoint.read_bytes()[:2000])
    assert str(truncated) in error_of(capsys, *DIGITS, "--resume", str(truncated))
    model = tmp_path / "model.npz"
    assert main(DIGITS + ["--save", str(model)]) == 0
    capsys.readouterr()
    assert f"{model}: not a training checkpoint" in error_of(capsys, *DIGITS, "--resume",
                                                             str(model))


def test_resume_knows_the_data_by_its_contents(tmp_path, capsys):
    """--data is recorded by its contents: the same file under another path resumes (it was
    refused), another file under the same path is refused (it resumed on other data)."""
    import shutil
    csv = reviews_csv(tmp_path)
    checkpoint = tmp_path / "run.ckpt"
    argv = ["train", "classify-text", "--hidden", "4", "--embedding", "4", "--batch-size", "8",
            "--epochs", "1", "--no-progress", "--checkpoint", str(checkpoint)]
    assert main(argv + ["--data", csv]) == 0
    moved = tmp_path / "moved" / "reviews.csv"
    moved.parent.mkdir()
    shutil.copy(csv, moved)
    assert main(argv + ["--data", str(moved), "--resume", str(checkpoint)]) == 0
    capsys.readouterr()
    with open(moved, "a") as f:
        f.write("a good film,pos\n")
    line = error_of(capsys, *argv, "--data", str(moved), "--resume", str(checkpoint))
    assert "written by a run with --data contents sha256" in line
    # a checkpoint of an earlier release recorded the path: compared as the path
    saved = fr.load(checkpoint)
    saved["run"]["options"]["data"] = csv
    fr.save(saved, checkpoint)
    assert main(argv + ["--data", csv, "--resume", str(checkpoint)]) == 0
    # a pipe is read by the task alone (it was drained for its hash first, with or without
    # a checkpoint)
    read, write = os.pipe()
    with os.fdopen(write, "w") as f:
        f.write(Path(csv).read_text())  # (small: within the pipe's buffer)
    assert main(argv[:-2] + ["--data", f"/dev/fd/{read}"]) == 0
    os.close(read)


def test_resume_knows_an_mnist_folder_by_the_files_it_reads(tmp_path, capsys):
    """A checkpoint written into the --data folder resumes (the folder's hash took in every
    file under it, the checkpoint too)."""
    from fusedrnn.data.digits import MNIST_STEMS
    rng = np.random.default_rng(0)
    folder = tmp_path / "mnist"
    folder.mkdir()
    for stem, shape in zip(MNIST_STEMS, ((40, 8, 8), (40,), (10, 8, 8), (10,))):
        values = rng.integers(0, 10 if len(shape) == 1 else 256, shape).astype(np.uint8)
        header = bytes([0, 0, 8, len(shape)]) + b"".join(n.to_bytes(4, "big") for n in shape)
        (folder / stem).write_bytes(header + values.tobytes())
    argv = ["train", "digits", "--data", str(folder), "--hidden", "4", "--batch-size", "16",
            "--epochs", "1", "--no-progress", "--checkpoint", str(folder / "run.ckpt")]
    assert main(argv) == 0
    (folder / "notes.txt").write_text("not read by the task")
    assert main(argv + ["--resume", str(folder / "run.ckpt")]) == 0
    capsys.readouterr()


def test_checkpoint_of_another_run_is_refused(tmp_path, capsys, digits_checkpoint):
    ckpt = str(digits_checkpoint)
    assert f"{ckpt}: a checkpoint of `fusedrnn train digits`, not of `fusedrnn train chars`" in \
        error_of(capsys, "train", "chars", "--max-chars", "500", "--resume", ckpt)
    line = error_of(capsys, *[("8" if a == "4" else a) for a in DIGITS], "--resume", ckpt)
    assert f"{ckpt}: written by a run with --hidden 4; this run has --hidden 8" in line
    # the options that do not change training may differ
    assert main(DIGITS + ["--resume", ckpt, "--json"]) == 0


def test_damaged_checkpoint_names_the_file(tmp_path, capsys, digits_checkpoint):
    saved = fr.load(digits_checkpoint)
    weights = saved["stages"]["digits"]["objects"]["model"]["parameters"]
    weights["head.weight"] = weights["head.weight"][:, :2]
    damaged = tmp_path / "damaged.ckpt"
    fr.save(saved, damaged)
    line = error_of(capsys, *DIGITS, "--resume", str(damaged))
    assert f"{damaged}: a damaged checkpoint, or one that does not fit this run" in line
    assert "head.weight" in line


@pytest.mark.parametrize("extra, expected", [
    (["--checkpoint-every", "5"], "--checkpoint-every 5: needs --checkpoint PATH"),
    (["--checkpoint-every", "0"], "--checkpoint-every: expected a positive integer, got '0'"),
    (["--checkpoint", "/no/such/dir/c.ckpt"], "--checkpoint /no/such/dir/c.ckpt: the folder"),
    (["--checkpoint", "{tmp}"], "a folder; expected a file name"),
    (["--checkpoint", "{tmp}/x", "--save", "{tmp}/x"], "--save and --checkpoint both name"),
    (["--resume", "{tmp}/r.ckpt", "--save", "{tmp}/r.ckpt"], "--save and --resume both name"),
    (["--resume", "{tmp}/r.ckpt", "--plot", "{tmp}/./r.ckpt"], "--plot and --resume both name"),
])
def test_checkpoint_options_are_validated(tmp_path, capsys, extra, expected):
    extra = [a.replace("{tmp}", str(tmp_path)) for a in extra]
    assert expected in error_of(capsys, *DIGITS, *extra)


def test_what_is_measured_after_training_does_not_bind_a_resume(tmp_path, capsys):
    """--timing-seconds/--no-timing (the demo's timing) and --beam (a beam-search metric)
    change no training: a checkpoint resumes under other values."""
    ckpt = str(tmp_path / "demo.ckpt")
    demo = ["demo", "--no-timing", "--hidden", "4", "--epochs", "1", "--no-progress"]
    assert main(demo + ["--checkpoint", ckpt]) == 0
    assert main(demo + ["--resume", ckpt, "--timing-seconds", "0.1"]) == 0
    ckpt = str(tmp_path / "dates.ckpt")
    dates = ["train", "dates", "--epochs", "1", "--hidden", "4", "--embed", "4", "--train-size",
             "64", "--no-progress"]
    assert main(dates + ["--checkpoint", ckpt]) == 0
    assert main(dates + ["--resume", ckpt, "--beam", "2"]) == 0
    capsys.readouterr()


def test_outputs_never_overwrite_the_training_data(tmp_path, capsys):
    """--save, --checkpoint or --plot naming the --data file (or a link to it) is refused before
    training: the run replaced the user's corpus with the model and exited 0."""
    corpus = tmp_path / "corpus.txt"
    text = "the quick brown fox jumps over the lazy dog. " * 20
    corpus.write_text(text)
    (tmp_path / "link.txt").symlink_to(corpus)
    chars = ["train", "chars", "--data", str(corpus), "--epochs", "1", "--hidden", "4",
             "--no-progress"]
    for option, path in (("save", corpus), ("checkpoint", corpus),
                         ("save", tmp_path / "link.txt")):
        line = error_of(capsys, *chars, f"--{option}", str(path))
        assert f"--{option} and --data both name {path}: the run would overwrite it" in line
    assert corpus.read_text() == text


def test_ctrl_c_without_checkpoint_says_how_to_get_one(capsys, monkeypatch):
    real_fit = digits.fit

    def fit_pressed_ctrl_c(train_step, *args, **kwargs):
        def step(batch):
            raise KeyboardInterrupt
        return real_fit(step, *args, **kwargs)
    monkeypatch.setattr(digits, "fit", fit_pressed_ctrl_c)
    assert main(DIGITS) == 130
    line = capsys.readouterr().err.strip()
    assert line.startswith("fusedrnn: interrupted (digits: epoch 1/1, after batch 0/2); no "
                           "checkpoint was written: run with --checkpoint PATH")
    assert "--resume PATH" in line


def test_a_checkpoint_from_a_model_with_fewer_generators_resumes():
    """A model that draws from a Generator a saved run did not have (Seq2Seq's teacher forcing,
    newer than some checkpoints) resumes that run: the new one keeps its seeded state."""
    from fusedrnn.training import gather_state, restore_state
    model = fr.nn.Seq2Seq(9, 9, embed_size=4, hidden_size=5, dropout=0.1, num_layers=2, seed=0)
    saved = gather_state({"model": model})
    del saved["model"]["generators"]["_teacher_rng"]
    restore_state({"model": model}, saved)
    saved["model"]["generators"]["unknown"] = saved["model"]["generators"]["encoder._rng"]
    with pytest.raises(ValueError, match="Generators"):
        restore_state({"model": model}, saved)
