"""fr.save / fr.load: exact round trips, no pickle, atomic replacement."""
import os
import pickle

import numpy as np
import pytest

import fusedrnn as fr
import fusedrnn.io as frio


def test_module_round_trip_is_exact(tmp_path):
    model = fr.nn.Sequential(fr.nn.Linear(3, 4, seed=1), fr.nn.Linear(4, 2, seed=2))
    lstm = fr.nn.LSTM(3, 5, num_layers=2, bidirectional=True, seed=3)
    path = tmp_path / "model.npz"
    fr.save(lstm, path)
    loaded = fr.load(path)
    assert list(loaded) == list(lstm.state_dict())
    for k, v in lstm.state_dict().items():
        assert loaded[k].dtype == v.dtype
        np.testing.assert_array_equal(loaded[k], v)
    other = fr.nn.LSTM(3, 5, num_layers=2, bidirectional=True, seed=99)
    other.load_state_dict(loaded)
    for a, b in zip(other.parameters(), lstm.parameters()):
        np.testing.assert_array_equal(a.data, b.data)
    fr.save(model, path)
    assert list(fr.load(path)) == ["0.weight", "0.bias", "1.weight", "1.bias"]


def test_nested_checkpoint_round_trip(tmp_path):
    p = fr.nn.Linear(2, 2, seed=0)
    opt = fr.optim.Adam(p.parameters(), lr=0.01)
    for q in p.parameters():
        q.grad = np.ones_like(q.data)
    opt.step()
    obj = {"model": p, "optimizer": opt, "epoch": 7, "loss": 0.25, "name": "run-1",
           "flags": [True, None], "shape": (3, 4), "f64": np.arange(5.0), "i8": np.int8(3),
           "nested": {"__array__": "not an array ref", 3: "int key"}}
    fr.save(obj, tmp_path / "ckpt")
    assert os.path.exists(tmp_path / "ckpt")  # no suffix added
    back = fr.load(tmp_path / "ckpt")
    assert back["epoch"] == 7 and back["loss"] == 0.25 and back["name"] == "run-1"
    assert back["flags"] == [True, None] and back["shape"] == (3, 4)
    assert back["nested"] == {"__array__": "not an array ref", 3: "int key"}
    np.testing.assert_array_equal(back["f64"], np.arange(5.0))
    assert back["optimizer"]["state"][0]["step"] == 1
    np.testing.assert_array_equal(back["optimizer"]["state"][1]["exp_avg"],
                                  opt.state_dict()["state"][1]["exp_avg"])


def test_schedulers_and_the_genetic_algorithm_save_their_state(tmp_path):
    # as a Module or an optimizer: their state_dict, which their load_state_dict takes back
    m = fr.nn.Linear(2, 1, seed=0)
    opt = fr.optim.SGD(m.parameters(), lr=0.1)
    sched = fr.optim.StepLR(opt, step_size=2, gamma=0.5)
    for _ in range(3):
        sched.step()
    ga = fr.optim.GeneticAlgorithm(m, lambda: 0.0, population_size=4, seed=1)
    fr.save({"sched": sched, "ga": ga}, tmp_path / "ckpt")
    back = fr.load(tmp_path / "ckpt")
    sched2 = fr.optim.StepLR(fr.optim.SGD(m.parameters(), lr=0.1), step_size=2, gamma=0.5)
    sched2.load_state_dict(back["sched"])
    np.testing.assert_equal(sched2.state_dict(), sched.state_dict())
    ga2 = fr.optim.GeneticAlgorithm(m, lambda: 0.0, population_size=4, seed=2)
    ga2.load_state_dict(back["ga"])
    np.testing.assert_equal(ga2.state_dict(), ga.state_dict())
    with pytest.raises(TypeError, match="a scheduler, a GeneticAlgorithm"):
        fr.save({"gen": np.random.default_rng(0)}, tmp_path / "bad")


def test_paths_as_bytes_and_bad_paths(tmp_path):
    """A bytes path works as os.PathLike's do (tempfile failed on it mid-save); anything else
    is refused by name."""
    path = bytes(tmp_path / "b.npz")
    fr.save({"w": np.arange(3.0)}, path)
    np.testing.assert_array_equal(fr.load(path)["w"], np.arange(3.0))
    for call in (lambda: fr.save(np.ones(2), 3), lambda: fr.load(None)):
        with pytest.raises(TypeError, match=r"^path: expected a str, bytes or os\.PathLike"):
            call()


