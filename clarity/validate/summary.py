"""The cross-validation summary: every split's metrics in one table, means and standard
deviations over the folds, the targets, per-fold curves, the thresholds the folds chose, and
``summary.md``.

Functions read ``reports_dir`` = ``reports/<run>`` (:attr:`clarity.paths.Paths.reports`), whose
``folds/<split>/`` folders :func:`clarity.validate.run_split` wrote.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
import pandas as pd

from ..count.report import summary_section as count_summary_section
from ..evaluate import plot_curves
from ..io import atomic_write, natural_key
from .splits import split_order
from .tables import (COUNT_COLUMNS, METRIC_COLUMNS, NUMERIC_COLUMNS, SEED_RESULTS, TARGETS, VARIANTS,
                     write_csv)

__all__ = ["folds_dir", "collect_cv", "cv_table", "target_checks", "fold_curves", "plot_fold_curves",
           "write_summary", "labels_are_partial", "cv_thresholds", "cv_detection_thresholds", "fmt", "md_table"]

#: Columns of the summary's metric tables, and their headings.
SUMMARY_COLUMNS = ["f1", "precision", "recall", "roc_auc", "pr_auc", "recall_at_p95", "fp", "adjusted_fp",
                   "threshold"]
SUMMARY_NAMES = ["variant", "F1", "precision", "recall", "ROC AUC", "PR AUC", "recall @ P≥0.95 (test curve)",
                 "FP", "adjusted FP", "threshold"]


def folds_dir(reports_dir: str | os.PathLike) -> Path:
    """``reports_dir/folds``: :attr:`clarity.paths.Paths.folds_reports` of ``reports_dir``."""
    return Path(reports_dir) / "folds"


# --------------------------------------------------------------------------------------------
# tables
# --------------------------------------------------------------------------------------------
def collect_cv(reports_dir: str | os.PathLike, *, only_done: bool = True) -> pd.DataFrame:
    """Every split's ``metrics.csv`` under ``reports_dir/folds/`` in one DataFrame.

    ``reports_dir`` is ``reports/<run>``; splits without ``done.json`` are skipped unless
    ``only_done=False``. Rows are ordered coarse, fold1, fold2, ... then by variant and labels.
    """
    folds = folds_dir(reports_dir)
    frames = []
    for d in sorted(folds.glob("*"), key=lambda p: split_order(p.name)) if folds.is_dir() else []:
        if (d / "metrics.csv").exists() and (not only_done or (d / "done.json").exists()):
            frames.append(pd.read_csv(d / "metrics.csv", dtype={"test_brains": str}))
    if not frames:
        return pd.DataFrame(columns=METRIC_COLUMNS)
    return _sorted(pd.concat(frames, ignore_index=True))


def _sorted(df: pd.DataFrame) -> pd.DataFrame:
    """Rows ordered by variant (VARIANTS first), label set (annotations first), then split."""
    vorder = {v: i for i, v in enumerate(VARIANTS)}
    keys = [(vorder.get(v, 99), str(v), 0 if lab == "annotations" else 1, split_order(s))
            for v, lab, s in zip(df["variant"], df["labels"], df["split"])]
    order = sorted(range(len(df)), key=keys.__getitem__)
    return df.iloc[order].reset_index(drop=True)


def cv_table(df: pd.DataFrame, *, path: str | os.PathLike | None = None) -> pd.DataFrame:
    """Per-split rows plus ``mean`` and ``std`` rows per variant and label set.

    The mean and (sample, ddof=1) standard deviation are over the ``foldK`` rows only; the
    ``coarse`` rows (random patch split, not by brain) are kept, after the folds, but never
    averaged in. Written atomically to ``path`` (``reports/<run>/cv_metrics.csv``) if given.

    Returns
    -------
    pandas.DataFrame
        Columns :data:`METRIC_COLUMNS`; ``split`` is ``foldK``, ``mean``, ``std`` or ``coarse``.
    """
    df = df.copy()
    is_fold = df["split"].astype(str).str.fullmatch(r"fold\d+")
    folds, other = df[is_fold], df[~is_fold]
    rows = []
    for (variant, labels), g in folds.groupby(["variant", "labels"], sort=False):
        num = g[NUMERIC_COLUMNS].astype(float)
        for stat, vals in (("mean", num.mean()), ("std", num.std(ddof=1))):
            rows.append({"split": stat, "variant": variant, "labels": labels, **vals.to_dict(),
                         "test_brains": f"{len(g)} folds"})
    out = _sorted(pd.concat([folds, pd.DataFrame(rows, columns=METRIC_COLUMNS)], ignore_index=True))
    out = pd.concat([out, _sorted(other)], ignore_index=True)[METRIC_COLUMNS]
    if path is not None:
        write_csv(out, Path(path))
    return out


def target_checks(table: pd.DataFrame, *, variant: str = "cnn", targets: dict | None = None) -> pd.DataFrame:
    """Pass/fail of the targets on the cross-validated mean rows (against annotations).

    Checks: mean ROC AUC >= ``targets["roc_auc"]``; recall >= ``targets["recall"]`` at precision >=
    ``targets["precision"]`` both at the threshold chosen on inner validation (mean recall and
    mean precision) and on the test curve (mean ``recall_at_p95``, an oracle threshold; only
    meaningful for ``targets["precision"] == 0.95``); the variant beats both baselines on mean F1
    and mean PR AUC. Each check is also applied to every fold: ``folds_passed`` says in how many
    it holds (a mean can pass while single folds fail).

    Returns
    -------
    pandas.DataFrame, columns check, value, target, passed, folds_passed.
    """
    tg = {**TARGETS, **(targets or {})}
    cols = ["check", "value", "target", "passed", "folds_passed"]
    ann = table[table["labels"] == "annotations"]
    m = ann[ann["split"] == "mean"].set_index("variant")
    if variant not in m.index:
        return pd.DataFrame(columns=cols)
    folds = ann[ann["split"].astype(str).str.fullmatch(r"fold\d+")]
    per_fold = {v: g.set_index("split") for v, g in folds.groupby("variant")}
    base = [b for b in ("log", "template") if b in m.index]

    def count(test) -> str:
        f = per_fold.get(variant)
        if f is None:
            return "–"
        ok = [bool(test(f.loc[s], s)) for s in f.index]
        return f"{sum(ok)}/{len(ok)}"

    def beats(metric):
        def test(r, s):
            vals = [per_fold[b].loc[s, metric] for b in base if b in per_fold and s in per_fold[b].index]
            return bool(vals) and r[metric] > max(vals)
        return test

    r = m.loc[variant]
    rows = [
        {"check": f"{variant}: mean ROC AUC", "value": r["roc_auc"], "target": f">= {tg['roc_auc']}",
         "passed": bool(r["roc_auc"] >= tg["roc_auc"]),
         "folds_passed": count(lambda f, s: f["roc_auc"] >= tg["roc_auc"])},
        {"check": f"{variant}: mean recall at the inner-validation threshold "
                  f"(mean precision {r['precision']:.4f})",
         "value": r["recall"], "target": f">= {tg['recall']} at precision >= {tg['precision']}",
         "passed": bool(r["recall"] >= tg["recall"] and r["precision"] >= tg["precision"]),
         "folds_passed": count(lambda f, s: f["recall"] >= tg["recall"] and f["precision"] >= tg["precision"])},
        {"check": f"{variant}: mean recall at precision >= 0.95 on the test curve (oracle threshold)",
         "value": r["recall_at_p95"], "target": f">= {tg['recall']}",
         "passed": bool(r["recall_at_p95"] >= tg["recall"]),
         "folds_passed": count(lambda f, s: f["recall_at_p95"] >= tg["recall"])},
    ]
    for metric in ("f1", "pr_auc"):
        best = max((float(m.loc[b, metric]) for b in base), default=float("nan"))
        rows.append({"check": f"{variant}: mean {metric} beats both baselines", "value": r[metric],
                     "target": f"> {best:.4f} (best of {', '.join(base)})",
                     "passed": bool(base) and bool(r[metric] > best), "folds_passed": count(beats(metric))})
    return pd.DataFrame(rows, columns=cols)


# --------------------------------------------------------------------------------------------
# curves
# --------------------------------------------------------------------------------------------
def fold_curves(reports_dir: str | os.PathLike, *, variant: str, labels: str,
                splits: Sequence[str] | None = None) -> dict:
    """Labels and scores of ``variant`` per split, from ``folds/<split>/predictions.csv``.

    Returns ``{"<split> (<test brains>)": (labels int8, scores)}`` for the splits (default:
    every ``foldK`` with predictions) whose labels hold both classes; ``labels="truth"`` keeps
    the patches whose truth is known and scores them against it.
    """
    folds = folds_dir(reports_dir)
    names = splits or sorted((p.name for p in folds.glob("fold*") if (p / "predictions.csv").exists()),
                             key=split_order)
    curves = {}
    for s in names:
        f = folds / s / "predictions.csv"
        if not f.exists():
            continue
        p = pd.read_csv(f)
        p = p[p["variant"] == variant]
        if labels == "truth":
            p = p[p["truth"] >= 0]
            y = p["truth"].to_numpy()
        else:
            y = p["label"].to_numpy()
        if len(p) and 0 < y.sum() < len(y):
            tb = ",".join(sorted(set(p["brain"]), key=natural_key)) if s != "coarse" else "random 25%"
            curves[f"{s} ({tb})"] = (y.astype(np.int8), p["score"].to_numpy())
    return curves


def plot_fold_curves(reports_dir: str | os.PathLike, *, kind: Literal["roc", "pr"] = "roc",
                     variant: str = "cnn", labels: Literal["annotations", "truth"] = "annotations",
                     splits: Sequence[str] | None = None, ax=None, title: str | None = None):
    """ROC or precision-recall curves of every fold in one axis (the seed's Figures 6 and 8).

    Reads ``reports_dir/folds/<split>/predictions.csv`` (default: every ``foldK``), takes the
    rows of ``variant`` and scores them against the annotation labels or, with
    ``labels="truth"``, against the complete truth (patches whose truth is known).

    Returns
    -------
    matplotlib Axes (see :func:`clarity.evaluate.plot_curves`).
    """
    curves = fold_curves(reports_dir, variant=variant, labels=labels, splits=splits)
    if title is None:
        what = "ROC" if kind == "roc" else "precision-recall"
        title = f"{what} per fold: {variant} vs {labels}"
    return plot_curves(curves, kind=kind, ax=ax, title=title)


# --------------------------------------------------------------------------------------------
# markdown
# --------------------------------------------------------------------------------------------
def fmt(v, digits: int = 3) -> str:
    """A number for a markdown table: integers as such, floats with ``digits`` decimals, "–" for
    None, NaN and inf."""
    if v is None or (isinstance(v, (float, np.floating)) and not np.isfinite(v)):
        return "–"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    return f"{float(v):.{digits}f}"


def _fmt_col(col: str, v) -> str:
    """Counts as integers, other metrics with 3 decimals."""
    if isinstance(v, str):
        return v
    return fmt(v, 0) if col in COUNT_COLUMNS else fmt(v)


def md_table(df: pd.DataFrame, columns: Sequence[str], *, names: Sequence[str] | None = None) -> str:
    """``df[columns]`` as a markdown table headed ``names`` (default ``columns``); counts
    (:data:`COUNT_COLUMNS`) as integers, other numbers with 3 decimals."""
    names = names or columns
    lines = ["| " + " | ".join(names) + " |", "|" + "---|" * len(columns)]
    for _, r in df.iterrows():
        lines.append("| " + " | ".join(_fmt_col(c, r[c]) for c in columns) + " |")
    return "\n".join(lines)


def _mean_std_section(table: pd.DataFrame, labels: str, heading: str, seed_res: dict | None) -> list[str]:
    """Mean ± std over the folds per variant against ``labels``; the seed's row if ``seed_res``."""
    cols = SUMMARY_COLUMNS
    mean = table[(table["split"] == "mean") & (table["labels"] == labels)].copy()
    std = table[(table["split"] == "std") & (table["labels"] == labels)].set_index("variant")
    if mean.empty:
        return [f"## {heading}", "", "(no finished folds)", ""]
    rows = []
    for _, r in mean.iterrows():
        row = {"variant": r["variant"]}
        for c in cols:
            s = std.loc[r["variant"], c] if r["variant"] in std.index else float("nan")
            d = 1 if c in COUNT_COLUMNS else 3
            row[c] = f"{fmt(r[c], d)} ± {fmt(s, d)}"
        rows.append(row)
    if seed_res is not None:
        rows.append({"variant": "seed report (CNN)", **{c: fmt(seed_res[c]) if c in seed_res else "–"
                                                      for c in cols}})
    return [f"## {heading}", "", md_table(pd.DataFrame(rows), ["variant", *cols], names=SUMMARY_NAMES), ""]


def _targets_section(table: pd.DataFrame, tg: dict) -> list[str]:
    checks = []
    for v in ("cnn", "cnn_retrained"):
        c = target_checks(table, variant=v, targets=tg)
        if len(c):
            checks.append(c)
    if not checks:
        return []
    c = pd.concat(checks, ignore_index=True)
    c["result"] = np.where(c["passed"], "**PASS**", "FAIL")
    c["value"] = c["value"].map(lambda v: fmt(v, 4))
    return ["## Targets (on the mean over folds; and in how many single folds)", "",
            md_table(c, ["check", "value", "target", "result", "folds_passed"],
                     names=["check", "value", "target", "mean", "folds passing"]), ""]


def _retraining_section(reports_dir: Path, *, partial: bool | None = True) -> list[str]:
    """Mined hard examples per split (from done.json): how many "false positives" are real cells."""
    rows = []
    for d in sorted(folds_dir(reports_dir).glob("*"), key=lambda p: split_order(p.name)):
        f = d / "done.json"
        if not f.exists():
            continue
        h = json.loads(f.read_text()).get("hard_examples") or {}
        if "hard_fp" in h:
            frac = h.get("hard_fp_true_cells", 0) / h["hard_fp"] if h["hard_fp"] else float("nan")
            true_cells = (f"{h.get('hard_fp_true_cells', 0)} ({fmt(100 * frac, 0)} %)" if partial is not None
                          else "– (no truth/)")
            rows.append(f"| {d.name} | {h['hard_fp']} | {true_cells} | {h.get('hard_fn', 0)} |")
    if not rows:
        return []
    return ["## Hard examples mined for retraining (fitting brains only)", "",
            "| split | mined false positives | of which true cells (truth) | re-added false negatives |",
            "|---|---|---|---|", *rows, "",
            "A mined \"false positive\" is a high-scoring location >= 6 voxels from every annotation. "
            + ("With partial annotations most of them are unannotated real cells, so retraining on them "
               "teaches the model to reject real cells; " if partial is not False else "")
            + "compare `cnn_retrained` with `cnn` above.", ""]


def _split_sections(table: pd.DataFrame) -> list[str]:
    """The coarse split's rows (Table 1) and the CNN per fold, against annotations."""
    cols, names, out = SUMMARY_COLUMNS, SUMMARY_NAMES, []
    coarse = table[(table["split"] == "coarse") & (table["labels"] == "annotations")]
    if len(coarse):
        out += ["## Coarse split: random 25 % of the patches, all brains on both sides (Table 1)", "",
                md_table(coarse, ["variant", *cols], names=names),
                "", "Patches of the same brains are trained and tested on, so these numbers are "
                    "optimistic; the cross-validation above is the honest estimate.", ""]
    per_fold = table[table["split"].astype(str).str.fullmatch(r"fold\d+") & (table["labels"] == "annotations")
                     & (table["variant"] == "cnn")]
    if len(per_fold):
        out += ["## CNN per fold, against annotations", "",
                md_table(per_fold, ["split", "test_brains", *cols],
                         names=["split", "test brains", *names[1:]]), ""]
    return out


def _links_section(final_model: str | None, figures: Sequence[str], notebooks: Sequence[str]) -> list[str]:
    out = []
    if final_model:
        out += [f"Final model (all brains, threshold = mean of the fold thresholds): `{final_model}`", ""]
    if figures:
        out += ["## Figures", ""] + [f"* [{f}]({f})" for f in figures] + [""]
    if notebooks:
        out += ["## Notebooks", ""] + [f"* [{n}]({n})" for n in notebooks] + [""]
    return out


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text()) if path.exists() else None
    except (OSError, ValueError):
        return None


