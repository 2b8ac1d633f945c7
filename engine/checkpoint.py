"""Checkpoints that are never half-written and never unpickle arbitrary objects.

Saving writes a temporary file beside the target, flushes and fsyncs it, then renames it over
the target, so a crash leaves the previous checkpoint intact. Loading uses
``torch.load(weights_only=True)``: checkpoints hold tensors and plain Python values only.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from utils.atomic import atomic_path
from utils.errors import UserError

CHECKPOINT_FORMAT = "autodeeplab-checkpoint"


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as temporary, open(temporary, "wb") as file:
        torch.save({"format": CHECKPOINT_FORMAT, **state}, file)


def load_checkpoint(path: str | Path, stage: str | None = None, system: str | None = None) -> dict[str, Any]:
    """Load a checkpoint written by ``save_checkpoint``; every failure is one readable UserError.

    ``stage`` ("search" or "retrain") rejects a checkpoint written by the other stage script, ``system`` one of
    another search system. A checkpoint without a ``system`` (written before there were several) is an
    Auto-DeepLab one.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found")
    kind = _foreign_file_kind(path)
    if kind is not None:
        raise UserError(f"{path}: is not a checkpoint ({kind}); expected a checkpoint.pth.tar or "
                        "model_best.pth.tar written by this project")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights_only" in str(exc):
            raise UserError(f"{path}: refused to load: the file holds pickled Python objects, and checkpoints "
                            "may only hold tensors and plain values (torch.load weights_only=True)") from None
        raise UserError(f"{path}: not a readable checkpoint (truncated or corrupt)") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError):
        raise UserError(f"{path}: not a readable checkpoint (truncated or corrupt)") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{path}: not an autodeeplab checkpoint (no '{CHECKPOINT_FORMAT}' format tag)")
    if stage is not None and state.get("stage") != stage:
        raise UserError(f"{path}: is a {state.get('stage')!r} checkpoint, expected a {stage!r} one")
    state.setdefault("system", "autodeeplab")
    if system is not None and state["system"] != system:
        raise UserError(f"{path}: is a checkpoint of system {state['system']}, expected one of system {system}")
    return state


_FILE_SIGNATURES = ((b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"GIF8", "a GIF image"),
                    (b"%PDF", "a PDF document"), (b"\x1f\x8b", "a gzip archive"), (b"{", "a JSON or text file"),
                    (b"[", "a JSON or text file"))


def _foreign_file_kind(path: Path) -> str | None:
    """What ``path`` is when it is plainly no PyTorch file (torch writes a zip archive, or a pickle before
    torch 1.6), else None."""
    with open(path, "rb") as file:
        head = file.read(8)
    if head.startswith(b"PK") or head.startswith(b"\x80"):
        return None
    for signature, kind in _FILE_SIGNATURES:
        if head.startswith(signature):
            return kind
    return "not a PyTorch file" if head else "an empty file"


class Checkpointer:
    """The state of a run, named once for saving and for restoring (detectron2's ``Checkpointer``).

    ``header`` holds what describes the run (system, stage, arguments, classes, its data split...);
    ``model`` (if any: the decoder search trains its candidates' networks apart) and every object in
    ``stateful`` (optimizers, schedulers, loss scalers: anything with ``state_dict``/``load_state_dict``) are
    saved under their keyword, with the RNG state.
    """

    def __init__(self, header: dict[str, Any], model: torch.nn.Module | None = None, **stateful: Any) -> None:
        self.header = header
        self.model = model
        self.stateful = stateful

    def state(self, **progress: Any) -> dict[str, Any]:
        """Everything to save, plus ``progress`` (epoch, best score, partial epoch, a search's own state)."""
        model = {} if self.model is None else {"model": self.model.state_dict()}
        return {**self.header, **model, **{key: obj.state_dict() for key, obj in self.stateful.items()},
                "rng": rng_state(), **progress}

    def restore(self, checkpoint: dict[str, Any], source: str) -> None:
        """Load a checkpoint written from ``state`` into the model and every stateful object, and restore
        the RNG; a model whose weights do not fit is one UserError naming ``source``."""
        if self.model is not None:
            load_model_state(self.model, checkpoint["model"], source)
        for key, obj in self.stateful.items():
            obj.load_state_dict(checkpoint[key])
        restore_rng_state(checkpoint["rng"])


def load_model_state(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """``model.load_state_dict(state)``, with a mismatch (weights of another version or another network)
    as one UserError naming ``source`` and the first difference."""
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        first = str(error).strip().splitlines()[1:2] or [str(error)]
        raise UserError(f"{source}: the weights do not fit the network (written by another version of autodeeplab "
                        f"or for another network: {first[0].strip()})") from None


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
