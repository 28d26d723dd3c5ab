"""The `fusedrnn` command as a user meets it: every expected failure is one line,
`fusedrnn: error: ...`, exit code 2 (never a traceback); --debug shows the traceback."""
import os
import subprocess
import sys

import numpy as np
import pytest

import fusedrnn as fr
from fusedrnn.cli import main


def error_of(capsys, *argv):
    """Run the command in this process; return its one error line."""
    assert main(list(argv)) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fusedrnn: error: "), captured.err
    assert "Traceback" not in captured.err + captured.out
    return lines[0]


@pytest.mark.parametrize("argv, expected", [
    (["train", "digits", "--data", "/no/such/dir"], "/no/such/dir: no such folder"),
    (["train", "digits", "--epochs", "0"], "--epochs: expected a positive integer, got '0'"),
    (["train", "digits", "--device", "cuda"],
     "train digits: unrecognized arguments: --device cuda (see `fusedrnn train digits --help`)"),
    (["bench", "--explain", "--device", "cuda"], "--explain and --device cuda: each selects"),
    (["train", "digits", "--lr", "fast"], "--lr: expected a positive number, got 'fast'"),
    (["train", "digits", "--cell", "xyz"], "--cell: invalid choice: 'xyz'"),
    (["train", "dates", "--teacher-forcing", "1.5"], "--teacher-forcing: expected a number from 0 to 1"),
    (["train", "digits", "--seed", "-1"], "--seed: expected a non-negative integer"),
    (["train", "digits", "--save", "/no/such/dir/m.npz"], "--save /no/such/dir/m.npz: the folder"),
    (["train", "chars", "--data", "/no/such/file.txt"], "/no/such/file.txt: No such file"),
    (["generate", "--model", "/no/such/model.npz"], "/no/such/model.npz: No such file"),
    (["bench", "--shapes", "1,2"], "--shapes: expected B,T,I,H"),
    (["bench", "--cells", "LSTM,XYZ", "--shapes", "1,2,3,4"], "--cells: expected names"),
    (["bench", "--shapes", "a,b,c,d"], "--shapes: expected B,T,I,H"),
    (["bench", "--shapes", ""], "--shapes: expected B,T,I,H"),
    (["bench", "--explain", "--shapes", "1,1,1,99999999999999999999"],
     "--shapes: expected B,T,I,H with positive integers below 2**31"),
    (["bench", "--cells", ",", "--shapes", "1,2,3,4"], "--cells: expected names"),
    (["bench", "--modes", ",", "--shapes", "1,2,3,4"], "--modes: expected names"),
    (["bench", "--json", "/no/such/dir/rows.json"], "--json /no/such/dir/rows.json: the folder"),
    (["train", "adding", "--cells", "lstm,gur"], "--cells: expected names from gru,lstm,rnn"),
    (["train", "dates", "--score", "dot"], "--score: invalid choice: 'dot'"),
    (["train", "digits", "--trainer", "ga", "--population", "2"],
     "--population: expected an integer of at least 3"),
    (["nosuchcommand"], "invalid choice: 'nosuchcommand'"),
    # an empty path was taken for "not given" (--save "" saved nothing, silently) or named as ""
    (["train", "digits", "--save", ""], "--save: expected a path, got an empty string"),
    (["train", "digits", "--checkpoint", ""], "--checkpoint: expected a path, got an empty"),
    (["train", "chars", "--data", ""], "--data: expected a path, got an empty string"),
    (["generate", "--model", ""], "--model: expected a path, got an empty string"),
    (["train", "adding", "--length", "1"], "--length: expected an integer of at least 2"),
])
def test_expected_failures_are_one_line(capsys, argv, expected):
    assert expected in error_of(capsys, *argv)


def test_unreadable_and_wrong_model_files(capsys, tmp_path):
    text = tmp_path / "notes.npz"
    text.write_text("not a model")
    assert "not a zip archive" in error_of(capsys, "generate", "--model", str(text))
    assert "Is a directory" in error_of(capsys, "translate", "--model", str(tmp_path), "May 3")
    other = tmp_path / "other.npz"
    fr.save({"task": "digits", "model": {}}, other)
    assert "not a model of `fusedrnn train chars`" in error_of(capsys, "generate", "--model",
                                                                 str(other))
    damaged = tmp_path / "damaged.npz"
    fr.save({"task": "chars", "config": {"cell": "lstm"}}, damaged)
    assert "damaged `fusedrnn train chars` model" in error_of(capsys, "generate", "--model",
                                                              str(damaged))


