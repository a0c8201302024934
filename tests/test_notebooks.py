"""Every notebook runs headless through papermill on tiny data (notebooks/params/smoke.yaml),
exactly as `make report` runs them: the pipeline is tested end to end, not just its parts."""

from __future__ import annotations

import json

import nbformat
import pandas as pd
import pytest

from clarity import pipeline
from clarity.paths import PROJECT_ROOT, Paths
from clarity.review import loop

SMOKE = PROJECT_ROOT / "notebooks" / "params" / "smoke.yaml"
pytestmark = [pytest.mark.slow, pytest.mark.notebooks]


@pytest.fixture(scope="session")
def smoke_report(tmp_path_factory):
    root = tmp_path_factory.mktemp("smoke")
    paths = Paths(data_dir=root / "data", run="smoke", models_root=root / "models", reports_root=root / "reports")
    rc = pipeline.run_report(paths, seed=0, params_file=SMOKE, progress=False)
    return paths, rc


def test_source_notebooks_are_clean_and_parameterised():
    for nb_path in sorted((PROJECT_ROOT / "notebooks").glob("*.ipynb")):
        nb = nbformat.read(nb_path, as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert all(not c.get("outputs") and c.get("execution_count") is None for c in code), nb_path.name
        ids = [c.get("id") for c in nb.cells]  # nbformat 4.5: every cell an id, unique (else a warning per run)
        assert all(ids) and len(set(ids)) == len(ids), f"{nb_path.name}: cells without an id or with a repeated one"
        tagged = [c for c in code if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1, f"{nb_path.name}: needs exactly one cell tagged 'parameters'"
        for key in ("DATA_DIR", "RUN", "SEED"):
            assert key in tagged[0].source, f"{nb_path.name}: parameters cell lacks {key}"
        # papermill must parse every parameter line, or the pipeline silently never passes it
        import re

        import papermill as pm

        names = {ln.split(":")[0].strip() for ln in tagged[0].source.splitlines() if re.match(r"^[A-Z_0-9]+\s*:", ln)}
        assert names == set(pm.inspect_notebook(str(nb_path))), f"{nb_path.name}: unparseable parameter line"


def test_smoke_report_runs_every_notebook(smoke_report):
    paths, rc = smoke_report
    assert rc == 0
    for step in pipeline.STEPS:
        if not (pipeline.NOTEBOOK_DIR / f"{step.notebook}.ipynb").exists():
            continue
        outs = sorted(paths.reports.glob(f"{step.notebook}*.ipynb"))
        assert outs, f"no executed copy of {step.notebook}"
        for out in outs:
            nb = nbformat.read(out, as_version=4)
            assert nb.metadata["papermill"]["parameters"]["DATA_DIR"] == str(paths.data_dir)
            errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
            assert not errors, f"{out.name}: {errors[:1]}"
    # the sources were never overwritten
    for nb_path in (PROJECT_ROOT / "notebooks").glob("*.ipynb"):
        assert not any(c.get("outputs") for c in nbformat.read(nb_path, as_version=4).cells)


def test_smoke_report_outputs(smoke_report):
    paths, _ = smoke_report
    assert paths.corrected("brain01").exists()
    assert paths.patchset().exists()
    m = json.loads((paths.reports / "01_preprocess_metrics.json").read_text())
    assert m["cv_after_mean"] < m["cv_before_mean"]
    if (pipeline.NOTEBOOK_DIR / "04b_cv_summary.ipynb").exists():
        cv = pd.read_csv(paths.reports / "cv_metrics.csv")
        assert {"cnn", "log", "template"} <= set(cv.variant)
        assert (paths.reports / "summary.md").exists()
        assert (paths.models / "final.pt").exists()
        # calibrations beside the weights, each of the weights there (load_model checks the sha256)
        from clarity.model import load_model

        assert load_model(paths.models / "final.pt", device="cpu").calibration_path == \
            paths.models / "final.calibration.json"
        radii = []
        for split in ("fold1", "fold2"):
            m = load_model(paths.fold_model(split, "cnn"), device="cpu")
            assert m.detection_threshold is not None
            assert sorted(m.provenance["nms_f1"]) == ["4", "6", "9"]  # NMS_SEARCH of smoke.yaml
            assert m.detection_config["nms_saddle"] == 0.5 and "dip below 0.5" in m.provenance["nms_rule"]
            radii.append(m.detection_config["nms_radius"])
        assert set(radii) <= {4.0, 6.0, 9.0}
        final = load_model(paths.models / "final.pt", device="cpu")
        assert final.detection_config["nms_saddle"] == 0.5
        # notebook 06 stored the held-out brains' count spread beside the final model's weights
        from clarity.count.spread import spread_of_model

        spread = spread_of_model(final, rescored=True)
        by_brain = pd.read_csv(paths.reports / "06_counts_per_brain.csv")
        cnn = by_brain[by_brain.method == "CNN (cnn)"]
        assert spread["k"] == len(cnn) and spread["per_brain"] == pytest.approx(
            dict(zip(cnn.brain, cnn.estimated_count_error)))
    # notebook 06 keeps every held-out candidate; notebook 08 counts each brain from simulated reviews
    index = pd.read_csv(paths.reports / "06_candidates" / "index.csv")
    assert len(index) == 8 and (index.n_candidates >= index.n_detected).all()
    if (pipeline.NOTEBOOK_DIR / "08_count_new_brain.ipynb").exists():
        sim = pd.read_csv(paths.reports / "08_count_summary.csv")
        assert set(sim.n_review) == {10, 20} and set(sim.brain) == set(index.group.astype(str))
        assert (sim.seeds == 3).all() and sim.coverage.between(0, 1).all()
        summary = (paths.reports / "summary.md").read_text()
        assert "## A brain counted from a review of its own candidates" in summary
        assert "Without a review, a new brain's cells lie within these factors" in summary  # notebook 06's spread


def test_rerun_resumes_finished_splits(smoke_report):
    paths, _ = smoke_report
    if not (pipeline.NOTEBOOK_DIR / "04a_validate_fold.ipynb").exists():
        pytest.skip("validation notebook not present")
    done = paths.reports / "folds" / "fold1" / "done.json"
    before = done.stat().st_mtime_ns
    rc = pipeline.run_report(paths, seed=0, params_file=SMOKE, only=["04a_validate_fold"], progress=False)
    assert rc == 0
    assert done.stat().st_mtime_ns == before  # not redone


def test_smoke_report_review_loop(smoke_report):
    """Notebook 07 headless: a simulated review of every fold's review brain, kept apart from the
    human store, a fine-tuned and recalibrated model per fold, before/after rows per held-out brain."""
    paths, _ = smoke_report
    scores = pd.read_csv(paths.reports / "07_loop_scores.csv")
    folds = sorted(set(scores.split))
    assert folds == [f"fold{k}" for k in range(1, 5)]
    assert set(scores.model) == set(loop.LOOP_MODELS)
    for split, g in scores.groupby("split"):
        done = json.loads((paths.reports / "folds" / split / "done.json").read_text())["params"]
        test_brains = set(done["test_brains"])
        assert set(g[g.role == "test"].brain) == test_brains         # scored on the held-out brains
        assert set(g[g.role == "reviewed"].brain) == set(done["val_brains"])
        assert not (set(g[g.role == "reviewed"].brain) & test_brains)  # never reviewed the test brain
        assert paths.fold_model(split, "cnn_review_loop").exists()
        # the loop's recalibration beside the fine-tuned weights, whose sha256 it records
        from clarity.model import calibration_path, read_calibration

        tuned = paths.fold_model(split, "cnn_review_loop")
        assert calibration_path(tuned).exists() and read_calibration(tuned)["provenance"]["review_loop"]
    reviewed = pd.read_csv(paths.reports / "07_loop_reviewed.csv")
    assert set(reviewed.use) == {"train", "calibrate"}
    store = pd.read_csv(paths.reports / "07_review_simulated.csv")
    assert set(store.reviewer) == {"simulated-reviewer"}
    assert not paths.review_csv.exists()  # the human store untouched
    counts = pd.read_csv(paths.reports / "07_loop_counts.csv")
    assert (counts.ci_low <= counts.estimated_count).all() and (counts.estimated_count <= counts.ci_high).all()
    summary = json.loads((paths.reports / "07_loop_summary.json").read_text())
    assert summary["simulated_reviewer"] is True and set(summary["f1_gain_per_test_brain"]) == set(
        scores[scores.role == "test"].brain)


def test_review_loop_interactive_starts_nothing_slow(smoke_report, tmp_path, monkeypatch):
    """Notebook 07 as a person opens it: the gallery of the review brain's detections, nothing
    fine-tuned, nothing written over the report's own outputs."""
    import papermill as pm

    paths, _ = smoke_report
    monkeypatch.setenv("CLARITY_REPORTS_ROOT", str(paths.reports_root))
    monkeypatch.setenv("CLARITY_MODELS_ROOT", str(paths.models_root))
    before = (paths.reports / "07_loop_scores.csv").stat().st_mtime_ns
    nb = pipeline.NOTEBOOK_DIR / "07_review_loop.ipynb"
    pm.execute_notebook(str(nb), str(tmp_path / "07.ipynb"), cwd=str(nb.parent), kernel_name="python3",
                        parameters={"DATA_DIR": str(paths.data_dir), "RUN": paths.run},
                        progress_bar=False, log_output=False)
    own = paths.reports / "interactive"
    assert (own / "07_review_scores.png").exists() and not (own / "07_loop_scores.csv").exists()
    assert not (paths.models / "interactive").exists()  # nothing fine-tuned
    assert (paths.reports / "07_loop_scores.csv").stat().st_mtime_ns == before
    out = nbformat.read(tmp_path / "07.ipynb", as_version=4)
    text = "".join(o.get("text", "") for c in out.cells for o in c.get("outputs", []))
    assert "RUN_LOOP is False" in text
    assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {})
               for c in out.cells for o in c.get("outputs", []))  # the gallery was built


