"""Tests of clarity.params: one declaration of the report's parameters, agreed with by the notebooks'
parameters cells and the dataclasses that repeat a default; parameter files checked on loading."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import json
from pathlib import Path

import pytest

from clarity.__main__ import main
from clarity.io import ClarityInputError
from clarity.params import NOTEBOOKS, PARAMS, STAGES, Param, check_value, closest_name, format_params, \
    notebook_params
from clarity.pipeline import STEPS, load_params, splits

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_FILES = sorted((ROOT / "notebooks").glob("*.ipynb"))
PARAM_FILES = sorted((ROOT / "notebooks" / "params").glob("*.yaml"))


def _parameters_cell(path: Path) -> dict[str, tuple[str, object]]:
    """name -> (type annotation, default) of a notebook's parameters cell; every line a declaration."""
    nb = json.loads(path.read_text())
    (cell,) = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    out = {}
    for node in ast.parse("".join(cell["source"])).body:
        assert isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name), \
            f"{path.name}:{node.lineno}: a parameters cell holds only 'NAME: type = literal' lines"
        assert isinstance(node.annotation, ast.Name), f"{path.name}: {node.target.id}: annotate with a plain type"
        assert node.target.id not in out, f"{path.name}: {node.target.id} declared twice"
        out[node.target.id] = (node.annotation.id, ast.literal_eval(node.value))
    return out


def test_notebook_list_is_the_reports():
    assert list(NOTEBOOKS.values()) == [s.notebook for s in STEPS]
    assert sorted(NOTEBOOKS.values()) == [p.stem for p in NOTEBOOK_FILES]


@pytest.mark.parametrize("path", NOTEBOOK_FILES, ids=lambda p: p.stem)
def test_parameters_cell_agrees_with_the_registry(path):
    cell = _parameters_cell(path)
    unknown = sorted(set(cell) - set(PARAMS))
    assert not unknown, f"{path.name}: {unknown} are not declared in clarity.params"
    for name, (annotation, default) in cell.items():
        p = PARAMS[name]
        assert path.stem in p.notebooks, f"{name}: registry's notebooks {p.notebooks} lack {path.stem}"
        assert annotation == p.type.__name__, f"{path.name}: {name}: {annotation} != registry's {p.type.__name__}"
        want = p.default_for(path.stem)
        # type too: 30 and 30.0 (or 0 and False) are not the same default
        assert (type(default), default) == (type(want), want), f"{path.name}: {name} = {default!r}, registry {want!r}"
    assert [p.name for p in notebook_params(path.stem)] == [n for n in PARAMS if n in cell]
    assert {p.name for p in notebook_params(path.stem)} == set(cell), f"{path.name}: registry lists names it lacks"


def test_every_registry_entry_is_consistent():
    assert len(PARAMS) == 85  # 78 notebook parameters and 7 keys of the report itself
    for p in PARAMS.values():
        assert p.name.isupper() and p.stage in STAGES and p.help and "\n" not in p.help, p.name
        assert set(p.notebook_defaults) <= set(p.notebooks), p.name
        for nb in p.notebooks:  # every default passes its own check (None where optional)
            if p.default_for(nb) is not None:
                assert check_value(p, p.default_for(nb)) == p.default_for(nb), p.name
        if p.choices:
            assert p.default in p.choices, p.name
    # "off" is one spelling: None, never 0.0, for optional numbers
    assert [n for n in ("MATCH_RADIUS_UM", "SCREEN_RECALL", "CELL_DIAMETER_UM") if PARAMS[n].default is not None] == []
    assert {n for n, p in PARAMS.items() if not p.notebooks} == {
        "SKIP_NOTEBOOKS", "REPORT_JOBS", "REPORT_THREADS", "COARSE", "N_BRAINS", "SYNTH_SHAPE",
            "SYNTH_DENSITY"}


