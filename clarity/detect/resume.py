"""Resumable detection: each finished chunk recorded in a state folder, reused by a rerun.

A detection run with ``RunOptions(state_dir=...)`` (``clarity detect --out DIR`` gives each volume
``DIR/.clarity-state/<name>/``) writes, each atomically (a temporary file renamed into place, so
a kill never leaves a half-written record):

``state.json``       what the records hold: the fingerprint of the detection (:func:`state_key`:
                     the model's weights, the detection settings, the volume file) and the chunk
                     core size (z, y, x voxels) they were cut with
``field.npz``        the N4 bias field, ``normalisation.json`` the normalisation, once fitted
``chunk_z*_y*_x*.npz``  the detections of one finished chunk core (volume voxels)

The same detection started again reads them back instead of computing them: it continues where
a killed run stopped and gives the cells of a run never stopped (same field, same chunks, same
per-chunk results). Records of another detection (other weights, settings or a volume file
rewritten since) are never used: the folder is cleared with a note on stderr and the run starts
afresh. Temporary files left by a kill during a write are removed.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..io import atomic_write, file_stamp, jsonable, write_json
from ..preprocess import BiasField, Normalisation, load_bias_field

__all__ = ["STATE_FOLDER", "state_key", "preprocessing_key", "volume_key", "ChunkState"]

#: The folder under a detection's output folder that holds one state folder per volume.
STATE_FOLDER = ".clarity-state"
_VERSION = 1
_MANIFEST = "state.json"
_RESULT_KEYS = ("points", "scores", "responses", "snr")


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(jsonable(obj), sort_keys=True).encode()).hexdigest()


def state_key(*, model_token: str | None, plan, factors: Sequence[float], preprocessed: bool,
              n4, field=None, normalisation=None, reader, path: Path) -> dict:
    """What a detection's chunk records depend on, in four parts (JSON-able).

    ``model``: the hash of the network's config and weights (:class:`ModelBlob` token; None in
    ``mode="log"``); ``settings``: the detection config, the plan's threshold and features, the
    grid's scale factors (input voxel / model voxel, z, y, x); ``preprocessing`` and ``volume``:
    :func:`preprocessing_key` and :func:`volume_key`.
    """
    return jsonable({
        "model": model_token,
        "settings": {"config": plan.config.to_dict(), "threshold": float(plan.threshold),
                     "features": bool(plan.features), "factors": [float(f) for f in factors]},
        "preprocessing": preprocessing_key(preprocessed=preprocessed, n4=n4, field=field,
                                           normalisation=normalisation),
        "volume": volume_key(reader, path),
    })


def preprocessing_key(*, preprocessed: bool, n4, field=None, normalisation=None) -> dict:
    """The preprocessing part of a state key: whether the volume is preprocessed, the N4
    settings, a given field's hash and a given normalisation."""
    given_field = None
    if field is not None:
        given_field = hashlib.sha256(np.ascontiguousarray(field.log_field).tobytes()).hexdigest()
    return jsonable({"preprocessed": bool(preprocessed),
                     "n4": None if preprocessed or n4 is None else n4.to_dict(),
                     "field": given_field,
                     "normalisation": None if normalisation is None else normalisation.to_dict()})


def volume_key(reader, path: Path) -> dict:
    """The volume part of a state key: the file's absolute path, (z, y, x) shape, dtype, OME-Zarr
    level / channel / time point, and a hash of its size and modification time
    (:func:`clarity.io.file_stamp`)."""
    return jsonable({"path": str(Path(path).resolve()), "shape": [int(s) for s in reader.shape],
                     "dtype": str(np.dtype(reader.dtype)), "selection": getattr(reader, "selection", {}),
                     "stamp": _digest(getattr(reader, "stamp", None) or file_stamp(path))})


