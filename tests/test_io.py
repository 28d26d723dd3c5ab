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
