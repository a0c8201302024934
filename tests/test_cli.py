"""Tests of the command line: ``python -m clarity detect``."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
import torch

from clarity.__main__ import build_parser, main, volume_name
from clarity.io import read_cellcounter_xml
from clarity.model import CellCNN, ModelConfig, save_model
from clarity.synthetic import make_brain

REPO = Path(__file__).resolve().parent.parent
LINE = re.compile(r"^(?P<name>\S+): (?P<count>\d+) cells, (?P<sec>[\d.]+) s -> ")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    b = make_brain(5, shape=(24, 80, 80), cell_density=4e-4)
    tifffile.imwrite(d / "tiny.tif", b.volume)
    planes = d / "tiny_planes"
    planes.mkdir()
    for i, p in enumerate(b.volume):
        tifffile.imwrite(planes / f"plane{i}.tif", p)
    torch.manual_seed(0)
    net = CellCNN(ModelConfig())
    torch.nn.init.normal_(net.fc2.weight, std=0.5)
    model = save_model(d / "model" / "model.pt", net, normalisation={"method": "contrast"},
                       threshold=0.5, provenance={"note": "untrained test model"})
    return {"dir": d, "tif": d / "tiny.tif", "planes": planes, "model": model}


def _run(argv, capsys):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_detect_writes_csv_xml_and_prints_counts(inputs, tmp_path, capsys):
    out_dir = tmp_path / "out"
    rc, out, err = _run(["detect", inputs["tif"], inputs["planes"], "--model", inputs["model"],
                         "--out", out_dir, "--xml", "--chunk", "12", "40", "40", "--no-progress"],
                        capsys)
    assert rc == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 2
    counts = {}
    for line in lines:
        m = LINE.match(line)
        assert m, line
        counts[m["name"]] = int(m["count"])
    assert set(counts) == {"tiny", "tiny_planes"}
    for name, n in counts.items():
        csv = pd.read_csv(out_dir / f"{name}.csv")
        assert list(csv.columns) == ["z", "y", "x", "score", "snr"]
        assert len(csv) == n > 0
        assert (csv["score"] >= 0.5).all()
        xml = read_cellcounter_xml(out_dir / f"{name}.xml")
        np.testing.assert_array_equal(xml, csv[["z", "y", "x"]].to_numpy(float))
    # a TIFF and the same planes in a folder give the same cells
    a, b = (pd.read_csv(out_dir / f"{n}.csv") for n in ("tiny", "tiny_planes"))
    pd.testing.assert_frame_equal(a, b)
    assert not list(out_dir.glob(".*.tmp*"))  # atomic writes leave no temporaries


def test_min_snr_option(inputs, tmp_path, capsys):
    rc, _, err = _run(["detect", inputs["tif"], "--model", inputs["model"], "--out", tmp_path / "all",
                       "--no-progress"], capsys)
    assert rc == 0, err
    every = pd.read_csv(tmp_path / "all" / "tiny.csv")
    cut = float(every["snr"].median())
    rc, out, err = _run(["detect", inputs["tif"], "--model", inputs["model"], "--out", tmp_path / "gated",
                         "--min-snr", f"{cut}", "--no-progress"], capsys)
    assert rc == 0, err
    gated = pd.read_csv(tmp_path / "gated" / "tiny.csv")
    assert int(LINE.match(out)["count"]) == len(gated)
    # the gate only removes cells (it runs after NMS); rounding of the csv's snr aside
    assert 0 < len(gated) < len(every)
    assert set(map(tuple, gated[["z", "y", "x"]].to_numpy())) <= set(map(tuple, every[["z", "y", "x"]].to_numpy()))
    assert (gated["snr"] >= cut - 0.01).all()
    with pytest.raises(SystemExit) as e:
        main(["detect", str(inputs["tif"]), "--model", str(inputs["model"]), "--out", str(tmp_path),
              "--min-snr", "high"])
    assert e.value.code == 2
    assert "not a number: 'high'" in capsys.readouterr().err


def test_threshold_option_and_no_xml(inputs, tmp_path, capsys):
    rc, out, _ = _run(["detect", inputs["tif"], "--model", inputs["model"], "--out", tmp_path,
                       "--threshold", "0.95", "--no-progress"], capsys)
    assert rc == 0
    csv = pd.read_csv(tmp_path / "tiny.csv")
    assert (csv["score"] >= 0.95).all()
    assert int(LINE.match(out)["count"]) == len(csv)
    assert not (tmp_path / "tiny.xml").exists()
    # the refinement is chosen on the command line; it changes where (and how many) cells are found
    found = {}
    for refine in ("none", "climb"):
        rc, out0, _ = _run(["detect", inputs["tif"], "--model", inputs["model"], "--out", tmp_path / refine,
                            "--threshold", "0.95", "--refine", refine, "--no-progress"], capsys)
        assert rc == 0
        found[refine] = pd.read_csv(tmp_path / refine / "tiny.csv")
        assert (found[refine]["score"] >= 0.95).all() and int(LINE.match(out0)["count"]) == len(found[refine])
    assert not found["none"][["z", "y", "x"]].equals(found["climb"][["z", "y", "x"]])
    with pytest.raises(SystemExit):
        main(["detect", str(inputs["tif"]), "--model", str(inputs["model"]), "--out", str(tmp_path),
              "--refine", "sideways"])


def _bad_inputs(d: Path) -> dict:
    (d / "corrupt.tif").write_bytes(b"II*\x00this is not a tiff at all" * 10)
    tifffile.imwrite(d / "flat.tif", np.zeros((40, 50), np.uint16))
    (d / "empty").mkdir()
    nan = np.random.default_rng(0).random((12, 30, 30)).astype(np.float32) * 100 + 10
    nan[5, 6, 7] = np.nan
    tifffile.imwrite(d / "nan.tif", nan)
    (d / "garbage.pt").write_bytes(b"not a model")
    return {
        "missing file": (d / "missing.tif", None, "missing.tif"),
        "corrupt tiff": (d / "corrupt.tif", None, "corrupt.tif"),
        "2D tiff": (d / "flat.tif", None, "flat.tif"),
        "empty folder": (d / "empty", None, "empty"),
        "NaN values": (d / "nan.tif", None, "nan.tif"),
        "missing model": (None, d / "nomodel.pt", "nomodel.pt"),
        "corrupt model": (None, d / "garbage.pt", "garbage.pt"),
    }


@pytest.mark.parametrize("case", ["missing file", "corrupt tiff", "2D tiff", "empty folder",
                                  "NaN values", "missing model", "corrupt model"])
def test_bad_input_exits_2_with_one_line(inputs, tmp_path, capsys, case):
    vol, model, named = _bad_inputs(tmp_path)[case]
    rc, out, err = _run(["detect", vol or inputs["tif"], "--model", model or inputs["model"],
                         "--out", tmp_path / "out", "--no-progress"], capsys)
    assert rc == 2
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("clarity: error: ") and named in lines[0], lines[0]
    assert not (tmp_path / "out" / "tiny.csv").exists()


def test_module_entry_point_bad_input_no_traceback(inputs, tmp_path):
    """The real ``python -m clarity`` process: exit code 2, one line, no traceback."""
    proc = subprocess.run([sys.executable, "-m", "clarity", "detect", str(tmp_path / "nope.tif"),
                           "--model", str(inputs["model"]), "--out", str(tmp_path)],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    want = f"clarity: error: {tmp_path / 'nope.tif'}: no such file or folder"
    assert proc.stderr.strip().splitlines() == [want]


def test_usage_errors(inputs, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["detect", str(inputs["tif"]), "--model", str(inputs["model"])])  # no --out
    assert exc.value.code == 2
    rc, _, err = _run(["detect", inputs["tif"], "--out", tmp_path], capsys)  # no --model
    assert rc == 2 and "--model" in err
    rc, _, err = _run(["detect", inputs["tif"], inputs["tif"], "--model", inputs["model"],
                       "--out", tmp_path], capsys)
    assert rc == 2 and "same output name" in err


def test_parser_has_subcommands():
    parser = build_parser()
    args = parser.parse_args(["detect", "a.tif", "--out", "o", "--model", "m.pt", "--chunk", "8", "9", "10",
                              "--mode", "dense", "--device", "cpu", "--scheduler", "tcp://h:1"])
    assert args.command == "detect" and args.chunk == [8, 9, 10] and args.mode == "dense"
    assert volume_name("/x/brain01.tif") == "brain01"
    assert volume_name("/x/brain01.ome.tif") == "brain01.ome"


def test_no_rescore_option(inputs, tmp_path, capsys):
    """A model with a rescorer rescores by default (csv score = rescored probability, above the
    rescorer's threshold); --no-rescore gives the CNN alone."""
    from clarity.model import load_model
    from clarity.rescore import FEATURES, Rescorer

    loaded = load_model(inputs["model"], device="cpu")
    n = len(FEATURES)
    # a hand-made rescorer: probability rises with the local SNR only
    w1 = np.zeros((1, n))
    w1[0, 1] = 1.0
    r = Rescorer(features=list(FEATURES), mean=[0.0] * n, scale=[1.0] * n,
                 w1=w1.tolist(), b1=[0.0], w2=[4.0], b2=-8.0, threshold=0.5, floor=0.5)
    path = save_model(tmp_path / "r" / "model.pt", loaded.model, normalisation=loaded.normalisation,
                      threshold=0.5, provenance={}, rescorer=r)
    found = {}
    for name, extra in (("rescored", []), ("alone", ["--no-rescore"])):
        rc, out, err = _run(["detect", inputs["tif"], "--model", path, "--out", tmp_path / name,
                             "--no-progress", *extra], capsys)
        assert rc == 0, err
        found[name] = pd.read_csv(tmp_path / name / "tiny.csv")
        assert int(LINE.match(out)["count"]) == len(found[name])
    # rescored: exactly the CNN's cells with snr > 2 (4 * snr - 8 > 0), rounding of the csv aside
    alone, rescored = found["alone"], found["rescored"]
    assert 0 < len(rescored) < len(alone)
    assert set(map(tuple, rescored[["z", "y", "x"]].to_numpy())) <= set(map(tuple, alone[["z", "y", "x"]].to_numpy()))
    assert (rescored["snr"] >= 2.0 - 0.01).all() and (rescored["score"] >= 0.5).all()


def test_voxel_size_flag_and_data_root_metadata(inputs, tmp_path, capsys):
    """``--voxel-size`` (else the data root's brains.csv) brings a volume to the model's grid;
    cells come back in the volume's own voxels; the count is marked uncorrected without a count factor."""
    from clarity.detect import DetectionConfig
    from clarity.model import load_model

    m = load_model(inputs["model"], device="cpu")
    model = save_model(tmp_path / "m" / "model.pt", m.model, normalisation=m.normalisation, threshold=0.5,
                       provenance={}, detection_config=DetectionConfig(voxel_um=(2.0, 1.6, 1.6)))
    vol = tifffile.imread(inputs["tif"])[::3]  # 8 planes: as if imaged at 6 um in z
    root = tmp_path / "root"
    (root / "raw").mkdir(parents=True)
    tifffile.imwrite(root / "raw" / "v.tif", vol)
    (root / "brains.csv").write_text("volume,brain,voxel_um_z,voxel_um_y,voxel_um_x\nv,B,6,1.6,1.6\n")
    rc, out, err = _run(["detect", root / "raw" / "v.tif", "--model", model, "--out", tmp_path / "a",
                         "--no-progress"], capsys)
    assert rc == 0, err
    assert "detections, uncorrected" in out
    a = pd.read_csv(tmp_path / "a" / "v.csv")
    assert len(a) > 0 and a.z.max() < vol.shape[0]
    rc, out, err = _run(["detect", root / "raw" / "v.tif", "--model", model, "--out", tmp_path / "b",
                         "--no-progress", "--voxel-size", "6", "1.6", "1.6"], capsys)
    pd.testing.assert_frame_equal(a, pd.read_csv(tmp_path / "b" / "v.csv"))  # the flag = the metadata
    rc, out, err = _run(["detect", root / "raw" / "v.tif", "--model", model, "--out", tmp_path / "c",
                         "--no-progress", "--voxel-size", "2", "1.6", "1.6"], capsys)
    c = pd.read_csv(tmp_path / "c" / "v.csv")  # taken at the model's own grid: other cells
    assert len(c) != len(a) or not np.array_equal(c[["z", "y", "x"]].to_numpy(), a[["z", "y", "x"]].to_numpy())
    with pytest.raises(SystemExit) as exc:
        main(["detect", str(root / "raw" / "v.tif"), "--model", str(model), "--out", str(tmp_path / "d"),
              "--voxel-size", "0", "1", "1"])
    assert exc.value.code == 2
    assert "must be positive" in capsys.readouterr().err


def test_cell_size_command(data_root, capsys):
    """``clarity cell-size`` measures the labelled cells' apparent size per brain and pooled; it
    needs the voxel size and the corrected volumes, and says so in one line."""
    from clarity.paths import Paths
    from clarity.preprocess import N4Config, preprocess_dataset

    code, out, err = _run(["cell-size", "--data-dir", str(data_root)], capsys)
    assert code == 2 and "brains.csv" in err and "voxel size" in err
    (data_root / "brains.csv").write_text("volume,brain,voxel_um_z,voxel_um_y,voxel_um_x\n"
                                          "b1,A,2.0,1.6,1.6\nb2,A,2.0,1.6,1.6\n")
    code, out, err = _run(["cell-size", "--data-dir", str(data_root)], capsys)
    assert code == 2 and "01_preprocess" in err
    preprocess_dataset(Paths(data_dir=data_root), config=N4Config(shrink=4, iterations=5, levels=1), progress=False)
    code, out, err = _run(["cell-size", "--data-dir", str(data_root)], capsys)
    assert code == 0, err
    rows = [line.split(",") for line in out.strip().splitlines()]
    assert rows[0] == ["brain", "cells", "size_um_z", "size_um_y", "size_um_x"] and [r[0] for r in rows[1:]] == ["A", "all"]
    z, y, x = (float(v) for v in rows[-1][2:])
    # synthetic somata of 3-6 voxels' xy radius, blurred: apparent sizes of 5-20 um
    assert all(5 < s < 20 for s in (z, y, x))


def test_calibrate_command_and_detect_uses_the_calibration(data_root, tmp_path, capsys):
    """``clarity calibrate`` fits the detection threshold and count factor on the given brains into
    ``model.calibration.json`` beside the weights (never writing them); ``clarity detect`` then
    runs at that threshold and corrects its count; a calibration of other weights stops it in one
    line, until ``calibrate --fresh`` replaces it."""
    import json
    import shutil

    from clarity.model import load_model
    from clarity.paths import Paths
    from clarity.preprocess import N4Config, preprocess_dataset

    torch.manual_seed(0)
    net = CellCNN(ModelConfig())
    torch.nn.init.normal_(net.fc2.weight, std=0.5)
    model = save_model(tmp_path / "m" / "model.pt", net.eval(), normalisation={"method": "contrast"},
                       threshold=0.5, provenance={})
    data, mtime = model.read_bytes(), model.stat().st_mtime_ns
    cal = tmp_path / "m" / "model.calibration.json"
    argv = ["calibrate", "--model", model, "--data-dir", data_root, "--brains", "b1", "--no-rescore"]
    rc, _, err = _run(argv, capsys)  # not preprocessed yet
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "b1_corrected.npy" in err
    rc, _, err = _run(argv[:-2] + ["b9"], capsys)
    assert rc == 2 and "unknown brain(s) ['b9']" in err and "Traceback" not in err
    preprocess_dataset(Paths(data_dir=data_root), config=N4Config(shrink=4, iterations=5, levels=1), progress=False)
    rc, out, err = _run(argv, capsys)
    assert rc == 0, err
    assert model.read_bytes() == data and model.stat().st_mtime_ns == mtime  # the weights: never written
    m = load_model(model, device="cpu")
    assert m.calibration_path == cal and f"detection threshold {m.detection_threshold:g} on b1" in out
    assert "(complete labels)" in out and str(cal) in out
    assert m.count_factor is not None and m.threshold == 0.5 and m.provenance["calibration_brains"] == ["b1"]
    assert json.loads(cal.read_text())["detection_threshold"] == m.detection_threshold
    # detect: the calibrated threshold and count factor by default
    vol = data_root / "raw" / "b2.tif"
    rc, out, err = _run(["detect", vol, "--model", model, "--out", tmp_path / "cal", "--no-progress"], capsys)
    assert rc == 0, err
    found = pd.read_csv(tmp_path / "cal" / "b2.csv")
    assert len(found) > 0 and (found["score"] >= m.detection_threshold - 1e-6).all()
    assert f"(estimated total {len(found) * m.count_factor:.0f})" in out
    # with the held-out brains' count spread stored beside the weights (notebook 06), the interval too
    from clarity.count.spread import count_interval, record_count_spread
    spread = {"k": 4, "mean_log": 0.1, "sd_log": 0.2, "per_brain": {}, "method": "CNN (cnn)", "rule": "test"}
    assert record_count_spread(model, {"rescored": None, "not_rescored": spread})
    rc, out, err = _run(["detect", vol, "--model", model, "--out", tmp_path / "spread", "--no-progress"], capsys)
    lo, hi = count_interval(len(found) * m.count_factor, spread)
    assert rc == 0 and f"; 95 % for a new brain {lo:.0f}-{hi:.0f}, from the errors of 4 held-out brains" in out, out
    assert model.read_bytes() == data  # the spread went into the calibration file
    rc, _, err = _run(["detect", vol, "--model", model, "--out", tmp_path / "hand", "--no-progress",
                       "--threshold", repr(m.detection_threshold)], capsys)
    pd.testing.assert_frame_equal(found, pd.read_csv(tmp_path / "hand" / "b2.csv"))
    shutil.copy(model, tmp_path / "plain.pt")  # the same weights without their calibration: another threshold
    rc, _, err = _run(["detect", vol, "--model", tmp_path / "plain.pt", "--out", tmp_path / "plain", "--no-progress"],
                      capsys)
    plain = pd.read_csv(tmp_path / "plain" / "b2.csv")
    assert (plain["score"] >= 0.5).all() and len(plain) != len(found)
    # other weights under the calibrated name: detect refuses, calibrate --fresh replaces
    other = CellCNN(ModelConfig())
    save_model(tmp_path / "o" / "model.pt", other.eval(), normalisation={"method": "contrast"}, threshold=0.5,
               provenance={})
    shutil.copy(tmp_path / "o" / "model.pt", model)
    rc, _, err = _run(["detect", vol, "--model", model, "--out", tmp_path / "x", "--no-progress"], capsys)
    assert rc == 2 and err.strip().splitlines() == [err.strip()] and "model.calibration.json" in err
    assert "calibrates other weights" in err and not (tmp_path / "x" / "b2.csv").exists()
    rc, _, err = _run(argv, capsys)
    assert rc == 2 and "model.calibration.json" in err
    rc, out, err = _run(argv + ["--fresh"], capsys)
    assert rc == 0, err
    assert load_model(model, device="cpu").calibration_path == cal
    # --nms-search: the best of the radii on the same brain is kept and named
    rc, out, err = _run(argv + ["--fresh", "--nms-search", "2", "6", "12"], capsys)
    assert rc == 0, err
    m = load_model(model, device="cpu")
    f1 = m.provenance["nms_f1"]
    assert sorted(f1) == ["12", "2", "6"] and f1[f"{m.detection_config['nms_radius']:g}"] == max(f1.values())
    assert f"NMS radius {m.detection_config['nms_radius']:g} of [2.0, 6.0, 12.0] by pooled detection F1 on b1" in out
    with pytest.raises(SystemExit):
        _run(argv + ["--nms-search", "0"], capsys)
    assert "must be positive" in capsys.readouterr().err
    # --nms-saddle: kept in the calibration, and detect reads the volume's intensities for it
    rc, out, err = _run(argv + ["--fresh", "--nms-search", "6", "12", "--nms-saddle", "0.5"], capsys)
    assert rc == 0, err
    m = load_model(model, device="cpu")
    assert m.detection_config["nms_saddle"] == 0.5 and "dip below 0.5" in out
    rc, out, err = _run(["detect", vol, "--model", model, "--out", tmp_path / "saddle", "--no-progress"], capsys)
    assert rc == 0, err
    assert len(pd.read_csv(tmp_path / "saddle" / "b2.csv")) > 0
    with pytest.raises(SystemExit):
        _run(argv + ["--nms-saddle", "1.5"], capsys)
    assert "at most 1" in capsys.readouterr().err
