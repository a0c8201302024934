"""Tests of clarity.io.files: atomic writes."""

import pytest

from clarity import io


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with io.atomic_write(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_write_json_converts_numpy_and_is_atomic(tmp_path):
    import json

    import numpy as np

    path = io.write_json(tmp_path / "a" / "m.json", {"n": np.int64(3), "x": np.float32(0.5), "nan": float("nan"),
                                                     "arr": np.arange(3), "p": tmp_path, "t": (1, 2)})
    back = json.loads(path.read_text())
    assert back == {"n": 3, "x": 0.5, "nan": None, "arr": [0, 1, 2], "p": str(tmp_path), "t": [1, 2]}
    assert [p.name for p in path.parent.iterdir()] == ["m.json"]  # no temporary left behind


def test_natural_key_orders_as_a_person_would():
    names = ["brain10", "Brain2", "brain1", "b"]
    assert sorted(names, key=io.natural_key) == ["b", "brain1", "Brain2", "brain10"]