class ChunkState:
    """The records of one volume's detection in ``folder`` (see the module's doc).

    Open it with :meth:`open`; :meth:`load` gives a chunk's recorded result (or None), and
    :meth:`record` writes one. Records are keyed by the chunk core's box, so a core is only ever
    reused for the very same box of the very same detection.
    """

    def __init__(self, folder: Path, key: dict, *, chunk: Sequence[int] | None = None):
        self.folder = Path(folder)
        self.key = key
        self.fingerprint = _digest(key)
        self.chunk = None if chunk is None else tuple(int(c) for c in chunk)

    @classmethod
    def open(cls, folder: str | os.PathLike, key: dict, *, name: str = "volume") -> "ChunkState":
        """The state in ``folder`` for a detection of fingerprint ``key`` (:func:`state_key`):
        its records when they are of this detection, else an emptied folder (with a note on
        stderr saying what changed)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for p in folder.iterdir():  # left by a kill during a write (clarity.io.atomic_write)
            if p.name.startswith(".") and ".tmp" in p.name and p.is_file():
                p.unlink(missing_ok=True)
        old = None
        try:
            old = json.loads((folder / _MANIFEST).read_text())
        except (OSError, ValueError):
            pass
        state = cls(folder, key)
        if isinstance(old, dict) and old.get("version") == _VERSION and old.get("fingerprint") == state.fingerprint:
            state.chunk = tuple(int(c) for c in old["chunk"]) if old.get("chunk") else None
            n = len(state.recorded())
            if n:
                print(f"{name}: resuming: {n} finished chunk(s) recorded in {folder}", file=sys.stderr, flush=True)
            return state
        if isinstance(old, dict) or state.recorded():
            before = old.get("key", {}) if isinstance(old, dict) else {}
            changed = [k for k in key if before.get(k) != key[k]] or ["the state format"]
            print(f"{name}: the chunks recorded in {folder} are of another detection ({', '.join(changed)} "
                  "changed); starting fresh", file=sys.stderr, flush=True)
            state.clear()
        state.write_manifest()
        return state

    def recorded(self) -> list[Path]:
        """The chunk records present."""
        return sorted(self.folder.glob("chunk_*.npz"))

    def clear(self) -> None:
        """Remove every record (chunks, field, normalisation, manifest); nothing else."""
        for p in self.recorded() + [self.folder / n for n in (_MANIFEST, "field.npz", "normalisation.json")]:
            p.unlink(missing_ok=True)

    def write_manifest(self) -> None:
        write_json(self.folder / _MANIFEST, {"version": _VERSION, "fingerprint": self.fingerprint,
                                             "chunk": None if self.chunk is None else list(self.chunk),
                                             "key": self.key})

    def set_chunk(self, chunk: Sequence[int]) -> None:
        """Record the chunk core size (z, y, x) the chunks are cut with."""
        chunk = tuple(int(c) for c in chunk)
        if chunk != self.chunk:
            self.chunk = chunk
            self.write_manifest()

    def chunk_path(self, core: Sequence[slice]) -> Path:
        z, y, x = core
        return self.folder / f"chunk_z{z.start}-{z.stop}_y{y.start}-{y.stop}_x{x.start}-{x.stop}.npz"

    def load(self, core: Sequence[slice]) -> dict | None:
        """The recorded result of the chunk core ``core`` (as :func:`clarity.detect.chunks.run_chunk`
        returns it), or None when not recorded (or unreadable: then it is computed again)."""
        p = self.chunk_path(core)
        if not p.exists():
            return None
        try:
            with np.load(p, allow_pickle=False) as z:
                out: dict[str, Any] = {k: z[k] for k in _RESULT_KEYS}
                out["features"] = z["features"] if bool(z["has_features"]) else None
                out["stats"] = json.loads(str(z["stats"]))
        except (OSError, KeyError, ValueError):
            p.unlink(missing_ok=True)
            return None
        out["points"] = out["points"].astype(np.int64).reshape(-1, 3)
        return out

    def record(self, core: Sequence[slice], result: dict) -> Path:
        """Write one chunk's result atomically."""
        p = self.chunk_path(core)
        feats = result.get("features")
        with atomic_write(p) as tmp:
            np.savez(tmp, **{k: np.asarray(result[k]) for k in _RESULT_KEYS},
                     features=np.zeros((0, 0), np.float32) if feats is None else np.asarray(feats),
                     has_features=np.array(feats is not None),
                     stats=np.array(json.dumps(jsonable(result.get("stats", {})))))
        return p

    def load_preprocessing(self) -> tuple[BiasField | None, Normalisation | None]:
        """The recorded N4 field and normalisation, or (None, None)."""
        try:
            field = load_bias_field(self.folder / "field.npz")
            d = json.loads((self.folder / "normalisation.json").read_text())
            return field, Normalisation(background=float(d["background"]), method=d["method"],
                                        clip=tuple(float(c) for c in d["clip"]))
        except (OSError, ValueError, KeyError):
            return None, None

    def record_preprocessing(self, field: BiasField, norm: Normalisation) -> None:
        """Record the N4 field and normalisation (the normalisation last: it marks both written)."""
        field.save(self.folder / "field.npz")
        write_json(self.folder / "normalisation.json", norm.to_dict())