def test_pickled_file_is_refused(tmp_path):
    path = tmp_path / "evil.pkl"
    with open(path, "wb") as f:
        pickle.dump({"weight": np.zeros(3)}, f)
    with pytest.raises(ValueError, match="pickled or damaged"):
        fr.load(path)
    # an .npz whose entry is an object array (it would need unpickling)
    np.savez(tmp_path / "objects.npz", a=np.array([{"x": 1}], dtype=object))
    with pytest.raises(ValueError, match="unpickling"):
        fr.load(tmp_path / "objects.npz")


def test_malformed_files_are_refused(tmp_path):
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ValueError):
        fr.load(tmp_path / "junk.npz")
    np.savez(tmp_path / "bad_meta.npz", __fusedrnn__=np.array("{not json"))
    with pytest.raises(ValueError, match="malformed"):
        fr.load(tmp_path / "bad_meta.npz")
    with pytest.raises(TypeError, match="cannot save"):
        fr.save({"f": lambda: 0}, tmp_path / "x.npz")


def test_plain_npz_loads_as_dict(tmp_path):
    np.savez(tmp_path / "plain.npz", weight=np.ones((2, 2)), bias=np.zeros(2))
    back = fr.load(tmp_path / "plain.npz")
    assert sorted(back) == ["bias", "weight"]


def test_interrupted_save_leaves_previous_file_readable(tmp_path, monkeypatch):
    path = tmp_path / "model.npz"
    fr.save({"w": np.arange(4.0)}, path)

    def crash(f, **arrays):
        f.write(b"PK\x03\x04partial")  # some bytes reach the temporary file, then the crash
        raise KeyboardInterrupt

    monkeypatch.setattr(frio.np, "savez", crash)
    with pytest.raises(KeyboardInterrupt):
        fr.save({"w": np.zeros(4)}, path)
    monkeypatch.undo()
    np.testing.assert_array_equal(fr.load(path)["w"], np.arange(4.0))
    assert os.listdir(tmp_path) == ["model.npz"]  # the temporary file is gone


# ---------------------------------------------------------------------------- hostile files
def _npz_with_member(path, name, data):
    """A zip holding one member ``name`` with the raw bytes ``data`` (a hand-made .npz)."""
    import zipfile
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr(name, data)
    return path


def _npy_header(shape, descr="<f8"):
    import io
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False,
                                               "shape": shape})
    return buf.getvalue()


def test_zip_bomb_is_refused_before_reading(tmp_path):
    """A small compressed .npz whose arrays decompress to more than ``max_bytes`` (1 GiB by
    default) is refused from the entries' headers, before anything is decompressed; the message
    names the file, the entry, the size and the way to raise the limit."""
    import inspect
    assert inspect.signature(fr.load).parameters["max_bytes"].default == 1 << 30
    path = tmp_path / "bomb.npz"
    np.savez_compressed(path, a=np.zeros(2 ** 21))  # 16 MiB of zeros in a file of some KB
    assert os.path.getsize(path) < 100_000
    with pytest.raises(ValueError, match=r"bomb\.npz: entry 'a\.npy' .*16,777,216 bytes.*"
                                         r"over the limit of 8,388,608 bytes.*max_bytes="):
        fr.load(path, max_bytes=1 << 23)
    assert fr.load(path, max_bytes=1 << 24)["a"].shape == (2 ** 21,)  # at the limit: read
    assert fr.load(path, max_bytes=None)["a"].shape == (2 ** 21,)
    # the limit is on the total of the arrays: the entry that crosses it is named
    np.savez_compressed(path, a=np.zeros(2 ** 19), b=np.zeros(2 ** 19))  # 4 MiB each
    with pytest.raises(ValueError, match=r"entry 'b\.npy' .*8,388,608 bytes, over the limit"):
        fr.load(path, max_bytes=(1 << 23) - 1)
    with pytest.raises(TypeError, match="max_bytes: expected an int"):
        fr.load(path, max_bytes=1.5)


