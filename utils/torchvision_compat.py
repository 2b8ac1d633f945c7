"""Importing torchvision where its compiled ops do not match the installed torch.

The PyPI ``torchvision==0.28.0`` wheel is a CUDA build. Beside a CPU-only torch its C++ library fails
to load, and ``import torchvision`` then stops at registering fake kernels for ``torchvision::nms``
(pytorch issue 122494). Defining the two op schemas it expects lets the import succeed; the models
and ``transforms.v2`` are pure Python and work, and ``modeling.detection_ops`` supplies the detection ops.

Whether the library loads is tried first, by loading it: where it loads (a matching build, CUDA or
CPU), it registers the schemas itself and nothing is defined here, since defining them before the
library registers its own aborts the process (measured with torch 2.13 CPU and torchvision 0.28).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import torch

_SCHEMAS = ("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
            "qnms(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor")
_library: torch.library.Library | None = None  # kept alive: dropping it would remove the schemas


def _native_library_loads() -> bool:
    """Load torchvision's compiled library, as its own import would; False when it cannot be loaded."""
    spec = importlib.util.find_spec("torchvision")
    folders = spec.submodule_search_locations if spec is not None else None
    libraries = [path for folder in folders or [] for path in Path(folder).glob("_C.*") if path.suffix in
                 (".so", ".pyd", ".dylib")]
    if not libraries:
        return False
    try:
        torch.ops.load_library(str(libraries[0]))
    except OSError:
        return False
    return True


def _define_missing_schemas() -> None:
    global _library
    if hasattr(torch.ops.torchvision, "nms") or _native_library_loads():
        return
    _library = torch.library.Library("torchvision", "DEF")
    for schema in _SCHEMAS:
        _library.define(schema)


def import_torchvision() -> ModuleType:
    """``torchvision``, imported so that it works beside a CPU-only or a CUDA torch."""
    if _library is None:
        _define_missing_schemas()
    import torchvision

    return torchvision
