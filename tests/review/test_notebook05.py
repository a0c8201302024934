"""Notebook 05 on a tiny finished report (bench/browser_check.py's ``build_report``): an
interactive run starts nothing slow and writes to a place of its own; the headless report's
settings (``OUTPUT=""``) write where the report always did; and, where Chromium, Playwright and
JupyterLab are installed, the real-browser check (skipped cleanly otherwise)."""

from __future__ import annotations

import importlib.util
import json

import nbformat
import pytest

from clarity.paths import PROJECT_ROOT

NOTEBOOK = PROJECT_ROOT / "notebooks" / "05_inspect_false_positives.ipynb"
pytestmark = [pytest.mark.slow]


def _bench():
    spec = importlib.util.spec_from_file_location(
        "clarity_browser_check", PROJECT_ROOT / "bench" / "browser_check.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _run(paths, monkeypatch, out, **params):
    import papermill as pm

    monkeypatch.setenv("CLARITY_REPORTS_ROOT", str(paths.reports_root))
    monkeypatch.setenv("CLARITY_MODELS_ROOT", str(paths.models_root))
    pm.execute_notebook(str(NOTEBOOK), str(out), cwd=str(NOTEBOOK.parent), kernel_name="python3",
                        parameters={"DATA_DIR": str(paths.data_dir), "RUN": paths.run, **params},
                        progress_bar=False, log_output=False)


@pytest.mark.notebooks
def test_interactive_run_is_quick_and_writes_apart(tmp_path, monkeypatch):
    from clarity.review import ReviewStore, default_reviewer

    bench = _bench()
    paths = bench.build_report(tmp_path, run="check")
    # as a person runs it: only DATA_DIR and RUN set, every other parameter at its default
    # (and a detections CSV of `clarity detect` to review as well)
    det = tmp_path / "detect" / "b1.csv"
    det.parent.mkdir()
    det.write_text("z,y,x,score,snr\n5,10,10,0.91,3.2\n12,20,30,0.55,2.0\n")
    _run(paths, monkeypatch, tmp_path / "interactive.ipynb", DETECTIONS=str(det),
         DETECTIONS_VOLUME=str(paths.corrected("b1")))
    out = nbformat.read(tmp_path / "interactive.ipynb", as_version=4)
    text = "".join(o.get("text", "") for c in out.cells for o in c.get("outputs", []))
    assert "2 detections of b1, by score" in text
    own = paths.reports / "interactive"
    assert {p.name for p in own.glob("05_*")} >= {"05_false_positives.png", "05_fp_table.csv",
                                                   "05_adjusted_fp.png", "05_review_metrics.json"}
    assert not list(paths.reports.glob("05_*"))  # the report's own outputs untouched
    assert not paths.models_root.exists() or not any(paths.models_root.rglob("*"))  # no retraining
    m = json.loads((own / "05_review_metrics.json").read_text())
    assert m["retrain"] is None and m["reviewer"] == default_reviewer() and m["n_items"] == 40
    assert m["output"] == str(own)

    # the headless report's settings: the report's own places, simulated reviewer named as such
    sim = paths.reports / "review_simulated.csv"
    _run(paths, monkeypatch, tmp_path / "headless.ipynb", OUTPUT="", SIMULATE_REVIEWER=True,
         REVIEW_CSV=str(sim))
    assert (paths.reports / "05_review_metrics.json").exists()
    assert (paths.reports / "05_fp_table.csv").exists()
    df = ReviewStore(sim).decisions()
    assert len(df) == 40 and set(df["reviewer"]) == {"simulated-reviewer"}
    assert not paths.review_csv.exists()  # the human store was never written


def test_browser_check(tmp_path):
    """JupyterLab + headless Chromium: run notebook 05, click, time click-to-saved, layout at
    1366 x 768 (bench/browser_check.py; ``python bench/browser_check.py`` prints the numbers)."""
    bench = _bench()
    missing = bench.missing_requirements()
    if missing:
        pytest.skip(f"browser check needs {', '.join(missing)}")
    # generous timing bound here (shared machines); the bench prints the real numbers
    res = bench.check(tmp_path / "shots", clicks=4, keep=False, max_click_ms=1000)
    assert res["ok"], res["failures"]
