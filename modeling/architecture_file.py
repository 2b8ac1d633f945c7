"""``architecture.json``: the versioned, self-describing file a search writes and a retrain reads.

Format version 2 is one envelope for every search system::

    {"format": "autodeeplab-architecture", "format_version": 2, "system": "autodeeplab",
     "genotype": {...}, "search_space": {...}, "source": {...}}

``system`` names the search system, whose registered genotype class reads ``genotype`` (its own
fields) and checks it against ``search_space`` (a description of the space it was searched in);
``source`` says where the architecture came from (checkpoint, epoch, scores). Version-1 files, written
before there was more than one system, hold Auto-DeepLab's fields at the top level and still load, and so
do the files of an original implementation whose genotype class reads them (``from_original``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar, Protocol, TypeVar

from utils.atomic import atomic_path
from utils.errors import UserError
from utils.registry import Registry

FORMAT_NAME = "autodeeplab-architecture"
FORMAT_VERSION = 2
V1_SYSTEM = "autodeeplab"  # every version-1 file is an Auto-DeepLab architecture
ARCHITECTURE_FILE = "architecture.json"


class Genotype(Protocol):
    """A searched architecture of one system, as its architecture file holds it."""

    system: ClassVar[str]
    source: dict[str, Any]

    def genotype_json(self) -> dict[str, Any]:
        """The system's own fields (the file's ``genotype``)."""

    def search_space_json(self) -> dict[str, Any]:
        """A description of the search space (the file's ``search_space``)."""

    @classmethod
    def from_json(cls, genotype: Any, search_space: Any, source: dict[str, Any], origin: str,
                  prefix: str) -> Genotype:
        """Parse and check the fields; an error names ``origin`` and the field (after ``prefix``)."""

    def describe(self) -> str:
        """A few lines for people: what the architecture is."""


GenotypeClass = TypeVar("GenotypeClass", bound=type)
GENOTYPES: Registry[type] = Registry("search system")  # system -> the genotype class of its files


def register_genotype(cls: GenotypeClass) -> GenotypeClass:
    """Class decorator: architecture files naming ``cls.system`` are read by ``cls``."""
    return GENOTYPES.register(cls.system, cls)


def architecture_to_json(genotype: Genotype) -> dict[str, Any]:
    return {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "system": genotype.system,
            "genotype": genotype.genotype_json(), "search_space": genotype.search_space_json(),
            "source": genotype.source}


def architecture_from_json(data: Any, origin: str = "architecture") -> Genotype:
    """The genotype an architecture file (version 1 or 2) holds; any fault is one UserError naming the field."""
    def fail(field_name: str, expected: str) -> UserError:
        return UserError(f"{origin}: field '{field_name}': {expected}")

    if not isinstance(data, dict):
        for cls in GENOTYPES.values():  # a search system's own file format, if it has one
            reader = getattr(cls, "from_original", None)
            genotype = reader(data, origin) if reader is not None else None
            if genotype is not None:
                return genotype
        raise UserError(f"{origin}: expected a JSON object at the top level")
    if data.get("format") != FORMAT_NAME:
        raise fail("format", f"expected '{FORMAT_NAME}', got {data.get('format')!r}")
    version = data.get("format_version")
    if version == 1:
        system, genotype, prefix = V1_SYSTEM, data, ""
    elif version == FORMAT_VERSION:
        system, genotype, prefix = data.get("system"), data.get("genotype"), "genotype."
        GENOTYPES.lookup(system, f"{origin}: field 'system'")
    else:
        raise fail("format_version", f"expected 1 or {FORMAT_VERSION}, got {version!r}")
    source = data.get("source", {})
    if not isinstance(source, dict):
        raise fail("source", "expected an object")
    return GENOTYPES[system].from_json(genotype, data.get("search_space"), source, origin, prefix)


def load_architecture(path: str | Path, expected: type | None = None) -> Genotype:
    """Read an ``architecture.json`` file, or the one inside a run directory; ``expected`` (a genotype class)
    refuses another system's file."""
    path = Path(path)
    if path.is_dir():
        path = path / ARCHITECTURE_FILE
    if not path.is_file():
        raise UserError(f"{path}: architecture file not found (expected an architecture.json "
                        "written by decode_autodeeplab.py, or a directory holding one)")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not valid JSON ({exc})") from None
    genotype = architecture_from_json(data, str(path))
    if expected is not None and not isinstance(genotype, expected):
        raise UserError(f"{path}: is a {genotype.system} architecture, expected a {expected.system} one")
    return genotype


def save_architecture(genotype: Genotype, path: str | Path) -> None:
    """Write the version-2 file; an interrupted write leaves the previous file whole."""
    with atomic_path(path) as temporary:
        Path(temporary).write_text(json.dumps(architecture_to_json(genotype), indent=2) + "\n")