def test_header_declaring_a_huge_or_wrong_shape_is_refused(tmp_path):
    """A tiny .npz whose .npy header declares shape (10**11,) raised MemoryError; a header whose
    size disagrees with the entry's data was read as whatever NumPy made of it: both are
    ValueErrors naming the file and the entry, whatever ``max_bytes`` says."""
    path = _npz_with_member(tmp_path / "huge.npz", "weight.npy", _npy_header((10 ** 11,)))
    assert os.path.getsize(path) < 400
    for max_bytes in (1 << 30, None):
        with pytest.raises(ValueError, match=r"huge\.npz: .*entry 'weight\.npy' declares shape "
                                             r"\(100000000000,\)"):
            fr.load(path, max_bytes=max_bytes)
    path = _npz_with_member(tmp_path / "short.npz", "w.npy", _npy_header((10,)) + bytes(8))
    with pytest.raises(ValueError, match=r"short\.npz: .*entry 'w\.npy' declares shape \(10,\) "
                                         r"of float64 \(80 bytes\) but holds 8 bytes"):
        fr.load(path)
    path = tmp_path / "huge.npy"  # a bare .npy likewise
    path.write_bytes(_npy_header((10 ** 11,)))
    with pytest.raises(ValueError, match=r"huge\.npy: .*declares shape \(100000000000,\)"):
        fr.load(path, max_bytes=None)


def test_entry_that_is_not_an_array_is_refused(tmp_path):
    """A zip member that is not an .npy came back as raw bytes."""
    path = _npz_with_member(tmp_path / "raw.npz", "notes.txt", b"hello")
    with pytest.raises(ValueError, match=r"raw\.npz: entry 'notes\.txt' is not a NumPy array"):
        fr.load(path)
    path = _npz_with_member(tmp_path / "fake.npz", "w.npy", b"not an npy at all")
    with pytest.raises(ValueError, match=r"fake\.npz: entry 'w\.npy' is not a NumPy array"):
        fr.load(path)


def _tree_file(path, text, **arrays):
    """An .npz holding the JSON ``text`` as its object tree (fr.save's __fusedrnn__ entry)."""
    np.savez(path, __fusedrnn__=np.array(text), **arrays)
    return path


def _tree_json(tree):
    import json
    return json.dumps({"format": frio.FORMAT, "tree": tree})


@pytest.mark.parametrize("node, where, what", [
    ({"__tuple__": None}, "tree", "'__tuple__' must hold a list"),
    ({"__items__": 5}, "tree", "'__items__' must hold a list"),
    ({"__array__": ["a0"]}, "tree", "'__array__' must name an array entry"),
    ({"model": {"weight": {"__array__": ["a0"]}}}, r'tree\["model"\]\["weight"\]',
     "'__array__' must name"),
    ({"model": [1, {"__items__": [[1, 2, 3]]}]}, r'tree\["model"\]\[1\]',
     r"'__items__'\[0\] must be a \[key, value\] pair"),
    ({"model": {"__items__": [[True, 1]]}}, r'tree\["model"\]',
     r"'__items__'\[0\]: a key must be a str or an int"),
    ({"model": {"__array__": "a0", "x": 1}}, r'tree\["model"\]',
     "a '__array__' node must hold that key alone"),
    ({"model": {"weight": {"__array__": "a7"}}}, r'tree\["model"\]\["weight"\]',
     "the file refers to array 'a7'"),
], ids=["tuple-null", "items-int", "array-list", "nested-array-list", "items-triple",
        "items-bool-key", "array-extra-key", "missing-array"])
def test_malformed_tree_nodes_are_refused(tmp_path, node, where, what):
    """Malformed nodes raised bare TypeErrors; each is a ValueError naming the file and the node's
    path in the tree."""
    path = _tree_file(tmp_path / "bad.npz", _tree_json(node), a0=np.zeros(2))
    with pytest.raises(ValueError, match=fr"bad\.npz: {where}: {what}"):
        fr.load(path)


