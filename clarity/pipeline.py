"""The headless report: build the data if needed, then run the numbered notebooks with papermill.

Executed copies go to ``reports/<run>/`` (never over the sources). Parameters are passed by
papermill (no editing of notebooks): ``DATA_DIR``, ``RUN`` and ``SEED`` always, plus any value of an
optional YAML parameter file (every key checked against :mod:`clarity.params` by :func:`load_params`)
whose key the notebook declares in its ``parameters`` cell (``SKIP_NOTEBOOKS`` and ``COARSE`` steer
the report itself: :func:`skipped`, :func:`splits`). A notebook that runs once per split
(``04a_validate_fold``) is run for every split; a split whose
``reports/<run>/folds/<split>/done.json`` exists is skipped, so rerunning after a failure resumes.
A failed notebook leaves papermill's executed copy (with the error) in ``reports/<run>/`` and a
one-line message; the other splits still run, and the command exits non-zero.
"""

from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import yaml

from .io import ClarityInputError, atomic_write, brain_groups, list_brains
from .params import PARAMS, check_params
from .paths import PROJECT_ROOT, Paths
from .resources import CPUS_ENV, cpus
from .scheduler import Job, run_jobs
from .synthetic import write_dataset
from .validate.splits import train_val_volumes

NOTEBOOK_DIR = PROJECT_ROOT / "notebooks"


@dataclass(frozen=True)
class Step:
    notebook: str              # file stem in notebooks/
    per_split: bool = False    # run once per validation split (SPLIT parameter)
    after: tuple[str, ...] = ()  # notebooks whose files it reads: it starts when they have finished


STEPS: tuple[Step, ...] = (
    Step("01_preprocess"),
    Step("02_sample", after=("01_preprocess",)),
    Step("03_train", after=("02_sample",)),
    Step("04a_validate_fold", per_split=True, after=("02_sample",)),
    Step("04b_cv_summary", after=("04a_validate_fold",)),
    Step("05_inspect_false_positives", after=("04a_validate_fold",)),
    Step("06_detect", after=("04a_validate_fold",)),
    Step("07_review_loop", after=("05_inspect_false_positives", "06_detect")),
    Step("08_count_new_brain", after=("06_detect",)),
)


def step_after(step: Step, params: dict) -> set[str]:
    """The notebooks ``step`` waits for with these parameters: its own, plus 04b (the final model)
    for the parts of 05 and 06 that read that model (``DETECTIONS`` without ``DETECTIONS_MODEL``,
    ``REAL_COUNT``)."""
    after = set(step.after)
    final = "04b_cv_summary"
    if step.notebook == "06_detect" and params.get("REAL_COUNT", PARAMS["REAL_COUNT"].default):
        after.add(final)
    if (step.notebook == "05_inspect_false_positives" and params.get("DETECTIONS")
            and not params.get("DETECTIONS_MODEL")):
        after.add(final)
    return after


def load_params(path: str | os.PathLike | None) -> dict:
    """Read and check a flat YAML parameter file (``KEY: value``); ``{}`` for ``None``.

    Every key must be a report parameter of :data:`clarity.params.PARAMS` (``python -m clarity
    params`` lists them) and every value of its type (:func:`clarity.params.check_params`).

    Raises
    ------
    ClarityInputError
        One line naming the file: missing, not YAML, not a mapping, an unknown or misspelled key
        (with the closest known name), a key the command line sets, or a value of the wrong type.
    """
    if not path:
        return {}
    path = Path(path)
    if not path.exists():
        raise ClarityInputError(f"{path}: no such parameter file")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" (line {where.line + 1})" if where is not None else ""
        raise ClarityInputError(f"{path}: not valid YAML{line}: {getattr(exc, 'problem', None) or exc}") from None
    if not isinstance(data, dict):
        raise ClarityInputError(f"{path}: a parameter file must be a mapping KEY: value")
    return check_params(data, source=str(path))


def splits(params: dict) -> list[str]:
    """Validation splits: ``coarse`` (random patch split, the seed's Table 1) then ``fold1``..``foldK``."""
    k = int(params.get("N_FOLDS", PARAMS["N_FOLDS"].default))
    out = ["coarse"] if params.get("COARSE", PARAMS["COARSE"].default) else []
    return out + [f"fold{i}" for i in range(1, k + 1)]