def test_dataclass_defaults_agree_with_the_registry():
    from clarity.preprocess import N4Config
    from clarity.review.loop import LoopConfig
    from clarity.review.retrain import FoldLayout
    from clarity.sampling import SamplingConfig
    from clarity.synthetic import SyntheticConfig, write_dataset
    from clarity.train import TrainConfig
    from clarity.validate import SplitConfig

    def defaults(cls):
        return {f.name: f.default for f in dataclasses.fields(cls)}

    pairs = {
        TrainConfig: {"epochs": "EPOCHS", "batch_size": "BATCH_SIZE", "lr": "LR", "seed": "SEED",
                      "patience": "PATIENCE", "balance": "BALANCE", "lr_schedule": "LR_SCHEDULE"},
        SplitConfig: {"patchset": "PATCHSET", "seed": "SEED", "n_folds": "N_FOLDS", "retrain": "RETRAIN",
                      "target_precision": "TARGET_PRECISION", "match_radius_um": "MATCH_RADIUS_UM",
                      "cell_diameter_um": "CELL_DIAMETER_UM", "screen_recall": "SCREEN_RECALL",
                      "calibrate_on": "CALIBRATE_ON", "rescore": "RESCORE"},
        # background_per_pos and candidate_per_pos: the dataclass keeps the seed's protocol (0),
        # the notebook adds the extra negatives (registry 1.0 and 2.0), as its comment says
        SamplingConfig: {"patch_size": "PATCH_SIZE", "neg_per_pos": "NEG_PER_POS", "near_min": "NEAR_MIN",
                         "near_max": "NEAR_MAX", "truth_radius": "TRUTH_RADIUS", "use_review": "USE_REVIEW",
                         "seed": "SEED", "annotation_fraction": "ANNOTATION_FRACTION"},
        N4Config: {"shrink": "SHRINK", "iterations": "ITERATIONS", "levels": "LEVELS"},
        LoopConfig: {"variant": "VARIANT", "n_review": "N_REVIEW", "floor": "FLOOR", "radius": "MATCH_RADIUS",
                     "radius_um": "MATCH_RADIUS_UM", "epochs": "LOOP_EPOCHS", "seed": "SEED"},
        FoldLayout: {"n_folds": "N_FOLDS", "patchset": "PATCHSET"},
    }
    for cls, names in pairs.items():
        d = defaults(cls)
        for attr, name in names.items():
            assert d[attr] == PARAMS[name].default, f"{cls.__name__}.{attr} = {d[attr]!r}, {name} = " \
                                                    f"{PARAMS[name].default!r}"
    assert list(defaults(SyntheticConfig)["shape"]) == PARAMS["SYNTH_SHAPE"].default
    assert defaults(SyntheticConfig)["cell_density"] == PARAMS["SYNTH_DENSITY"].default
    assert inspect.signature(write_dataset).parameters["n_brains"].default == PARAMS["N_BRAINS"].default
    # the report's own defaults: COARSE on, N_FOLDS folds
    n = PARAMS["N_FOLDS"].default
    assert splits({}) == ["coarse"] * PARAMS["COARSE"].default + [f"fold{k}" for k in range(1, n + 1)]


@pytest.mark.parametrize("path", PARAM_FILES, ids=lambda p: p.name)
def test_the_shipped_parameter_files_load(path):
    params = load_params(path)
    assert params and set(params) <= set(PARAMS)


def _write(tmp_path, text: str) -> Path:
    path = tmp_path / "p.yaml"
    path.write_text(text)
    return path


def test_a_misspelled_key_names_the_file_the_key_and_the_closest_name(tmp_path):
    path = _write(tmp_path, "EPOCHS: 3\nCELL_DIAMETR_UM: auto\n")
    with pytest.raises(ClarityInputError) as err:
        load_params(path)
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg and "'CELL_DIAMETR_UM'" in msg and "CELL_DIAMETER_UM?" in msg
    assert closest_name("epochs") == "EPOCHS" and closest_name("QQQQ") is None
    with pytest.raises(ClarityInputError, match="no known name is close"):
        load_params(_write(tmp_path, "QQQQ: 1\n"))


