import os

import pytest

from mypath import Path
from utils.errors import UserError


@pytest.fixture
def clean_env(monkeypatch):
    for name in list(os.environ):
        if name.startswith("AUTODEEPLAB_"):
            monkeypatch.delenv(name)
    return monkeypatch


def test_override_wins(clean_env):
    clean_env.setenv("AUTODEEPLAB_CITYSCAPES_ROOT", "/env/cityscapes")
    clean_env.setenv("AUTODEEPLAB_DATA_ROOT", "/data")
    assert Path.db_root_dir("cityscapes", override="/flag/cs") == "/flag/cs"


def test_dataset_variable_beats_the_common_root(clean_env):
    clean_env.setenv("AUTODEEPLAB_CITYSCAPES_ROOT", "/env/cityscapes")
    clean_env.setenv("AUTODEEPLAB_DATA_ROOT", "/data")
    assert Path.db_root_dir("cityscapes") == "/env/cityscapes"
    assert Path.db_root_dir("pascal") == os.path.join("/data", "pascal")


def test_variable_name_is_sanitised(clean_env):
    clean_env.setenv("AUTODEEPLAB_PASCAL_AUG_ROOT", "/env/pascal-aug")
    assert Path.db_root_dir("pascal-aug") == "/env/pascal-aug"


def test_empty_variables_count_as_unset(clean_env):
    clean_env.setenv("AUTODEEPLAB_COCO_ROOT", "")
    clean_env.setenv("AUTODEEPLAB_DATA_ROOT", "/data")
    assert Path.db_root_dir("coco") == os.path.join("/data", "coco")


def test_missing_root_names_the_variables(clean_env):
    with pytest.raises(UserError, match="--data_root.*AUTODEEPLAB_COCO_ROOT.*AUTODEEPLAB_DATA_ROOT"):
        Path.db_root_dir("coco")
