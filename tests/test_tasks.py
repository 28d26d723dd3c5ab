"""Each worked example trains a short, seeded run through the command line and ends clearly
better than chance; generate, --save, --plot and --json work end to end."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import fusedrnn as fr
from fusedrnn.cli import main


def run_json(capsys, *argv):
    assert main(list(argv) + ["--json", "--no-progress"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    return json.loads(out[-1])


def test_digits_beats_chance(capsys, tmp_path):
    m = run_json(capsys, "train", "digits", "--epochs", "3", "--hidden", "32", "--seed", "1",
                 "--save", str(tmp_path / "digits.npz"))
    assert m["test_accuracy"] > 0.6 > 3 * m["chance_accuracy"]
    saved = fr.load(tmp_path / "digits.npz")
    assert saved["task"] == "digits" and "rnn.weight_hh_l0" in saved["model"]


def test_training_under_autocast_reaches_the_float32_metric(capsys):
    """--precision bfloat16 trains under fusedrnn.autocast (products in bfloat16, gradients
    float32) and ends where the float32 run ends: digits' accuracy, the adding problem's MSE."""
    runs = {p: run_json(capsys, "train", "digits", "--epochs", "3", "--hidden", "32", "--seed",
                        "1", "--precision", p) for p in ("float32", "bfloat16")}
    assert runs["bfloat16"]["precision"] == "bfloat16"
    assert runs["bfloat16"]["final_loss"] != runs["float32"]["final_loss"]  # bf16 did run
    assert runs["bfloat16"]["test_accuracy"] >= runs["float32"]["test_accuracy"] - 0.03
    adding = {p: run_json(capsys, "train", "adding", "--length", "12", "--cells", "gru",
                          "--hidden", "24", "--epochs", "4", "--steps", "40", "--lr", "0.01",
                          "--precision", p) for p in ("float32", "bfloat16")}
    mse = {p: m["results"]["gru"]["test_mse"] for p, m in adding.items()}
    assert mse["bfloat16"] <= 1.2 * mse["float32"] + 0.01
    assert mse["bfloat16"] < 0.3 * adding["bfloat16"]["baseline_mse"]


def test_digits_genetic_algorithm_lowers_the_loss(capsys):
    """The genetic algorithm (inference-mode forwards only) lowers the loss; it is slow to
    learn ten classes, so a short run is only asked to lower the loss (test_optim shows it
    training a small recurrent classifier well above chance)."""
    m = run_json(capsys, "train", "digits", "--trainer", "ga", "--epochs", "2", "--hidden", "8",
                 "--population", "16", "--limit", "300", "--history")
    assert m["history"][-1]["loss"] < m["history"][0]["loss"] < 2.5


def test_adding_gated_cell_beats_baseline(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    plot = tmp_path / "adding.png"
    m = run_json(capsys, "train", "adding", "--length", "12", "--cells", "gru", "--hidden", "24",
                 "--epochs", "4", "--steps", "40", "--lr", "0.01", "--plot", str(plot))
    assert m["results"]["gru"]["test_mse"] < 0.3 * m["baseline_mse"]
    assert plot.stat().st_size > 1000


def test_adding_with_a_fixed_training_set_takes_steps_batches_an_epoch(capsys, tmp_path):
    """--train-size N: --steps optimizer steps an epoch still (one pass over 100 samples gave
    4 of the 50 asked, and the plot's steps axis said 50)."""
    checkpoint = tmp_path / "adding.ckpt"
    run_json(capsys, "train", "adding", "--length", "6", "--cells", "gru", "--hidden", "4",
             "--train-size", "100", "--batch-size", "32", "--steps", "9", "--epochs", "2",
             "--checkpoint", str(checkpoint))
    (stage,) = fr.load(checkpoint)["stages"].values()
    assert stage["step"] == 18


def test_chars_beats_unigram_and_generates(capsys, tmp_path):
    model = tmp_path / "chars.npz"
    m = run_json(capsys, "train", "chars", "--max-chars", "30000", "--hidden", "64",
                 "--epochs", "1", "--bptt", "32", "--batch-size", "16", "--lr", "0.01",
                 "--save", str(model))
    assert m["test_bits_per_char"] < m["unigram_bits_per_char"] - 0.4
    g = run_json(capsys, "generate", "--model", str(model), "--prime", "jazz", "--length", "40",
                 "--temperature", "0.8", "--seed", "3")
    assert g["text"].startswith("jazz") and len(g["text"]) == 44
    # a finite temperature > 0 samples, however small (greedy in the limit; 1e-320 made NaN
    # probabilities); a bad one is named; a prime character the model lacks is said
    from fusedrnn.tasks.chars import load_model, sample
    lm, vocab = load_model(model)
    assert sample(lm, vocab, "jazz", 8, 1e-320, seed=0) == sample(lm, vocab, "jazz", 8, 1e-9,
                                                                  seed=1)
    for bad, error in ((float("nan"), ValueError), (0, ValueError), ("1", TypeError)):
        with pytest.raises(error, match="temperature: expected"):
            sample(lm, vocab, "jazz", 8, bad)
    unseen = next(chr(c) for c in range(0x4e00, 0x9fff) if chr(c) not in vocab.index)
    with pytest.warns(UserWarning, match=f"prime: '{unseen}' not in the model's vocabulary"):
        sample(lm, vocab, unseen + "jazz", 4, seed=0)
    proc = subprocess.run([sys.executable, "-m", "fusedrnn", "generate", "--model", str(model),
                           "--prime", unseen, "--length", "3"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.startswith("fusedrnn: warning: prime: ") and "Warning" not in proc.stderr
    # a stdout that cannot encode the prime (PYTHONIOENCODING=ascii) lost the whole text
    proc = subprocess.run([sys.executable, "-m", "fusedrnn", "generate", "--model", str(model),
                           "--prime", unseen + "jazz", "--length", "3"], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONIOENCODING": "ascii"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"\\u{ord(unseen):04x}jazz") and len(proc.stdout) == 14
    # the characters come one at a time (generate writes each as drawn); bad arguments are
    # named before the first; a diverged model's NaN is named (numpy's "probabilities contain
    # NaN" named nothing)
    from fusedrnn.tasks.chars import draw
    drawn = draw(lm, vocab, "jazz", 5, seed=3)
    assert [len(c) for c in drawn] == [1] * 5
    with pytest.raises(ValueError, match="^length: expected an integer >= 0, got -3"):
        draw(lm, vocab, "jazz", -3)
    with pytest.raises(TypeError, match="^prime: expected a str, got NoneType"):
        sample(lm, vocab, None, 3)
    next(iter(lm.parameters())).data[...] = np.nan
    with pytest.raises(ValueError, match="^model: its outputs are not finite"):
        sample(lm, vocab, "jazz", 3)
    # a vocabulary that does not fit the model (hand-edited): an IndexError traceback, or
    # characters shifted silently
    saved = fr.load(model)
    for vocab_text in (saved["vocab"][:5], "\x01" + saved["vocab"]):
        fr.save(dict(saved, vocab=vocab_text), tmp_path / "edited.npz")
        with pytest.raises(ValueError, match="a vocabulary of .* characters for a model of"):
            load_model(tmp_path / "edited.npz")


def test_chars_on_a_text_without_the_sample_prime_warns_of_nothing(capsys, tmp_path):
    """Training on a text without "T" warned of a prime the user never gave."""
    text = tmp_path / "lower.txt"
    text.write_text("the cat and the hen " * 100)
    assert main(["train", "chars", "--data", str(text), "--hidden", "16", "--epochs", "1",
                 "--bptt", "16", "--batch-size", "8", "--json", "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "warning" not in captured.err
    assert json.loads(captured.out.strip().splitlines()[-1])["sample"].startswith("he ")


def test_data_helpers_name_bad_arguments():
    """load_digits(test_fraction=-0.1) inverted the split, batches(10, -3) gave no batch,
    copy_memory(delay=0) wrote the delimiter over a symbol."""
    from fusedrnn.data import text
    for call, match in ((lambda: fr.data.load_digits(test_fraction=-0.1), "^test_fraction"),
                        (lambda: fr.data.load_digits(test_fraction=1.5), "^test_fraction"),
                        (lambda: text.batches(10, -3), "^batch_size"),
                        (lambda: text.batches(10, 0), "^batch_size"),
                        (lambda: fr.data.copy_memory(1, length=3, delay=0), "^delay"),
                        (lambda: fr.data.copy_memory(1, length=0), "^length"),
                        (lambda: fr.data.adding_problem(2, 1), "^length")):
        with pytest.raises(ValueError, match=match):
            call()


def test_classify_text_beats_majority(capsys, tmp_path):
    rng = np.random.default_rng(0)
    good = ["great", "wonderful", "loved", "excellent", "fun", "superb"]
    bad = ["awful", "boring", "hated", "terrible", "dull", "poor"]
    filler = ["the", "movie", "was", "plot", "and", "really", "acting", "a", "it", "story"]
    rows = ["text,label"]
    for _ in range(240):
        label = int(rng.integers(2))
        words = list(rng.choice(filler, int(rng.integers(3, 12))))
        words.insert(int(rng.integers(len(words) + 1)), rng.choice(good if label else bad))
        rows.append(f"\"{' '.join(words)}\",{'pos' if label else 'neg'}")
    csv = tmp_path / "reviews.csv"
    csv.write_text("\n".join(rows) + "\n")
    m = run_json(capsys, "train", "classify-text", "--data", str(csv), "--epochs", "6",
                 "--hidden", "16")
    assert m["classes"] == ["neg", "pos"]
    assert m["test_accuracy"] > 0.85 > m["majority_accuracy"]


def test_demo_times_the_installed_peers(capsys):
    """The demo trains digits, then times LSTM B=1 and B=32 against every installed peer (or
    the NumPy reference where a mode has none); rows are checked to agree before timing."""
    from fusedrnn import benchmark
    m = run_json(capsys, "demo", "--epochs", "2", "--hidden", "32", "--timing-seconds", "0.05")
    assert m["test_accuracy"] > 0.5
    have = benchmark.installed_peers()
    assert sorted(m["missing_peers"]) == sorted(k for k, v in have.items() if not v)
    assert [(r["B"], r["mode"]) for r in m["speed"]] == [(1, "infer"), (1, "train"),
                                                          (32, "infer"), (32, "train")]
    for r in m["speed"]:
        assert r["ours_ms"] > 0
        timed = [k for k in ("torch", "ort", "numpy_ref") if r[f"{k}_ms"]]
        assert timed, r
        for k in timed:
            assert r[f"x_{k}"] == pytest.approx(r[f"{k}_ms"] / r["ours_ms"], rel=0.02, abs=0.01)
            assert r[f"maxdiff_{k}"] < 1e-4


def test_demo_without_peers_times_the_reference_and_says_how_to_add_them(capsys, monkeypatch):
    from fusedrnn import benchmark
    monkeypatch.setattr(benchmark, "installed_peers", lambda: {"torch": False, "ort": False})
    assert main(["demo", "--epochs", "1", "--hidden", "16", "--timing-seconds", "0.05",
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "held-out accuracy" in out
    assert out.count("x NumPy float64 reference") == 4
    assert 'pip install "fusedrnn[torch]"' in out and 'pip install "fusedrnn[onnx]"' in out


def test_demo_names_a_row_whose_outputs_disagree(capsys, monkeypatch):
    """The demo printed "outputs checked to agree" and exited 0 whatever the check found."""
    from fusedrnn import benchmark
    real = benchmark.bench_row
    monkeypatch.setattr(benchmark, "installed_peers", lambda: {"torch": False, "ort": False})
    monkeypatch.setattr(benchmark, "bench_row", lambda *a, **k: dict(
        real(*a, **k), agree=False) if a[2] == 32 and a[1] == "infer" else real(*a, **k))
    assert main(["demo", "--epochs", "1", "--hidden", "16", "--timing-seconds", "0.05",
                 "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "outputs differ from a peer's beyond the tolerance" in err and err.count("\n") == 1


def test_attention_picture_labels_each_decoded_token(tmp_path, monkeypatch):
    """The rows were labelled from the decoded string, which drops special tokens, so the
    labels slid onto other rows; a text that lowering lengthens ("İ") made the columns' labels
    outnumber their ticks (matplotlib refused)."""
    pytest.importorskip("matplotlib")
    from matplotlib.axes import Axes
    from fusedrnn.tasks import dates
    model = dates.build_model(dict(embed=8, hidden=8, cell="lstm", attention="bahdanau", seed=0))
    model.decoder.out.bias.data[dates.UNK] += 0.2  # the unknown token is emitted between digits
    model.decoder.out.bias.mark_written()
    labels = {}
    real = Axes.set_yticklabels
    monkeypatch.setattr(Axes, "set_yticklabels",
                        lambda ax, names, **kw: (labels.setdefault("rows", list(names)),
                                                 real(ax, names, **kw))[1])
    texts = ["İ3rd of May 1999"]  # (lowered: "i" and a combining dot, which the codec lacks)
    with pytest.warns(UserWarning, match=r"characters the model never saw, read as unknown: "
                                         r"'\u0307'"):
        _, res = dates.translate(model, texts)
    tokens = list(res.tokens[0])
    assert dates.UNK in tokens and res.attention[0].shape[0] == len(tokens)
    from matplotlib.figure import Figure
    real_save = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda fig, *a, **kw: (
        labels.setdefault("axes", [(ax.get_xlabel(), ax.get_ylabel()) for ax in fig.axes]),
        real_save(fig, *a, **kw))[1])
    with pytest.warns(UserWarning, match="never saw"):
        dates.plot_attention(tmp_path / "att.png", model, texts)
    # the panel's axes say what rows and columns are; a colorbar gives the scale
    assert labels["axes"] == [("input character", "output character"), ("", "attention weight")]
    assert labels["rows"] == dates.make_codecs()[1].labels(tokens) and "<unk>" in labels["rows"]
    assert (tmp_path / "att.png").stat().st_size > 0
    with pytest.raises(ValueError, match="texts: expected at least one text"):
        dates.plot_attention(tmp_path / "none.png", model, [])
    for bad, error in (("", ValueError), ("   ", ValueError), (3, TypeError)):
        with pytest.raises(error, match="texts\\[1\\]: expected a"):
            dates.translate(model, ["3 may 1999", bad])
    # exact match compares tokens: a special token among the right characters is a miss
    codec = dates.make_codecs()[1]
    ids = codec.encode("1999-05-03")
    assert codec.spells(ids, "1999-05-03")
    assert not codec.spells(ids[:4] + [dates.UNK] + ids[4:], "1999-05-03")
    assert codec.decode(ids[:4] + [dates.UNK] + ids[4:]) == "1999-05-03"
    assert [dates.trained_date(d) for d in ("1999-05-03", "2001-02-30", "2050-05-03",
                                            "1999-5-03", "")] == [True, False, False, False, False]
    for texts in (np.array(["3 may 1999", "1/2/03"]), (t for t in ["3 may 1999", "1/2/03"])):
        ids, lengths = dates.make_codecs()[0].batch(texts)  # (an array, a generator)
        assert list(lengths) == [10, 6]


def test_the_tasks_name_bad_arguments_before_using_the_model():
    """dates.translate("may 3") translated each character; a beam of 0 fell back to greedy;
    exact_match with batch_size 0 raised range()'s error, with a generator len()'s;
    caption_digits.exact_match zipped labels of another length and scored label -1 as nine."""
    from fusedrnn.tasks import caption_digits, chars, dates
    with pytest.raises(TypeError, match=r"^texts: expected a list of str \(one text goes as "
                                        r"\[text\]\), got a str"):
        dates.translate(None, "may 3")
    for beam in (0, -1):
        with pytest.raises(ValueError, match=f"^beam: expected an integer >= 1, got {beam}"):
            dates.translate(None, ["may 3"], beam=beam)
    with pytest.raises(TypeError, match="^beam: expected an integer, got NoneType"):
        caption_digits.caption(None, np.zeros((1, 64)), beam=None)
    with pytest.raises(ValueError, match="^batch_size: expected an integer >= 1, got 0"):
        dates.exact_match(None, [("may 3", "2001-05-03")], batch_size=0)
    assert dates.exact_match(None, (p for p in ())) == 0.0
    images = np.zeros((3, 64))
    with pytest.raises(ValueError, match=r"^labels: expected 3 integer digits \(one per image\)"):
        caption_digits.exact_match(None, images, [1, 2])
    with pytest.raises(ValueError, match=r"^labels: expected digits in \[0, 9\], got -1..10"):
        caption_digits.exact_match(None, images, [-1, 2, 10])
    assert caption_digits.exact_match(None, images[:0], []) == 0.0
    with pytest.raises(ValueError, match="^n: expected an integer >= 1, got 0"):
        chars.streams(np.arange(10), 0)


def test_sampling_and_predicting_give_the_model_its_mode_back():
    """sample() left a model it was given in eval mode in training mode, and a half-read
    draw() left it in eval mode; digits.predict put an eval-mode model in training mode."""
    from fusedrnn.tasks import chars, digits
    from fusedrnn.tasks.common import RecurrentLM, SequenceClassifier
    vocab = fr.data.CharVocab("abc ")
    lm = RecurrentLM("lstm", len(vocab), 4, 8, seed=0)
    for training in (True, False):
        lm.train(training)
        chars.sample(lm, vocab, "ab", 3, seed=0)
        drawn = chars.draw(lm, vocab, "ab", 5, seed=0)
        next(drawn)
        assert lm.training is training
    clf = SequenceClassifier("gru", 8, 8, 10, seed=0).eval()
    digits.predict(clf, np.zeros((8, 3, 8), np.float32), batch_size=2)
    assert not clf.training
    with pytest.raises(ValueError, match="^batch_size: expected an integer >= 1, got 0"):
        digits.predict(clf, np.zeros((8, 3, 8), np.float32), batch_size=0)
    with pytest.raises(ValueError, match=r"^x: expected images \[T, N, I\] with N >= 1"):
        digits.predict(clf, np.zeros((8, 0, 8), np.float32))