def test_review_loop_uses_a_persons_decisions(smoke_report, tmp_path):
    """run_loop without the simulated reviewer: only the decisions already in the store count."""
    from clarity.labels import ReviewStore

    paths, _ = smoke_report
    cfg = loop.LoopConfig(n_review=30, epochs=1, fine_tune=True)
    items = loop.loop_items(paths, "fold1", config=cfg)
    truth = {b: paths_truth for b, paths_truth in
             ((b, pd.read_csv(paths.truth_csv(b))[["z", "y", "x"]].to_numpy()) for b in set(items.brain))}
    store = ReviewStore(tmp_path / "person.csv")
    from clarity.review import simulate_review

    decided = items.head(20)  # the person stopped after 20 of the 30
    simulate_review(decided, truth, store=store, radius=6.0, model="by-hand")
    res = loop.run_loop(paths, "fold1", store=store, out_dir=tmp_path / "tuned", config=cfg)
    assert len(res.reviewed) == 20 and res.count.n_reviewed == 20
    assert len(pd.read_csv(store.path)) == 20  # nothing written by the loop itself
    assert res.model_path.exists() and res.recalibration.n_reviewed <= 20


def test_real_planes_section_counts_with_the_decoy_gate(smoke_report, tmp_path, monkeypatch):
    """Notebook 06's unannotated-planes section: a folder of planes of another voxel size is
    corrected, detected at the final model's grid with its mirrored decoy, and gated at the
    model's threshold or the decoy FDR; cells come back in the planes' own voxels."""
    import shutil

    import numpy as np
    import papermill as pm
    import tifffile

    from clarity.synthetic import make_brain

    paths, _ = smoke_report
    planes = tmp_path / "planes"
    planes.mkdir()
    vol = make_brain(11, shape=(12, 64, 56), cell_density=4e-4).volume
    for i, p in enumerate(vol):
        tifffile.imwrite(planes / f"plane_{i:03d}.tif", p)
    reports_root = tmp_path / "reports"
    shutil.copytree(paths.reports, reports_root / paths.run)
    monkeypatch.setenv("CLARITY_REPORTS_ROOT", str(reports_root))
    monkeypatch.setenv("CLARITY_MODELS_ROOT", str(paths.models_root))
    nb = pipeline.NOTEBOOK_DIR / "06_detect.ipynb"
    pm.execute_notebook(str(nb), str(tmp_path / "06.ipynb"), cwd=str(nb.parent), kernel_name="python3",
                        parameters={"DATA_DIR": str(paths.data_dir), "RUN": paths.run, "REAL_DIR": str(planes),
                                    "REAL_COUNT": True,
                                    "REAL_VOXEL_UM": "4,2,2", "REAL_FDR": 0.2, "LOG_BASELINE": False},
                        progress_bar=False, log_output=False)
    out = reports_root / paths.run
    metrics = json.loads((out / "06_detect_metrics.json").read_text())
    assert metrics["real_voxel_um"] == [4.0, 2.0, 2.0] and metrics["real_fdr"] == 0.2
    cells = pd.read_csv(out / "06_real_cells.csv")
    assert len(cells) == metrics["real_count"]
    assert ((cells[["z", "y", "x"]].to_numpy() >= 0).all()
            and (cells[["z", "y", "x"]].to_numpy() < np.array(vol.shape)).all())  # the planes' voxels
    assert metrics["real_threshold"] is None or metrics["real_threshold"] >= metrics["real_model_threshold"]
    assert 0 <= metrics["real_estimated_cells"] <= metrics["real_count"]
    assert (out / "06_real_decoy.png").exists() and (out / "06_real_detections.png").exists()
    assert (paths.data_dir / "interim" / "real_planes_corrected.npy").exists()


