"""Where each dataset lives on disk, without paths hard-coded in the source.

The root of dataset ``<name>`` is, first match wins:

1. the ``--data_root`` flag (passed here as ``override``);
2. the environment variable ``AUTODEEPLAB_<NAME>_ROOT`` (``<NAME>`` upper-cased, any character
   other than a letter, digit or underscore replaced by ``_``), e.g.
   ``AUTODEEPLAB_CITYSCAPES_ROOT=/data/cityscapes``;
3. ``$AUTODEEPLAB_DATA_ROOT/<name>``, one folder per dataset under a common root, e.g.
   ``AUTODEEPLAB_DATA_ROOT=/data`` gives ``/data/cityscapes``.

Empty variables count as unset.
"""

from __future__ import annotations

import os
import re

from utils.errors import UserError

DATA_ROOT_VARIABLE = "AUTODEEPLAB_DATA_ROOT"


def dataset_root_variable(dataset: str) -> str:
    """The per-dataset environment variable, e.g. ``AUTODEEPLAB_CITYSCAPES_ROOT``."""
    return f"AUTODEEPLAB_{re.sub(r'[^A-Za-z0-9_]', '_', dataset).upper()}_ROOT"


class Path:
    @staticmethod
    def db_root_dir(dataset: str, override: str | None = None) -> str:
        """The root folder of ``dataset`` (see the module docstring for the precedence)."""
        return Path.root_and_origin(dataset, override)[0]

    @staticmethod
    def root_and_origin(dataset: str, override: str | None = None, layout: str = "") -> tuple[str, str]:
        """The root folder of ``dataset`` and where it came from (a flag or a variable), for errors."""
        if override:
            return override, "--data_root"
        variable = dataset_root_variable(dataset)
        if os.environ.get(variable):
            return os.environ[variable], variable
        if os.environ.get(DATA_ROOT_VARIABLE):
            return os.path.join(os.environ[DATA_ROOT_VARIABLE], dataset), DATA_ROOT_VARIABLE
        expected = f" (expected layout: {layout})" if layout else ""
        raise UserError(f"no data root for dataset {dataset!r}: pass --data_root, or set "
                        f"{variable} to its folder, or {DATA_ROOT_VARIABLE} to a folder "
                        f"containing {dataset}/{expected}")