def test_deep_tree_is_refused_without_recursion(tmp_path):
    """A tree nested thousands of levels deep raised RecursionError (in json.loads, or in the
    decoder, which recursed once per level): both are ValueErrors; the decoder stops at
    MAX_DEPTH (100) levels, and fr.save refuses what fr.load would."""
    deep = '{"format": "%s", "tree": %s}' % (frio.FORMAT, "[" * 5000 + "]" * 5000)
    with pytest.raises(ValueError, match=r"deep\.npz: malformed __fusedrnn__ entry: .*nested too "
                                         r"deeply"):
        fr.load(_tree_file(tmp_path / "deep.npz", deep))
    tree = 1
    for _ in range(300):  # shallow enough for json.loads, too deep for the decoder
        tree = {"k": tree}
    with pytest.raises(ValueError, match=r'deeper\.npz: tree\["k"\]\["k"\].*: the tree is nested '
                                         r"more than 100 levels deep"):
        fr.load(_tree_file(tmp_path / "deeper.npz", _tree_json(tree)))
    obj = [np.arange(3.0)]  # 100 containers (lists, dicts, tuples) deep: saved and loaded
    for i in range(99):
        obj = (obj,) if i % 3 == 0 else ({"k": obj} if i % 3 == 1 else [obj])
    fr.save(obj, tmp_path / "ok.npz")
    back = fr.load(tmp_path / "ok.npz")
    for i in reversed(range(99)):
        assert isinstance(back, (tuple, dict, list)[i % 3])
        back = back[0] if i % 3 != 1 else back["k"]
    np.testing.assert_array_equal(back[0], np.arange(3.0))
    with pytest.raises(ValueError, match="nested more than 100 levels deep"):
        fr.save([obj], tmp_path / "too_deep.npz")


def test_saved_files_get_the_usual_permissions(tmp_path):
    """Written as open() would write them (0o666 less the umask), not owner-only as the
    temporary file's mkstemp makes it; an existing file keeps its own."""
    mask = os.umask(0o022)
    try:
        path = tmp_path / "model.npz"
        fr.save({"w": np.zeros(3)}, path)
        assert path.stat().st_mode & 0o777 == 0o644
        os.chmod(path, 0o600)
        fr.save({"w": np.ones(3)}, path)
        assert path.stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(mask)


def test_saving_through_a_symlink_writes_the_file_it_points_to(tmp_path):
    """As open(link, "w") would: the link stays a link and its target gets the new contents."""
    real, link = tmp_path / "real.npz", tmp_path / "latest.npz"
    fr.save({"w": np.zeros(2)}, real)
    os.symlink(real.name, link)
    fr.save({"w": np.ones(2)}, link)
    assert link.is_symlink()
    np.testing.assert_array_equal(fr.load(real)["w"], np.ones(2))


def test_saving_into_a_missing_folder_names_the_users_path(tmp_path):
    path = tmp_path / "missing" / "model.npz"
    with pytest.raises(FileNotFoundError) as info:
        fr.save({"w": np.zeros(2)}, path)
    assert info.value.filename == str(path)
    assert not (tmp_path / "missing").exists()


def test_numpy_scalars_load_back_as_scalars(tmp_path):
    """An lr given as np.float64 came back as a 0-d array, which the optimizer's load refused
    (a checkpoint that saved could not resume). Scalars keep their type, arrays stay arrays."""
    obj = {"f64": np.float64(0.01), "f32": np.float32(1.5), "i8": np.int8(-3),
           "zero_d": np.array(2.0)}
    fr.save(obj, tmp_path / "s.npz")
    back = fr.load(tmp_path / "s.npz")
    for k in ("f64", "f32", "i8"):
        assert type(back[k]) is type(obj[k]) and back[k] == obj[k]
    assert isinstance(back["zero_d"], np.ndarray) and back["zero_d"].shape == ()
    lin = fr.nn.Linear(2, 1, seed=0)
    opt = fr.optim.SGD(lin.parameters(), lr=np.logspace(-3, -1, 3)[1], momentum=np.float32(0.9))
    fr.save(opt, tmp_path / "opt.npz")
    other = fr.optim.SGD(lin.parameters(), lr=0.5)
    other.load_state_dict(fr.load(tmp_path / "opt.npz"))
    assert other.param_groups[0]["lr"] == 0.01 and other.param_groups[0]["momentum"] == np.float32(0.9)


def test_a_scalar_node_must_name_a_0d_array(tmp_path):
    path = _tree_file(tmp_path / "bad.npz", _tree_json({"lr": {"__scalar__": "a0"}}),
                      a0=np.zeros(2))
    with pytest.raises(ValueError, match=r"bad\.npz: tree\[\"lr\"\]: '__scalar__' must name a 0-d"):
        fr.load(path)