def data_root_params(paths: Paths, params: dict) -> dict:
    """Parameters that follow from the data root itself, never from the built-in dataset's names:
    ``N_FOLDS`` at most the number of brains (leave one brain out when there are fewer brains than
    folds asked for), and the training / validation brains of notebook 03 when not given (the
    last quarter of the brains, at least one, validate)."""
    vols = list_brains(paths.data_dir)
    groups = brain_groups(vols)
    if len(groups) < 3:
        raise ClarityInputError(f"{paths.data_dir}: {len(groups)} brain(s) {list(groups)}; cross-validation by "
                                "brain needs at least 3 (one to test, one to validate, one to fit)")
    k = int(params.get("N_FOLDS", 4))
    out = {"N_FOLDS": min(k, len(groups))}
    if out["N_FOLDS"] < k:
        print(f"[clarity] {len(groups)} brains: {out['N_FOLDS']} folds (leave one brain out)", flush=True)
    if not params.get("TRAIN_BRAINS"):
        train, val = train_val_volumes(vols)
        out.update({"TRAIN_BRAINS": ",".join(train), "VAL_BRAINS": ",".join(val)})
    return out


def synthetic_kwargs(params: dict) -> dict:
    """Generator options of a parameter file: ``SYNTH_SHAPE`` (z, y, x) and ``SYNTH_DENSITY``."""
    kw = {}
    if "SYNTH_SHAPE" in params:
        kw["shape"] = tuple(int(v) for v in params["SYNTH_SHAPE"])
    if "SYNTH_DENSITY" in params:
        kw["cell_density"] = float(params["SYNTH_DENSITY"])
    return kw


def ensure_dataset(paths: Paths, *, seed: int, params: dict, progress: bool = True) -> bool:
    """Write the synthetic dataset if ``<data>/raw`` is empty; returns whether it did."""
    raw = paths.raw
    if raw.exists() and any(p for p in raw.iterdir() if not p.name.startswith(".")):
        return False
    kw = synthetic_kwargs(params)
    print(f"[clarity] {raw} is empty: writing the synthetic dataset (seed {seed})", flush=True)
    write_dataset(paths.data_dir, n_brains=int(params.get("N_BRAINS", 8)), seed=seed, progress=progress, **kw)
    return True


def skipped(params: dict) -> set[str]:
    """Notebooks the report leaves out (``SKIP_NOTEBOOKS: "03_train,..."``, file stems; default
    ``03_train``, :data:`clarity.params.PARAMS`).

    Raises
    ------
    ClarityInputError
        A name that is no step of the report.
    """
    names = {n.strip() for n in str(params.get("SKIP_NOTEBOOKS", PARAMS["SKIP_NOTEBOOKS"].default) or "").split(",")
             if n.strip()}
    unknown = sorted(names - {s.notebook for s in STEPS})
    if unknown:
        raise ClarityInputError(f"SKIP_NOTEBOOKS: {unknown} are not notebooks of the report "
                                f"({', '.join(s.notebook for s in STEPS)})")
    return names


def _declared(notebook: Path) -> set[str]:
    import papermill as pm  # here, not at the top: a notebook importing this module skips its 3 s

    return set(pm.inspect_notebook(str(notebook)).keys())


def run_notebook(notebook: Path, output: Path, parameters: dict, *, cwd: Path) -> None:
    declared = _declared(notebook)
    params = {k: v for k, v in parameters.items() if k in declared}
    output.parent.mkdir(parents=True, exist_ok=True)
    import papermill as pm

    pm.execute_notebook(str(notebook), str(output), parameters=params, cwd=str(cwd),
                        kernel_name="python3", progress_bar=False, log_output=False)


def _execute(notebook: str, output: str, parameters: dict, cwd: str, env: dict) -> tuple[str, str] | None:
    """One notebook under ``env`` (the kernel inherits it); ``(ename, evalue)`` if a cell failed."""
    import papermill as pm

    with _environ(env):
        try:
            run_notebook(Path(notebook), Path(output), parameters, cwd=Path(cwd))
        except pm.PapermillExecutionError as exc:
            return str(exc.ename), str(exc.evalue)
    return None


