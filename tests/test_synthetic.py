import numpy as np

from clarity import io
from clarity.sampling import nearest_distance
from clarity.synthetic import make_brain, write_dataset


def test_deterministic(small_brain, small_kwargs):
    again = make_brain(7, **small_kwargs)
    np.testing.assert_array_equal(again.volume, small_brain.volume)
    np.testing.assert_array_equal(again.cells, small_brain.cells)
    np.testing.assert_array_equal(again.annotated, small_brain.annotated)
    other = make_brain(8, **small_kwargs)
    assert not np.array_equal(other.volume, small_brain.volume)


def test_volume_properties(small_brain, small_kwargs):
    b = small_brain
    assert b.volume.dtype == np.uint16 and b.volume.shape == small_kwargs["shape"]
    assert len(b.cells) > 5
    # dark outside the tissue, brighter inside
    assert np.median(b.volume[~b.tissue]) < 0.2 * np.median(b.volume[b.tissue])
    assert b.radius.min() >= 3 and b.radius.max() <= 6
    # a strong field: several-fold across the volume
    assert b.field.max() / b.field.min() > 3


def test_truth_annotation_consistency(small_brain):
    b = small_brain
    n, m = len(b.cells), len(b.annotated)
    assert abs(m - round(0.4 * n)) <= 1
    # every annotation is a jittered click on its own truth cell, inside the volume
    d = np.linalg.norm(b.annotated - b.cells[b.annotated_index], axis=1)
    assert d.max() < 3.5
    assert np.all(b.annotated >= 0) and np.all(b.annotated < np.array(b.volume.shape))
    assert len(np.unique(b.annotated_index)) == m
    assert nearest_distance(b.annotated, b.cells).max() < 3.5


def test_write_dataset(tmp_path, small_kwargs):
    paths = write_dataset(tmp_path, n_brains=2, seed=3, progress=False, **small_kwargs)
    assert [p.name for p in paths] == ["brain01.tif", "brain02.tif"]
    brains = io.list_brains(tmp_path)
    assert [b.name for b in brains] == ["brain01", "brain02"]
    vol = brains[0].read()
    ann = brains[0].points(shape=vol.shape)
    truth = brains[0].truth_points(shape=vol.shape)
    assert 0 < len(ann) < len(truth)
    assert (tmp_path / "raw" / "dataset.json").exists()
    before = (tmp_path / "raw" / "brain01.tif").stat().st_mtime_ns
    write_dataset(tmp_path, n_brains=2, seed=3, progress=False, **small_kwargs)  # kept, not rewritten
    assert (tmp_path / "raw" / "brain01.tif").stat().st_mtime_ns == before


def test_write_dataset_same_files_with_any_number_of_workers(tmp_path, small_kwargs):
    """Brains are built in parallel processes; each depends on its own seed only."""
    import hashlib

    def digest(root):
        return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(root.rglob("*")) if p.is_file()}

    write_dataset(tmp_path / "one", n_brains=3, seed=5, progress=False, workers=1, **small_kwargs)
    write_dataset(tmp_path / "two", n_brains=3, seed=5, progress=False, workers=2, **small_kwargs)
    a, b = digest(tmp_path / "one"), digest(tmp_path / "two")
    assert a == b and len(a) >= 3 * 4