def test_saving_to_a_pipe_writes_into_it_and_leaves_it_a_pipe(tmp_path):
    """A device or FIFO (/dev/null, a named pipe) was replaced by a regular file (the rename of
    an atomic write; as root, /dev/null itself). It is written into, as open() does."""
    import stat
    import threading
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    received = []
    def read():
        with open(fifo, "rb") as f:
            received.append(f.read())
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    fr.save({"w": np.arange(3.0)}, fifo)
    reader.join(timeout=30)
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    (tmp_path / "copy.npz").write_bytes(received[0])
    np.testing.assert_array_equal(fr.load(tmp_path / "copy.npz")["w"], np.arange(3.0))
    from fusedrnn._atomic import check_writable
    check_writable(os.devnull)  # a device is checked for writing, not its folder


def test_dev_null_and_a_redirected_stdout_are_written_into(tmp_path):
    """fr.save to /dev/null raised struct.error (a zip written on a device whose position is
    always 0); /dev/stdout redirected to a file resolved to that file and replaced it, losing
    what the process had printed. Both are written into, the zip whole."""
    import subprocess
    import sys
    fr.save({"w": np.arange(3.0)}, os.devnull)
    out = tmp_path / "out.bin"
    # (printed before and after, unflushed: the save goes between them, through the process's
    # own descriptor; a file opened anew there had its own offset, which "after" wrote over;
    # a symbolic link to /dev/stdout is the same name)
    # (also through a link to the folder /dev/fd, and with sys.stdout swapped out: Python's
    # buffer of the real one goes first; PYTHONUNBUFFERED would hide an unflushed buffer)
    os.symlink("/dev/stdout", tmp_path / "link")
    os.symlink("/dev/fd", tmp_path / "fds")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    for name, around in (("/dev/stdout", ""), (str(tmp_path / "link"), ""),
                         (str(tmp_path / "fds" / "1"), ""),
                         ("/dev/stdout", "contextlib.redirect_stdout(io.StringIO())")):
        save = f"fr.save({{'w': np.arange(3.0)}}, {name!r})"
        if around:
            save = f"exec({f'with {around}: {save}'!r})"
        code = ("import contextlib, io, sys, numpy as np, fusedrnn as fr; print('before'); "
                f"{save}; print('after')")
        with open(out, "wb") as f:
            subprocess.run([sys.executable, "-c", code], stdout=f, check=True, timeout=120,
                           env=env)
        data = out.read_bytes()
        assert data.startswith(b"before\n") and data.endswith(b"after\n")
        (tmp_path / "copy.npz").write_bytes(data[len(b"before\n"):-len(b"after\n")])
        np.testing.assert_array_equal(fr.load(tmp_path / "copy.npz")["w"], np.arange(3.0))
        assert (tmp_path / "link").is_symlink()


def test_what_open_refuses_is_refused_before_writing(tmp_path, monkeypatch):
    """A name ending in a separator made a file named as the folder; a read-only file was
    replaced (open() and torch.save refuse both); a NUL byte is named; a read-only folder's
    error names the user's path, not the temporary file's."""
    with pytest.raises(IsADirectoryError) as info:
        fr.save({"w": np.zeros(1)}, str(tmp_path / "out") + os.sep)
    assert info.value.filename == str(tmp_path / "out") + os.sep
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="path: expected a file name, got .* NUL byte"):
        fr.save({"w": np.zeros(1)}, str(tmp_path / "a\0b"))
    for folder_name in (str(tmp_path / "x") + "/.", str(tmp_path / "x") + "/.."):
        with pytest.raises(IsADirectoryError):
            fr.save({"w": np.zeros(1)}, folder_name)
    with pytest.raises(FileNotFoundError, match="does not exist"):  # (open() walks nodir)
        fr.save({"w": np.zeros(1)}, str(tmp_path / "nodir" / ".." / "f.npz"))
    assert not (tmp_path / "f.npz").exists()
    kept = tmp_path / "kept.npz"
    fr.save({"w": np.zeros(1)}, kept)
    os.chmod(kept, 0o444)
    real_access = os.access  # (root passes os.access: as a user without the right)
    monkeypatch.setattr(os, "access", lambda p, mode: False if os.fspath(p) == str(kept)
                        else real_access(p, mode))
    with pytest.raises(PermissionError, match="read-only"):
        fr.save({"w": np.ones(1)}, kept)
    np.testing.assert_array_equal(fr.load(kept)["w"], np.zeros(1))
    folder = tmp_path / "ro"
    folder.mkdir()
    import tempfile

    def no_file_here(*args, **kwargs):
        raise PermissionError(13, "Permission denied", os.path.join(kwargs["dir"], ".tmp"))
    monkeypatch.setattr(tempfile, "mkstemp", no_file_here)  # (a read-only folder, root too)
    with pytest.raises(PermissionError) as info:
        fr.save({"w": np.zeros(1)}, folder / "m.npz")
    assert info.value.filename == str(folder / "m.npz") and "ro" in str(info.value)