def test_review_loop_keeps_the_threshold_when_the_review_cannot_calibrate(smoke_report, tmp_path):
    """A review whose calibration share holds no non-cell (a brain with few spurious detections,
    or few cells) cannot calibrate a threshold: the loop keeps the model's own, says why, and
    finishes the fold instead of failing the report."""
    from clarity.labels import ReviewStore

    paths, _ = smoke_report
    cfg = loop.LoopConfig(n_review=30, epochs=1, fine_tune=True)
    items = loop.loop_items(paths, "fold1", config=cfg).head(20)
    store = ReviewStore(tmp_path / "person.csv")
    decisions = ["cell"] * len(items)
    decisions[0] = "not_cell"  # one non-cell only: the 30 % calibration share misses it
    store.record_many([(it.brain, (it.z, it.y, it.x), d) for (_, it), d in zip(items.iterrows(), decisions)],
                      reviewer="by-hand")
    res = loop.run_loop(paths, "fold1", store=store, out_dir=tmp_path / "tuned", config=cfg)
    assert isinstance(res.recalibration, loop.NoRecalibration)
    assert "cannot calibrate" in res.recalibration.note
    from clarity.model import load_model
    tuned = load_model(res.model_path, device="cpu")
    assert tuned.count_factor is None and tuned.provenance["review_loop"]["recalibration"]["recalibrated"] is False
    assert set(res.scores.model) == set(loop.LOOP_MODELS)


