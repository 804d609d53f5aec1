"""Model directories on disk: ``model.json`` (what the model is, in words and numbers) and
``estimators.npz`` (its numeric tables), both read without pickle.

A model directory may come from anywhere (a shared drive, a colleague, an attacker), so loading
it must never run code: the description is JSON, the tables are an ``.npz`` archive read with
``numpy.load(..., allow_pickle=False)`` (object arrays are refused), and the application layer
rebuilds the model from them (:func:`fleetwarden.app.models.load_flow_model`, through
:meth:`~fleetwarden.detection.flowmodel.FlowModel.from_state`, which checks every shape).
Any problem is a :class:`~fleetwarden.sources.SourceError` naming the directory, the file
and what was wrong.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from fleetwarden.sources import SourceError

__all__ = ["ESTIMATORS", "MODEL_JSON", "read_model_files", "write_model_files"]

MODEL_JSON = "model.json"
ESTIMATORS = "estimators.npz"
# A model's tables are tens of KB (32 KB for the IoT-23 model); refuse what could not be one
# before reading it into memory.
MAX_MODEL_BYTES = 512 * 1024 * 1024


def write_model_files(model_dir: str | Path, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
    """Write a model's description and tables to ``model_dir`` (created when missing)."""
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    for name, arr in arrays.items():
        if arr.dtype == object:
            raise TypeError(f"model table {name} holds Python objects; it would need pickle")
    with open(model_dir / ESTIMATORS, "wb") as fh:
        np.savez_compressed(fh, **arrays)
    (model_dir / MODEL_JSON).write_text(json.dumps(meta, indent=2, default=_json_default) + "\n")


def read_model_files(model_dir: str | Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(description, tables) of a model directory written by :func:`write_model_files`; never
    unpickles."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise SourceError(model_dir, None, "no such model directory")
    return _read_meta(model_dir), _read_arrays(model_dir)


def _read_meta(model_dir: Path) -> dict[str, Any]:
    path = model_dir / MODEL_JSON
    try:
        if path.stat().st_size > MAX_MODEL_BYTES:
            raise SourceError(model_dir, MODEL_JSON, "too large to be a model description")
        meta = json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise SourceError(model_dir, None, f"not a model directory: {MODEL_JSON} is missing") from None
    except UnicodeDecodeError:
        raise SourceError(model_dir, MODEL_JSON, "not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise SourceError(model_dir, MODEL_JSON, f"not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except OSError as exc:
        raise SourceError(model_dir, MODEL_JSON, f"unreadable ({exc.strerror or exc})") from None
    if not isinstance(meta, dict):
        raise SourceError(model_dir, MODEL_JSON, "expected a JSON object")
    return meta


def _read_arrays(model_dir: Path) -> dict[str, np.ndarray]:
    path = model_dir / ESTIMATORS
    try:
        if path.stat().st_size > MAX_MODEL_BYTES:
            raise SourceError(model_dir, ESTIMATORS, "too large to be a model's tables")
        with np.load(path, allow_pickle=False) as npz:
            return {name: npz[name] for name in npz.files}
    except FileNotFoundError:
        raise SourceError(model_dir, None, f"not a model directory: {ESTIMATORS} is missing") from None
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        # numpy says "Object arrays cannot be loaded when allow_pickle=False" for pickled content
        raise SourceError(model_dir, ESTIMATORS, f"not a FleetWarden model table archive ({exc})") from None


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(type(o))
