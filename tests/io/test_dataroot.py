"""Tests of clarity.io.dataroot: the brains of a data root."""

import pytest

from clarity import io
from clarity.io import ClarityInputError


def test_list_brains(data_root, tmp_path):
    brains = io.list_brains(data_root)
    assert [b.name for b in brains] == ["b1", "b2"]
    assert brains[0].annotations.name == "b1.csv" and brains[0].truth is not None
    assert io.list_brains(data_root, names=["b2"])[0].name == "b2"
    with pytest.raises(ClarityInputError, match="unknown brain"):
        io.list_brains(data_root, names=["nope"])
    (tmp_path / "empty" / "raw").mkdir(parents=True)
    with pytest.raises(ClarityInputError, match="no brains"):
        io.list_brains(tmp_path / "empty")