def test_report_runs_on_a_root_with_annotations_only(tmp_path):
    """A lab's usual root: annotations only, no truth/ (data/README.md). Every notebook runs to the
    end; the steps that need complete labels (the headless review loop) say so, in the notebook and
    in summary.md, and the report exits 0."""
    import shutil

    import yaml

    from clarity.synthetic import write_dataset

    params = yaml.safe_load(SMOKE.read_text())
    root = tmp_path / "data"
    write_dataset(root, n_brains=4, seed=3, progress=False, shape=tuple(params["SYNTH_SHAPE"]),
                  cell_density=float(params["SYNTH_DENSITY"]))
    shutil.rmtree(root / "truth")
    smoke = tmp_path / "smoke.yaml"
    # with the dense network too: it trains on the annotations and is scored against them
    smoke.write_text(yaml.safe_dump({**params, "N_BRAINS": 4, "COARSE": False, "DENSE_NETWORK": True,
                                     "DENSE_STEPS": 20}))
    paths = Paths(data_dir=root, run="mine", models_root=tmp_path / "models", reports_root=tmp_path / "reports")
    assert pipeline.run_report(paths, seed=0, params_file=smoke, progress=False) == 0
    for step in pipeline.STEPS:
        for out in sorted(paths.reports.glob(f"{step.notebook}*.ipynb")):
            nb = nbformat.read(out, as_version=4)
            assert not [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"], out
    nb07 = nbformat.read(paths.reports / "07_review_loop.ipynb", as_version=4)
    text = "".join(o.get("text", "") for c in nb07.cells for o in c.get("outputs", []))
    assert "review loop skipped: the review loop needs complete labels" in text
    nb04 = nbformat.read(paths.reports / "04a_validate_fold_fold1.ipynb", as_version=4)
    text = "".join(o.get("text", "") for c in nb04.cells for o in c.get("outputs", []))
    assert "NMS not searched: the labels of" in text and "are annotations, not complete" in text
    nb06 = nbformat.read(paths.reports / "06_detect.ipynb", as_version=4)
    text = "".join(o.get("text", "") for c in nb06.cells for o in c.get("outputs", []))
    assert "no count spread (it needs complete labels" in text
    summary = (paths.reports / "summary.md").read_text()
    assert "annotations only" in summary and "Skipped: the review loop needs complete labels" in summary
    assert "against the complete truth" not in summary  # no truth: that table does not apply
    assert "Skipped: the simulated reviewer needs complete labels" in summary  # notebook 08
    assert summary.index("## Held-out detection per brain") < summary.index("(Table 2)")
    assert "## Seconds per notebook" in summary
    assert "| U-Net |" in summary
    assert len(list(paths.models.glob("fold*/unet/model.pt"))) == int(params.get("N_FOLDS", 4))  # one per fold