@contextmanager
def _environ(values: dict) -> Iterator[None]:
    """``os.environ`` updated with ``values`` inside the block, restored as it was after."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def report_jobs(params: dict) -> tuple[int, int]:
    """``(jobs, threads)``: notebooks at once and torch threads per kernel (``REPORT_JOBS``,
    ``REPORT_THREADS``; jobs 0: the cores of :func:`clarity.resources.cpus` over the threads)."""
    threads = int(params.get("REPORT_THREADS", PARAMS["REPORT_THREADS"].default))
    jobs = int(params.get("REPORT_JOBS", PARAMS["REPORT_JOBS"].default)) or max(1, cpus() // threads)
    return jobs, threads


def _alone(step: Step, steps: Sequence[Step], after: dict[str, set[str]]) -> bool:
    """Whether no other step can run beside ``step``: every other one comes before or after it."""
    def ancestors(name: str) -> set[str]:
        out, todo = set(), list(after.get(name, ()))
        while todo:
            n = todo.pop()
            if n not in out:
                out.add(n)
                todo += list(after.get(n, ()))
        return out

    mine = ancestors(step.notebook)
    return all(o.notebook == step.notebook or o.notebook in mine or step.notebook in ancestors(o.notebook)
               for o in steps)


def run_report(paths: Paths, *, seed: int = 0, params_file: str | os.PathLike | None = None,
               only: Sequence[str] | None = None, progress: bool = True) -> int:
    """Run the whole report. Returns 0 if every notebook succeeded, else 1."""
    params = load_params(params_file)
    ensure_dataset(paths, seed=seed, params=params, progress=progress)
    # roots reach the kernels through the environment (see clarity.paths.Paths); restored after
    with _environ({"CLARITY_MODELS_ROOT": str(paths.models_root), "CLARITY_REPORTS_ROOT": str(paths.reports_root)}):
        return _run_steps(paths, params, seed=seed, only=only)


class _Timings:
    """Seconds per notebook of this report, kept in ``reports/<run>/timings.csv`` (``step,seconds,
    started``: ``started`` in seconds since the report's first notebook, so notebooks that ran side
    by side show; a rerun replaces the rows of the steps it ran, written atomically)."""

    def __init__(self, path: Path):
        self.path = path
        self.rows: dict[str, tuple[float, float]] = {}
        if path.exists():
            try:
                for line in path.read_text().splitlines()[1:]:
                    step, sec, *start = line.rsplit(",", 2) if line.count(",") >= 2 else line.rsplit(",", 1)
                    self.rows[step] = (float(sec), float(start[0]) if start else float("nan"))
            except ValueError:
                self.rows = {}

    def record(self, step: str, seconds: float, started: float = float("nan")) -> None:
        self.rows[step] = (round(float(seconds), 1), round(float(started), 1))
        order = {s.notebook: i for i, s in enumerate(STEPS)}
        keys = sorted(self.rows, key=lambda k: (order.get(k.split(" ")[0], 99), k))
        text = "step,seconds,started\n" + "".join(f"{k},{self.rows[k][0]},{self.rows[k][1]}\n" for k in keys)
        with atomic_write(self.path) as tmp:
            tmp.write_text(text)


def _review_labels_used(paths: Paths, params: dict) -> bool:
    """Whether the report's patch set used review decisions (its ``meta``), for the summary."""
    import json

    import numpy as np
    try:
        with np.load(paths.patchset(str(params.get("PATCHSET", "patches"))), allow_pickle=False) as z:
            return bool(json.loads(str(z["meta"])).get("review_labels_used", False))
    except (OSError, ValueError, KeyError):
        return False


def _done(timings: _Timings, job: Job, seconds: float, started: float) -> None:
    timings.record(job.label, seconds, started)
    print(f"[clarity] {job.label} done in {seconds:.0f} s -> {job.args[1]}", flush=True)