@pytest.mark.parametrize("text, match", [
    ("EPOCHS: ten\n", r"EPOCHS: expects int, not 'ten' \(str\)"),
    ("EPOCHS: 2.5\n", "EPOCHS: expects int"),
    ("EPOCHS: null\n", "EPOCHS: null where int is expected"),
    ("EPOCHS: true\n", "EPOCHS: expects int, not True"),
    ("RESCORE: 0\n", "RESCORE: expects bool"),
    ("MATCH_RADIUS_UM: eight\n", "MATCH_RADIUS_UM: expects float"),
    ("TRAIN_BRAINS: 695_0\n", "TRAIN_BRAINS: expects str, not 6950 .*quote it"),  # YAML 1.1 reads 695_0 as 6950
    ("LR_SCHEDULE: cosin\n", "LR_SCHEDULE: expects one of 'cosine'"),
    ("SYNTH_SHAPE: [24, 80]\n", "SYNTH_SHAPE: expects 3 positive integers"),
    ("CHUNK: 64,256\n", "CHUNK: expects 3 positive integers"),
    ("CELL_DIAMETER_UM: big\n", "CELL_DIAMETER_UM: expects 1 or 3 positive numbers"),
    ("DATA_DIR: /data\n", "DATA_DIR is set by --data-dir, not by a parameter file"),
    ("SPLIT: fold2\n", "SPLIT is set by the report"),
    ("- EPOCHS\n", "must be a mapping"),
    ("EPOCHS: [1\n", "not valid YAML"),
])
def test_a_value_of_the_wrong_type_is_a_one_line_error(tmp_path, text, match):
    path = _write(tmp_path, text)
    with pytest.raises(ClarityInputError, match=match) as err:
        load_params(path)
    assert str(err.value).startswith(f"{path}: ") and "\n" not in str(err.value)


def test_values_are_taken_as_the_notebooks_take_them(tmp_path):
    path = _write(tmp_path, "LR: 3e-3\nMATCH_RADIUS_UM: 8\nSCREEN_RECALL: null\nCELL_DIAMETER_UM: [18, 7, 6.6]\n"
                            "SYNTH_SHAPE: [24, 80, 80]\nCHUNK: 32,128,128\n")
    p = load_params(path)
    assert p["LR"] == 0.003 and isinstance(p["LR"], float)  # YAML reads 3e-3 as text
    assert p["MATCH_RADIUS_UM"] == 8.0 and isinstance(p["MATCH_RADIUS_UM"], float)
    assert p["SCREEN_RECALL"] is None and p["CELL_DIAMETER_UM"] == [18, 7, 6.6]
    assert load_params(_write(tmp_path, "CELL_DIAMETER_UM: 12\n")) == {"CELL_DIAMETER_UM": 12}
    assert load_params(None) == {} and load_params(_write(tmp_path, "# nothing\n")) == {}


def test_default_for_a_notebook_of_its_own():
    p = PARAMS["EPOCHS"]
    assert p.default == 8 and p.default_for("03_train") == 8 and p.default_for(NOTEBOOKS["05"]) is None
    assert isinstance(p, Param) and not p.optional and PARAMS["MATCH_RADIUS_UM"].optional


def test_params_command_lists_every_parameter_by_stage(capsys):
    assert main(["params"]) == 0
    out = capsys.readouterr().out
    for name in PARAMS:
        assert f"  {name} " in out
    heads = [line.split(":")[0] for line in out.splitlines() if line and not line.startswith(" ")][1:]
    assert heads == list(STAGES)
    (epochs,) = [line for line in out.splitlines() if line.startswith("  EPOCHS ")]
    assert epochs.split()[1:4] == ["int", "8", "(05:"] and "[03 04a 04b 05]" in epochs
    (radius,) = [line for line in out.splitlines() if line.startswith("  MATCH_RADIUS_UM ")]
    assert radius.split()[1:4] == ["float", "um", "null"]
    assert main(["params", "--stage", "review", "--notebook", "07"]) == 0
    out = capsys.readouterr().out
    assert "  N_REVIEW " in out and "  N_GALLERY " not in out and "training:" not in out
    assert format_params(notebook="06_detect") == format_params(notebook="06")


def test_a_bad_parameter_file_ends_the_command_with_one_line(tmp_path, capsys):
    path = _write(tmp_path, "N_BRAINZ: 4\n")
    assert main(["make-data", "--data-dir", str(tmp_path / "d"), "--params", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("clarity: error: ") and "N_BRAINS?" in err
    assert not (tmp_path / "d").exists()
