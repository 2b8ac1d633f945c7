"""torchvision imports beside a CPU torch, and the schemas its compiled library would register are defined only
where that library cannot load (defining them before it registers its own aborts the process)."""

import subprocess
import sys

import torch

from tests.conftest import ROOT
from utils import torchvision_compat



def run(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def test_where_the_library_loads_no_schema_is_defined_first():
    code = ("import torch, utils.torchvision_compat as c; c._native_library_loads = lambda: True; "
            "c._define_missing_schemas(); print(c._library is None, hasattr(torch.ops.torchvision, 'nms'))")
    assert run(code) == ["True", "False"]


def test_where_it_cannot_load_the_schemas_make_the_import_work():
    loads = run("import utils.torchvision_compat as c; print(c._native_library_loads())")[0] == "True"
    code = ("import torch, utils.torchvision_compat as c; tv = c.import_torchvision(); "
            "print(c._library is None, hasattr(torch.ops.torchvision, 'nms'), tv.ops.box_area(torch.ones(1, 4)).item())")
    assert run(code) == [str(loads), "True", "0.0"]


def test_the_compiled_library_of_a_cuda_build_does_not_load_beside_a_cpu_torch():
    if torch.version.cuda is None and torchvision_compat.import_torchvision().__version__.endswith("cu130"):
        assert not torchvision_compat._native_library_loads()
