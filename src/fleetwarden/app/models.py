"""Flow-model directories: the pure model (:mod:`fleetwarden.detection.flowmodel`) meets its files
(:mod:`fleetwarden.sources.modelfile`).  Nothing on this path unpickles."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fleetwarden.detection.flowmodel import FlowModel, ModelFormatError
from fleetwarden.sources import SourceError
from fleetwarden.sources.modelfile import MODEL_JSON, read_model_files, write_model_files

__all__ = ["load_flow_model", "resolve_model", "save_flow_model"]


def load_flow_model(model_dir: str | Path) -> FlowModel:
    """The model in ``model_dir``; a :class:`SourceError` naming the file and what is wrong otherwise."""
    meta, arrays = read_model_files(model_dir)
    try:
        return FlowModel.from_state(meta, arrays)
    except ModelFormatError as exc:
        raise SourceError(model_dir, MODEL_JSON, str(exc) or "model is unusable") from None


def save_flow_model(model: FlowModel, model_dir: str | Path) -> None:
    meta, arrays = model.to_state()
    write_model_files(model_dir, meta, arrays)


def resolve_model(model: Any) -> FlowModel | None:
    """A model given as a directory is loaded; a loaded model (or None) is taken as it is."""
    if model is None or isinstance(model, FlowModel):
        return model
    if isinstance(model, str | Path):
        return load_flow_model(model)
    return model  # anything with the FlowModel scoring interface (tests, benches)
