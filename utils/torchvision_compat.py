"""Importing torchvision where its compiled ops do not match the installed torch.

The PyPI ``torchvision==0.28.0`` wheel is a CUDA build. Beside a CPU-only torch its C++ ops fail
to load, and ``import torchvision`` then stops at registering fake kernels for ``torchvision::nms``
(pytorch issue 122494). Defining the two op schemas it expects lets the import succeed; the models
and ``transforms.v2`` are pure Python and work. Only ``ops.nms`` and ``torchvision.io`` stay
unusable, and this project uses neither (images are read with Pillow). Where the compiled ops
load (a CUDA machine), the schemas already exist and nothing is defined.
"""

from __future__ import annotations

from types import ModuleType

import torch

_SCHEMAS = ("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
            "qnms(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor")
_library: torch.library.Library | None = None  # kept alive: dropping it would remove the schemas


def _define_missing_schemas() -> None:
    global _library
    try:
        torch.ops.torchvision.nms  # noqa: B018 - attribute lookup is the existence test
        return
    except AttributeError:
        pass
    _library = torch.library.Library("torchvision", "DEF")
    for schema in _SCHEMAS:
        _library.define(schema)


def import_torchvision() -> ModuleType:
    """``torchvision``, imported so that it works beside a CPU-only or a CUDA torch."""
    if _library is None:
        _define_missing_schemas()
    import torchvision

    return torchvision