def test_malformed_data_files(capsys, tmp_path):
    csv = tmp_path / "reviews.csv"
    csv.write_text("just one column\n")
    assert str(csv) in error_of(capsys, "train", "classify-text", "--data", str(csv))
    mnist = tmp_path / "mnist"
    mnist.mkdir()
    (mnist / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03\x00")
    assert "IDX" in error_of(capsys, "train", "digits", "--data", str(mnist))


def test_missing_optional_dependency_says_what_to_install(capsys, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now fails
    line = error_of(capsys, "train", "digits", "--plot", str(tmp_path / "curves.png"))
    assert 'pip install "fusedrnn[plot]"' in line
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    from fusedrnn.cli import error_line
    with pytest.raises(ImportError) as e:
        import onnxruntime  # noqa: F401
    assert 'pip install "fusedrnn[onnx]"' in error_line(e.value)


def test_precision_spellings_and_an_early_plot_format_check(capsys, tmp_path):
    """--precision takes fr.autocast's spellings on every command (train spelled float32 /
    bfloat16, bench fp32 / bf16); --plot with a format matplotlib cannot write is refused
    before any training (it failed after it, the metrics lost)."""
    from fusedrnn.cli import build_parser
    parser = build_parser()
    for text, expected in (("bf16", "bfloat16"), ("BFloat16", "bfloat16"), ("fp32", "float32")):
        assert parser.parse_args(["train", "digits", "--precision", text]).precision == expected
    assert parser.parse_args(["bench", "--precision", "bfloat16"]).precision == "bf16"
    assert "--precision: expected float32 or bfloat16, got 'fp16'" in error_of(
        capsys, "train", "digits", "--precision", "fp16")
    pytest.importorskip("matplotlib")
    line = error_of(capsys, "train", "dates", "--plot", str(tmp_path / "att.xyz"))
    assert "--plot: expected a file name ending in one of" in line and ".png" in line


def test_threads_option_and_a_closed_pipe_and_python_oo(capsys):
    """--threads past set_num_threads' bound is the option's error, not set_num_threads' "n";
    a reader that stops early (`| head`) ends the command quietly; -OO (no docstrings) runs."""
    assert "--threads: expected an integer from 1 to 4096, got '5000'" in error_of(
        capsys, "train", "digits", "--threads", "5000")
    p = subprocess.Popen([sys.executable, "-m", "fusedrnn", "info"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    p.stdout.close()  # before the command writes: its first write meets a closed pipe
    err = p.stderr.read().decode()
    p.stderr.close()
    assert p.wait(timeout=120) in (0, 141) and "error" not in err and "Traceback" not in err, err
    for argv in (["--help"], ["train", "--help"]):
        r = subprocess.run([sys.executable, "-OO", "-m", "fusedrnn", *argv], capture_output=True,
                           text=True, timeout=120)
        assert r.returncode == 0 and "usage: fusedrnn" in r.stdout, r.stderr


def test_version_is_printed(capsys):
    import fusedrnn
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out == f"fusedrnn {fusedrnn.__version__}\n"
    import pathlib
    import tomllib
    project = pathlib.Path(__file__).parents[1] / "pyproject.toml"
    assert tomllib.loads(project.read_text())["project"]["version"] == fusedrnn.__version__


def test_mnist_files_that_disagree_are_named(capsys, tmp_path):
    """Labels and images of different counts, or none at all: the folder and files named (an
    IndexError deep in training before)."""
    import gzip
    import struct

    def idx(path, array):
        code = 0x08
        header = struct.pack(">BBBB", 0, 0, code, array.ndim) + struct.pack(
            f">{array.ndim}I", *array.shape)
        with gzip.open(path, "wb") as f:
            f.write(header + array.astype(np.uint8).tobytes())
    for n_labels, n_test, test_size, expected in (
            (150, 5, (28, 28), "expected as many labels as images, at least one"),
            (200, 0, (28, 28), "expected as many labels as images, at least one"),
            (200, 5, (20, 28), "expected images of the training images' size (28, 28), got "
                               "(20, 28)")):
        folder = tmp_path / f"mnist{n_labels}_{n_test}_{test_size[0]}"
        folder.mkdir()
        idx(folder / "train-images-idx3-ubyte.gz", np.zeros((200, 28, 28)))
        idx(folder / "train-labels-idx1-ubyte.gz", np.zeros(n_labels))
        idx(folder / "t10k-images-idx3-ubyte.gz", np.zeros((n_test, *test_size)))
        idx(folder / "t10k-labels-idx1-ubyte.gz", np.zeros(n_test))
        line = error_of(capsys, "train", "digits", "--data", str(folder))
        assert expected in line, line


def test_a_users_csv_and_text_files():
    """The header's text and label columns wherever they are (an extra column was read as the
    label), a byte-order mark, an empty label, a long field and text that is not UTF-8 (its
    characters were silently replaced, merging labels), named by file and line; words of any
    script are words (Cyrillic texts were all unknown)."""
    import tempfile
    from fusedrnn.data.text import load_text, read_text_classification_csv, tokenize
    rows = "".join(f"review {i},{'pos' if i % 2 else 'neg'},src{i}\r\n" for i in range(6))
    with tempfile.TemporaryDirectory() as d:
        def write(name, data):
            path = f"{d}/{name}"
            with open(path, "wb") as f:
                f.write(data if isinstance(data, bytes) else data.encode("utf-8"))
            return path
        for header in ("text,label,source", "\ufeffTEXT,Label,source"):
            texts, labels, classes = read_text_classification_csv(
                write("a.csv", f"{header}\r\n{rows}"))
            assert classes == ["neg", "pos"] and texts[1] == "review 1"
            assert list(labels[:2]) == [0, 1]
        texts, _, classes = read_text_classification_csv(
            write("b.csv", "id,label,text\n1,pos,\"a, b\"\n2,neg," + "x" * 200_000 + "\n"))
        assert texts == ["a, b", "x" * 200_000] and classes == ["neg", "pos"]
        texts, _, _ = read_text_classification_csv(write("h.csv", "text,label\nhi, you,a\nb,c\n"))
        assert texts == ["hi, you", "b"]  # (a header of exactly text,label: commas rejoined)
        with pytest.raises(ValueError, match=r"i.csv: line 2: expected the header's 3 fields "
                                             r"\(quote a text holding commas\), got 4"):
            read_text_classification_csv(write("i.csv", "id,text,label\n1,hi, you,a\n"))
        with pytest.raises(ValueError, match=r"c.csv: line 3: the label is empty"):
            read_text_classification_csv(write("c.csv", "text,label\ngood,pos\nbad, \n"))
        latin1 = "text,label\nb\xe9,pos\n".encode("latin-1")
        with pytest.raises(ValueError, match=r"d.csv: not UTF-8 text \(byte 12"):
            read_text_classification_csv(write("d.csv", latin1))
        with pytest.raises(ValueError, match=r"e.txt: not UTF-8 text \(byte 0"):
            load_text(write("e.txt", b"\xb4\x00\x01abc"))
        assert load_text(write("f.txt", "\ufeffhello")) == "hello"
        with pytest.raises(ValueError, match=r"g.txt: not UTF-8 text \(byte 5"):  # (BOM counted)
            load_text(write("g.txt", b"\xef\xbb\xbfab\xff"))
    assert tokenize("Хороший фильм, don't it_s Café हिन्दी") == [
        "хороший", "фильм", "don't", "it", "s", "café", "हिन्दी"]
    assert tokenize("Don\u2019t") == tokenize("Don't") == ["don't"]  # (’ split the word)
    # integer class names in numeric order: "10" was class 1 of ["0", "10", "2"]
    with tempfile.TemporaryDirectory() as d:
        numbered = os.path.join(d, "numbered.csv")
        with open(numbered, "w") as f:
            f.write("text,label\na,2\nb,10\nc,0\nd,-1\n")
        _, labels, classes = read_text_classification_csv(numbered)
    assert classes == ["-1", "0", "2", "10"] and labels.tolist() == [2, 3, 1, 0]
    vocab = fr.data.CharVocab("abc")
    with pytest.raises(ValueError, match=r"^ids: expected one sequence of ids \(1-D\), got "
                                         r"shape \(2, 2\)"):
        vocab.decode(np.array([[0, 1], [2, 0]]))  # (the rows were joined into one string)


def test_data_utilities_refuse_what_they_misread(tmp_path):
    """A quote left open swallowed the rest of a CSV silently (3 rows of 6, a class of lines);
    a small .gz of a big IDX body was decompressed whole before its header was read; a
    declared size past 2**64 overflowed; limit 0 or -1, max_size 1, an empty first sequence
    (float64 ids) and a seed for rng were misread; the dates' n and test_fraction named."""
    import gzip
    import struct
    from fusedrnn.data import dates, digits, text
    path = tmp_path / "u.csv"
    path.write_bytes(b'a,pos\nb,neg\nc,"pos\nd,neg\ne,pos\nf,neg\n')
    with pytest.raises(ValueError, match=r"u.csv: line 3: unexpected end of data"):
        text.read_text_classification_csv(path)
    path.write_bytes(b'a,pos\nb,"neg\nx"\nc,pos\n')
    with pytest.raises(ValueError, match=r"u.csv: line 2: the label spans lines"):
        text.read_text_classification_csv(path)
    path.write_bytes(b'text,label\n"great" movie,pos\n"bad film" ,neg\n')  # (read as csv does)
    assert text.read_text_classification_csv(path)[0] == ["great movie", "bad film "]
    bomb = tmp_path / "b-idx1-ubyte.gz"
    with gzip.open(bomb, "wb") as f:  # one label declared, 64 MiB of data
        f.write(bytes([0, 0, 8, 1]) + struct.pack(">I", 1) + bytes(64 << 20))
    import tracemalloc
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=r"expected 1 bytes of data for shape \(1,\), got "
                                             r"more"):
            digits.read_idx(bomb)
        assert tracemalloc.get_traced_memory()[1] < 8 << 20  # (it held all 64 MiB)
    finally:
        tracemalloc.stop()
    huge = tmp_path / "h-idx3-ubyte"
    huge.write_bytes(bytes([0, 0, 8, 4]) + struct.pack(">4I", *[2**32 - 1] * 4))
    with pytest.raises(ValueError, match=rf"expected {(2**32 - 1)**4} bytes"):
        digits.read_idx(huge)
    with pytest.raises(TypeError, match="path: expected a str, bytes or os.PathLike"):
        digits.read_idx(3)
    for limit in (0, -1, 2.5):
        with pytest.raises((ValueError, TypeError), match="limit: expected an integer"):
            digits.load_mnist(tmp_path, limit=limit)
    assert text.WordVocab(["a a a b b c"], max_size=3).words == ["<pad>", "<unk>", "a"]
    with pytest.raises(ValueError, match="max_size: expected an integer >= 2"):
        text.WordVocab(["a"], max_size=1)
    padded, lengths = text.pad_sequences([[], [3, 1]])
    assert padded.dtype == np.int64 and list(lengths) == [0, 2]
    assert text.pad_sequences([[], [[1, 2], [3, 4]]], batch_first=True)[0].shape == (2, 2, 2)
    with pytest.raises(ValueError, match=r"sequences\[0\]: expected a sequence"):
        text.pad_sequences([5])
    assert [b.tolist() for b in text.batches(5, 2, rng=0)] == \
        [b.tolist() for b in text.batches(5, 2, rng=np.random.default_rng(0))]
    assert [b.tolist() for b in text.batches(5, 2, rng=np.random.RandomState(0))] == \
        [b.tolist() for b in np.array_split(np.random.RandomState(0).permutation(5), [2, 4])]
    for fraction in (0.0, 1.0, -0.5):
        with pytest.raises(ValueError, match=r"test_fraction: expected a number in \(0, 1\)"):
            dates.dates_split(2, 2, test_fraction=fraction)
    for fraction in (1e-9, 1 - 1e-9):
        with pytest.raises(ValueError, match=r"test_fraction: .* no day to draw from"):
            dates.dates_split(4, 4, test_fraction=fraction)
    with pytest.raises(ValueError, match="n: expected an integer >= 0"):
        dates.random_dates(-1)


def test_debug_shows_the_traceback(capsys):
    with pytest.raises(FileNotFoundError):
        main(["train", "digits", "--data", "/no/such/dir", "--debug"])


def test_the_installed_command_exits_2_with_one_line():
    """End to end, as a shell runs it: `python -m fusedrnn` (the same entry point as the
    `fusedrnn` script)."""
    p = subprocess.run([sys.executable, "-m", "fusedrnn", "train", "digits", "--data",
                        "/no/such/dir"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert p.stderr.strip().splitlines() == [p.stderr.strip()]
    assert p.stderr.startswith("fusedrnn: error: /no/such/dir")


def test_shipped_digits_are_the_uci_test_set():
    images, labels = fr.data.digits.digits_images()
    assert images.shape == (1797, 8, 8) and images.dtype == np.uint8
    assert images.max() == 16 and images.min() == 0
    assert np.bincount(labels).tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
    x_train, y_train, x_test, y_test = fr.data.load_digits(seed=0)
    assert x_train.shape == (1438, 8, 8) and x_test.shape == (359, 8, 8)
    assert 0 <= x_train.min() and x_train.max() == 1
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        return
    d = load_digits()
    np.testing.assert_array_equal(images, d.images)
    np.testing.assert_array_equal(labels, d.target)


def test_data_too_small_for_the_task_is_refused_before_training(capsys, tmp_path):
    """A run that could not train (or not test) says so instead of reporting metrics of an
    untrained model; the checks come before any training (the bench's --json too)."""
    text = tmp_path / "corpus.txt"
    text.write_text("hello world, a tiny corpus. " * 2)
    assert "--data/--max-chars: 56 characters give 50 to train on" in error_of(
        capsys, "train", "chars", "--data", str(text), "--hidden", "4", "--epochs", "1")
    assert "--data/--max-chars: 2 characters" in error_of(
        capsys, "train", "chars", "--data", str(text), "--max-chars", "2", "--batch-size", "1")
    table = tmp_path / "tiny.csv"
    table.write_text('text,label\n"good movie",pos\n"bad movie",neg\n"great",pos\n')
    assert "3 rows give 3 to test and 0 to train" in error_of(
        capsys, "train", "classify-text", "--data", str(table), "--test-fraction", "0.9",
        "--epochs", "1")
    for share in ("0", "1"):  # (0 tested one row all the same, unsaid)
        assert "--test-fraction: expected a number between 0 and 1 (neither)" in error_of(
            capsys, "train", "classify-text", "--data", str(table), "--test-fraction", share)
    assert main(["train", "classify-text", "--data", str(table), "--test-fraction", "0.1",
                 "--epochs", "1", "--hidden", "4", "--no-progress"]) == 0  # one row to test
    (tmp_path / "folder").mkdir()
    assert f"--json {tmp_path / 'folder'}: a folder" in error_of(
        capsys, "bench", "--shapes", "1,2,3,4", "--json", str(tmp_path / "folder"))


def test_json_output_is_strict_and_task_help_is_whole(capsys):
    from fusedrnn.cli import print_json
    print_json({"loss": float("nan"), "rows": [float("inf"), 1.5]})
    assert capsys.readouterr().out.strip() == '{"loss": null, "rows": [null, 1.5]}'
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "trained with truncated BPTT, and `fusedrnn generate`" in out
    assert "(the sentiment-analysis case) from a user's CSV" in out


def test_a_plot_is_written_atomically(tmp_path, monkeypatch):
    """An interrupted --plot leaves the picture that was there (it was written in place)."""
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure
    from fusedrnn.tasks.common import maybe_plot
    panels = [("loss", {"train": ([1, 2], [3.0, 2.0])}, "epoch", "loss", False)]
    path = tmp_path / "curves.png"
    path.write_bytes(b"the old picture")

    def interrupted(self, f, **kwargs):
        f.write(b"half a pic")
        raise KeyboardInterrupt
    with monkeypatch.context() as m:
        m.setattr(Figure, "savefig", interrupted)
        with pytest.raises(KeyboardInterrupt):
            maybe_plot(path, panels)
    assert path.read_bytes() == b"the old picture" and sorted(tmp_path.iterdir()) == [path]
    assert maybe_plot(path, panels) == str(path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_an_output_folder_that_cannot_be_written_is_named_before_the_work(capsys, tmp_path,
                                                                          monkeypatch):
    """A read-only folder (or file system, which root meets too) is found before a benchmark
    or a training runs, not when its results are written (they were lost)."""
    import errno
    import tempfile

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")
    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    line = error_of(capsys, "bench", "--json", str(tmp_path / "r.json"))
    assert f"--json {tmp_path / 'r.json'}: cannot write in the folder {tmp_path}" in line
    assert "Read-only file system" in line


def test_options_of_two_benchmarks_are_refused(capsys):
    """Each bench ran the first it was dispatched to and ignored the other options."""
    for argv, expected in (
            (["--variants", "proj", "--attention", "dot"], "--variants and --attention: each "
                                                             "selects its own benchmark"),
            (["--regimes", "b2b", "--precision", "bf16"], "--regimes and --precision bf16"),
            (["--framework", "onnx", "--memory"], "--memory: measured by the main CPU table "
                                                  "only, not with --framework onnx"),
            (["--variants", "proj", "--deterministic"], "--deterministic: measured by the main"),
            # an option only another bench reads (the float32 table ran, exit 0)
            (["--precisions", "bf16"], "--precisions bf16: read by --device cuda only"),
            (["--variants", "proj", "--cells", "rnn"], "--cells rnn: not read by --variants"),
            (["--attention", "dot", "--cells", "gru"], "--cells gru: not read by --attention"),
            # a peak of nothing (it printed an empty line and exited 0)
            (["--memory", "--modes", "infer"], "--memory: measures a training step's peak")):
        assert expected in error_of(capsys, "bench", *argv)


def test_more_threads_than_cores_is_warned_of(capsys):
    from fusedrnn.cli_commands import usable_cores
    many = str(usable_cores() + 1)
    assert main(["bench", "--threads", many, "--cells", "rnn", "--modes", "infer",
                     "--shapes", "1,3,4,4", "--budget", "0.01"]) == 0
    assert f"--threads {many} is more than the {usable_cores()} cores" in capsys.readouterr().err


def test_a_picture_may_not_overwrite_the_model_it_shows(capsys, tmp_path):
    """translate --plot over its own --model file replaced the model with the picture."""
    model = tmp_path / "dates.svg"
    model.write_bytes(b"a model")
    line = error_of(capsys, "translate", "--model", str(model), "--plot", str(model), "3 May")
    assert f"--plot and --model both name {model}" in line
    assert model.read_bytes() == b"a model"


def test_a_damaged_gzip_file_is_one_line_naming_it(capsys, tmp_path):
    """A download cut short gave an EOFError traceback, a corrupt one a zlib.error traceback."""
    import gzip
    whole = gzip.compress(b"\0\0\x08\x03\0\0\0\x01\0\0\0\x08\0\0\0\x08" + bytes(64))
    for name, data in (("cut", whole[:20]), ("bad", whole[:12] + b"xxxx" + whole[16:])):
        path = tmp_path / f"{name}.gz"
        path.write_bytes(data)
        with pytest.raises(ValueError, match=f"{path}: a damaged or truncated gzip file"):
            fr.data.read_idx(path)
    folder = tmp_path / "mnist"
    folder.mkdir()
    (folder / "train-images-idx3-ubyte.gz").write_bytes(whole[:20])
    assert "a damaged or truncated gzip file" in error_of(capsys, "train", "digits", "--data",
                                                          str(folder), "--epochs", "1")


def test_translate_refuses_no_date_and_warns_of_an_answer_that_is_no_date(capsys, tmp_path):
    """An empty text decoded from no source at all (printing '196-04-04', exit 0); an answer
    such as '2001-02-30' or a year the data never had came without a word."""
    from fusedrnn.tasks import dates
    config = dict(embed=8, hidden=8, cell="lstm", attention="bahdanau", seed=0)
    model = tmp_path / "untrained.npz"
    fr.save({"task": "dates", "config": config,
             "model": dates.build_model(config).state_dict()}, model)
    assert "texts[1]: expected a date to translate, got ''" in error_of(
        capsys, "translate", "--model", str(model), "3 May 1999", "")
    with pytest.warns(UserWarning, match=r"'3 May 1999' -> '.*' is not a date of the model's "
                                         r"training data \(1950-01-01 to 2049-12-31\)"):
        assert main(["translate", "--model", str(model), "3 May 1999"]) == 0


def test_debug_after_a_double_dash_is_a_text(capsys):
    """`translate ... -- --debug` switched debugging on and dropped the text "--debug"."""
    line = error_of(capsys, "translate", "--model", "/no/such/model.npz", "--", "--debug")
    assert "/no/such/model.npz: No such file" in line


def test_a_failed_write_or_read_names_the_file(tmp_path):
    """A disk full at the write (/dev/full) or an EIO at a read gave "[Errno 28] No space left
    on device" naming no file: the atomic writer and the loader name theirs."""
    if not os.path.exists("/dev/full") or not os.path.exists("/proc/self/mem"):
        pytest.skip("no /dev/full or /proc/self/mem here")
    with pytest.raises(OSError, match="No space left on device: '/dev/full'"):
        fr.save({"a": np.zeros(3)}, "/dev/full")
    with pytest.raises(OSError, match="Input/output error: '/proc/self/mem'"):
        fr.load("/proc/self/mem")  # (a read at offset 0 of this process's memory: EIO)