def labels_are_partial(table: pd.DataFrame) -> bool | None:
    """Whether the training labels are partial annotations of complete labels (``truth/``): True
    when the cross-validation scored against the truth differs from the same against the
    annotations, False when both agree (the annotations are the complete labels), None without
    truth rows (no complete labels: the annotations are all there is)."""
    folds = table[table["split"].astype(str).str.fullmatch(r"fold\d+")]
    ann = folds[folds["labels"] == "annotations"].set_index(["split", "variant"])
    tru = folds[folds["labels"] == "truth"].set_index(["split", "variant"])
    if tru.empty or tru["f1"].isna().all():
        return None
    common = ann.index.intersection(tru.index)
    cols = ["tp", "fp", "fn"] if {"tp", "fp", "fn"} <= set(folds.columns) else ["f1", "precision", "recall"]
    a = ann.loc[common, cols].astype(float).to_numpy()
    t = tru.loc[common, cols].astype(float).to_numpy()
    return not np.allclose(a, t, equal_nan=True)


def _detection_section(reports_dir: Path) -> list[str]:
    """Held-out detection per brain (notebook 06): what a lab came for."""
    f = reports_dir / "06_counts_per_brain.csv"
    if not f.exists():
        return []
    df = pd.read_csv(f, dtype={"brain": str, "group": str})
    if df.empty:
        return []
    df["group"] = df["group"].fillna(df["brain"]) if "group" in df else df["brain"]
    out = ["## Held-out detection per brain", "",
           "Every brain counted whole by the model of the fold that never trained on it (notebook 06); "
           "detections matched one-to-one to the labelled cells.", ""]
    complete = "n_true" in df and df["n_true"].notna().all()
    rows = []
    for (group, method), g in df.groupby(["group", "method"], sort=False):
        r = {"brain": group, "method": method, "volumes": len(g), "detected": int(g.n_detected.sum())}
        if complete:
            tp, n_true = int(g.tp.sum()), int(g.n_true.sum())
            p, rc = tp / max(int(g.n_detected.sum()), 1), tp / max(n_true, 1)
            r.update({"labelled": n_true, "count error": f"{100 * (r['detected'] / max(n_true, 1) - 1):+.1f} %",
                      "precision": p, "recall": rc, "F1": 2 * tp / max(r["detected"] + n_true, 1)})
            if "estimated_count" in g and g.estimated_count.notna().all():
                r["estimated count"] = f"{g.estimated_count.sum():.0f} ({100 * (g.estimated_count.sum() / max(n_true, 1) - 1):+.1f} %)"
        elif "n_annotated" in g:
            r.update({"annotated": int(g.n_annotated.sum()),
                      "annotated found (recall)": float(g.annotated_found.sum() / max(g.n_annotated.sum(), 1))})
        rows.append(r)
    tab = pd.DataFrame(rows)
    cols = list(tab.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in tab.iterrows():
        lines.append("| " + " | ".join(fmt(v) if isinstance(v, float) else str(v) for v in r[cols]) + " |")
    out += lines + [""]
    if complete:
        tot = df.groupby("method", sort=False)[["tp", "n_true", "n_detected"]].sum()
        out += ["Pooled over the held-out brains: " + "; ".join(
            f"{m} F1 {fmt(2 * r.tp / max(r.n_detected + r.n_true, 1))}, {int(r.n_detected):,} detected for "
            f"{int(r.n_true):,} labelled ({100 * (r.n_detected / max(r.n_true, 1) - 1):+.1f} %)"
            for m, r in tot.iterrows()) + ".", ""]
    else:
        out += ["The held-out brains have annotations only (no `truth/`): precision, F1 and count error need "
                "complete labels, so only the count and the share of annotated cells found are given.", ""]
    return out


def _review_loop_section(reports_dir: Path) -> list[str]:
    """Notebook 07: the review loop's pooled result, or the one line saying why it did not run."""
    s = _read_json(reports_dir / "07_loop_summary.json")
    if s is None:
        return []
    if s.get("skipped"):
        return ["## Review loop (notebook 07)", "", f"Skipped: {s['skipped']}.", ""]
    f1 = s.get("f1_test_pooled") or {}
    return ["## Review loop (notebook 07)", "",
            f"{s.get('n_review')} detections of each fold's review brain reviewed "
            f"({'simulated reviewer' if s.get('simulated_reviewer') else 'a person'}); pooled F1 on the held-out "
            "brains: " + ", ".join(f"{k} {fmt(v)}" for k, v in f1.items()) + f". Count intervals covered the "
            f"labelled cells among the detections in {s.get('count_interval_covers_among_detections')} of "
            f"{s.get('count_intervals')} folds. See `07_loop_*.csv`.", ""]


def _notes_section(reports_dir: Path) -> list[str]:
    """One line per step that did not apply to this data root (``*_skipped`` in the notebooks' metrics)."""
    out = []
    for name in ("05_review_metrics.json", "06_detect_metrics.json"):
        m = _read_json(reports_dir / name) or {}
        for k, v in m.items():
            if k.endswith("skipped") and v:
                out.append(f"* {name.split('_')[0]}: {v}")
    return (["## Steps that did not apply to this data root", "", *out, ""]) if out else []


def _timings_section(reports_dir: Path) -> list[str]:
    """Seconds per notebook of the last ``make report`` (``timings.csv``, written by the pipeline)."""
    t = pd.read_csv(reports_dir / "timings.csv") if (reports_dir / "timings.csv").exists() else pd.DataFrame()
    if t.empty:
        return []
    lines = ["## Seconds per notebook", "", "| notebook | seconds |", "|---|---|"]
    lines += [f"| {r.step} | {r.seconds:.0f} |" for r in t.itertuples()]
    lines += [f"| **all** | **{t.seconds.sum():.0f}** |", ""]
    wall = float((t.started + t.seconds).max() - t.started.min()) if "started" in t else float("nan")
    if wall < t.seconds.sum() - 1:  # NaN (no start times) compares False
        lines += [f"Side by side where their order allows (`REPORT_JOBS`): {wall:.0f} s from first start to last end.", ""]
    return lines


def write_summary(reports_dir: str | os.PathLike, *, table=None, run: str | None = None,
                  review_labels_used: bool = False, figures: Sequence[str] | None = None,
                  notebooks: Sequence[str] | None = None, final_model: str | None = None,
                  targets: dict | None = None, seed_results: dict | None = None,
                  path: str | os.PathLike | None = None) -> Path:
    """Write ``reports/<run>/summary.md``: the page a person reads first.

    It leads with what a lab came for, the held-out detection per brain (notebook 06: count
    against the labels, precision, recall, F1), then the cross-validation of patches (Table 2),
    then the rest; a section whose inputs this run did not produce (or that does not apply to
    the data root: the complete-truth table when the annotations are the complete labels, the
    review loop without complete labels) is left out or reduced to the one line saying why.
    Notebook 04b writes it, and ``make report`` writes it again after the last notebook (with
    the seconds per notebook).

    Parameters
    ----------
    reports_dir : path
        ``reports/<run>``.
    table : pandas.DataFrame, optional
        :func:`cv_table` output (default: computed from :func:`collect_cv`).
    run : str, optional
        Run name for the title (default: the folder name).
    review_labels_used : bool
        Whether the patch set used review labels (``PatchSet.meta["review_labels_used"]``).
    figures, notebooks : sequences of str, optional
        File names (relative to ``reports_dir``) to link (default: the ``cv_*.png`` figures and
        every executed notebook there).
    final_model : str, optional
        Path of the final model to mention.
    targets, seed_results : dict, optional
        Default :data:`TARGETS`, :data:`SEED_RESULTS`.
    path : path, optional
        Default ``reports_dir/summary.md``.
    """
    reports_dir = Path(reports_dir)
    table = cv_table(collect_cv(reports_dir)) if table is None else table
    tg = {**TARGETS, **(targets or {})}
    seed_res = {**SEED_RESULTS, **(seed_results or {})}
    run = run or reports_dir.name
    if figures is None:
        figures = sorted(p.name for p in reports_dir.glob("cv_*.png"))
    if notebooks is None:
        notebooks = sorted((p.name for p in reports_dir.glob("*.ipynb")), key=natural_key)
    partial = labels_are_partial(table)
    labels_used = "annotations" + (" + review" if review_labels_used else "")
    kind = {True: "partial annotations of complete labels (`truth/`)",
            False: "complete labels (the annotations are every cell)",
            None: "annotations only (no `truth/`: nothing here is scored against complete labels)"}[partial]
    out = [f"# clarity summary — run `{run}`", "", f"Labels of this data root: {kind}.", ""]
    out += _detection_section(reports_dir)
    out += count_summary_section(reports_dir)  # notebook 08: a brain's count from its own review
    n_folds = table.loc[table["split"].astype(str).str.fullmatch(r"fold\d+"), "split"].nunique()
    out += _mean_std_section(table, "annotations", "Cross-validated patches, mean ± std, against annotations "
                                                   "(Table 2)", seed_res)
    out += [f"Training labels: **{labels_used}**. Cross-validation by brain, {n_folds} folds (each fold "
            "tests brains never trained on); every threshold is the lowest reaching precision "
            f"{tg['precision']} on an inner-validation brain (never on the test brains). "
            "`recall @ P≥0.95 (test curve)` uses the best threshold on the test patches themselves: "
            "an optimistic figure, shown for comparison with the target.", ""]
    out += _targets_section(table, tg)
    if partial:
        out += _mean_std_section(table, "truth", "Cross-validated patches, mean ± std, against the complete "
                                                 "truth", None)
    out += _retraining_section(reports_dir, partial=partial)
    out += _review_loop_section(reports_dir)
    out += _notes_section(reports_dir)
    out += _split_sections(table)
    out += _timings_section(reports_dir)
    out += _links_section(final_model, figures, notebooks)
    out += ["Columns: FP / adjusted FP count test patches predicted cell but not annotated / of those, "
            "the ones holding no true cell (complete labels only)."
            + (" Metrics against the truth score the same patches against complete truth (a true cell "
               "centre within the truth radius of the patch centre)." if partial else ""), ""]
    path = Path(path) if path is not None else reports_dir / "summary.md"
    with atomic_write(path) as tmp:
        tmp.write_text("\n".join(out))
    return path


# --------------------------------------------------------------------------------------------
# thresholds the folds chose
# --------------------------------------------------------------------------------------------
def cv_thresholds(reports_dir: str | os.PathLike, *, variant: str = "cnn") -> dict[str, float]:
    """The threshold each finished fold chose for ``variant`` (from its ``metrics.csv``)."""
    df = collect_cv(reports_dir)
    df = df[df["split"].astype(str).str.fullmatch(r"fold\d+") & (df["variant"] == variant)
            & (df["labels"] == "annotations")]
    return {str(r["split"]): float(r["threshold"]) for _, r in df.iterrows()}


def cv_detection_thresholds(reports_dir: str | os.PathLike, *, variant: str = "cnn") -> dict[str, float]:
    """The whole-volume detection threshold each finished fold calibrated for ``variant``: from
    the calibration file beside the fold's model (the model path its ``done.json`` records; see
    :func:`clarity.model.read_calibration`); folds without one are left out. A calibration file
    of other weights than the model's raises :class:`clarity.io.ClarityInputError`."""
    from ..model import read_calibration

    out = {}
    for done in sorted(folds_dir(reports_dir).glob("fold*/done.json"),
                       key=lambda p: natural_key(p.parent.name)):
        try:
            info = json.loads(done.read_text())
        except (OSError, ValueError):
            continue
        model = (info.get("model_paths") or {}).get(variant)
        cal = read_calibration(model) if model and Path(model).is_file() else None
        if cal is not None and cal["detection_threshold"] is not None:
            out[done.parent.name] = float(cal["detection_threshold"])
    return out