def test_an_open_binary_file_is_written_and_read_as_torch_save_takes_one():
    """torch.save, np.save and onnx.save take an open file (io.BytesIO); fr.save, fr.load and
    fusedrnn.onnx.export take one too (written and read where it stands)."""
    import io
    buffer = io.BytesIO()
    buffer.write(b"head")
    fr.save({"w": np.arange(3.0)}, buffer)
    buffer.seek(4)
    np.testing.assert_array_equal(fr.load(buffer)["w"], np.arange(3.0))
    with pytest.raises(TypeError, match="path: expected a binary file open for reading, got "
                                        "StringIO in text mode"):
        fr.load(io.StringIO("text"))
    with pytest.raises(TypeError, match="or a binary file open for writing, got int"):
        fr.save({}, 3)
    with pytest.raises(TypeError, match="open for writing, got BufferedReader not open for"):
        with open(__file__, "rb") as f:
            fr.save({}, f)
    import tempfile
    with tempfile.NamedTemporaryFile(mode="w") as f:  # (no TextIOBase: its mode says text)
        with pytest.raises(TypeError, match="_TemporaryFileWrapper in text mode"):
            fr.save({}, f)
    closed = io.BytesIO()
    closed.close()
    with pytest.raises(ValueError, match="path: expected a file open for writing, got a closed"):
        fr.save({}, closed)
    onnx = pytest.importorskip("onnx")
    import fusedrnn.onnx
    lstm = fr.nn.LSTM(3, 4, seed=0)
    exported = io.BytesIO()
    proto = fusedrnn.onnx.export(lstm, exported, np.zeros((2, 1, 3), np.float32))
    assert onnx.load_from_string(exported.getvalue()) == proto
    exported.seek(0)
    assert list(fusedrnn.onnx.load(exported)) == ["l0_node"]
    exported.seek(0)
    assert fusedrnn.onnx.Backend.prepare(exported).run([np.zeros((2, 1, 3), np.float32)])[0].shape \
        == (2, 1, 4)


def test_a_regular_file_under_dev_is_replaced_not_added_to(tmp_path):
    """Every name under /dev was written into as a device: a checkpoint in /dev/shm grew by a
    whole save each time. Only a process's open files (/dev/stdout, /proc/...) and files that
    are no regular ones are written into."""
    if not os.path.isdir("/dev/shm") or not os.access("/dev/shm", os.W_OK):
        pytest.skip("no writable /dev/shm")
    import tempfile
    from fusedrnn._atomic import write_text
    with tempfile.TemporaryDirectory(dir="/dev/shm") as folder:
        path = os.path.join(folder, "results.json")
        write_text(path, "{}")
        write_text(path, "{}")
        with open(path) as f:
            assert f.read() == "{}"


def test_a_descriptor_open_for_reading_is_named_and_a_zip_member_is_read():
    """A read-only descriptor passed the check and the save failed with a bare EBADF; a
    zip member (a binary stream whose mode is "r") was refused as text."""
    import io
    import zipfile
    from fusedrnn._atomic import check_writable
    fd = os.open(__file__, os.O_RDONLY)
    try:
        for call in (lambda: check_writable(f"/dev/fd/{fd}"),
                     lambda: fr.save({}, f"/dev/fd/{fd}")):
            with pytest.raises(PermissionError, match="open for reading only"):
                call()
    finally:
        os.close(fd)
    member, archive = io.BytesIO(), io.BytesIO()
    fr.save({"w": np.arange(2.0)}, member)
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("m.npz", member.getvalue())
    with zipfile.ZipFile(archive) as z, z.open("m.npz") as f:
        np.testing.assert_array_equal(fr.load(f)["w"], np.arange(2.0))