def _report_jobs(paths: Paths, base: dict, params: dict, *, only, threads: int) -> tuple[list[Job], dict]:
    """The report's notebook runs in order (a split already done, a notebook skipped or not
    present: none), and what each notebook waits for."""
    skip = skipped(params)
    cpus_all = str(cpus())
    after = {s.notebook: step_after(s, base) for s in STEPS}
    jobs: list[Job] = []
    for step in STEPS:
        if only and step.notebook not in only:
            continue
        if step.notebook in skip:
            print(f"[clarity] {step.notebook}: skipped (SKIP_NOTEBOOKS)", flush=True)
            continue
        src = NOTEBOOK_DIR / f"{step.notebook}.ipynb"
        if not src.exists():
            print(f"[clarity] {src.name}: not present yet, skipped", flush=True)
            continue
        # torch's threads are the same for every kernel (the numbers depend on them); a notebook
        # nothing can run beside may spread work whose result does not depend on it (N4 of
        # several brains) over every core
        alone = _alone(step, [s for s in STEPS if s.notebook not in skip], after) and not step.per_split
        env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
               CPUS_ENV: cpus_all if alone else str(threads)}
        outputs = [(s, paths.reports / f"{step.notebook}_{s}.ipynb") for s in splits(params)] \
            if step.per_split else [(None, paths.reports / f"{step.notebook}.ipynb")]
        for split, output in outputs:
            if split is not None and (paths.fold_reports(split) / "done.json").exists():
                print(f"[clarity] {step.notebook} [{split}]: already done, skipped "
                      f"(delete {paths.fold_reports(split)} to redo)", flush=True)
                continue
            p = dict(base, **({"SPLIT": split} if split is not None else {}))
            label = step.notebook + (f" [{split}]" if split else "")
            jobs.append(Job(step.notebook, label, (str(src), str(output), p, str(NOTEBOOK_DIR)), env))
    return jobs, after


def _run_steps(paths: Paths, params: dict, *, seed: int, only) -> int:
    # headless: notebooks 05 and 07 write into the report's own places and retrain (interactively
    # they write apart, under reports/<run>/interactive/, and retrain only when asked)
    base = {"DATA_DIR": str(paths.data_dir), "RUN": paths.run, "SEED": int(seed), "OUTPUT": "", "RETRAIN": True,
            "RUN_LOOP": True, "RUN_SIMULATION": True}
    if paths.truth.is_dir() and any(paths.truth.glob("*.csv")):
        # headless on synthetic data (complete truth): notebook 05's clearly named simulated reviewer
        # decides from truth, into a store of this run, never into the human one (labels/review.csv)
        base.update({"SIMULATE_REVIEWER": True, "REVIEW_CSV": str(paths.reports / "review_simulated.csv")})
    base.update(params)
    base.update({"DATA_DIR": str(paths.data_dir), "RUN": paths.run, "SEED": int(seed)})
    base.update(data_root_params(paths, base))
    params = {**params, "N_FOLDS": base["N_FOLDS"]}
    out_dir = paths.reports
    out_dir.mkdir(parents=True, exist_ok=True)
    timings = _Timings(out_dir / "timings.csv")
    n_jobs, threads = report_jobs(params)
    jobs, after = _report_jobs(paths, base, params, only=only, threads=threads)
    if n_jobs > 1:
        print(f"[clarity] up to {n_jobs} notebooks at once, {threads} torch thread(s) each", flush=True)
    t_start = time.perf_counter()
    failures = run_jobs(jobs, after, _execute, n_jobs=n_jobs,
                        on_done=lambda job, sec, start: _done(timings, job, sec, start),
                        log=lambda line: print(line, flush=True))
    total = time.perf_counter() - t_start
    if (out_dir / "cv_metrics.csv").exists():
        # summary.md again, now that the notebooks have run (all, or those of --only): detection per brain
        # first, seconds per notebook
        from .validate.summary import write_summary
        write_summary(out_dir, run=paths.run, review_labels_used=_review_labels_used(paths, params),
                      final_model=str(paths.final_model) if paths.final_model.exists() else None)
    if failures:
        print(f"[clarity] report {paths.run}: {len(failures)} failed ({', '.join(failures)}) after {total:.0f} s; "
              "fix and rerun: finished splits are not redone", file=sys.stderr, flush=True)
        return 1
    print(f"[clarity] report {paths.run} complete in {total:.0f} s: {out_dir}", flush=True)
    return 0
