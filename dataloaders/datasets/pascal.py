"""PASCAL VOC 2012 segmentation (21 classes), optionally trained on "trainaug" with the SBD annotations.

VOC: ``JPEGImages/<id>.jpg`` with ``SegmentationClass/<id>.png``, palette PNGs whose indices are the
class ids (255 on object borders: ignored), and the ids of each split in
``ImageSets/Segmentation/{train,val}.txt``. The root may be the ``VOC2012`` folder itself or a folder
holding ``VOCdevkit/VOC2012``.

With ``--use_sbd`` the train split is trainaug (10,582 images on the real data): VOC train, SBD train
and SBD val, minus every VOC val id, each id once. An id of VOC train keeps its VOC annotation (which
has the ignored borders); any other id takes SBD's ``dataset/cls/<id>.mat``, whose ``GTcls.Segmentation``
holds the class ids with no borders. The val split is always VOC val.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

from utils.flags import add_flag
from dataloaders.files import FilePairSource, read_label_png
from dataloaders.registry import DatasetInfo, dataset_root, register_dataset
from utils.errors import UserError

CLASS_NAMES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
NESTED_VOC = Path("VOCdevkit", "VOC2012")
SPLIT_LISTS = Path("ImageSets", "Segmentation")
LAYOUT = ("<root>/JPEGImages/<id>.jpg, <root>/SegmentationClass/<id>.png and "
          "<root>/ImageSets/Segmentation/{train,val}.txt, <root> being VOC2012 or a folder holding VOCdevkit/VOC2012")
SBD_ROOT_VARIABLE = "AUTODEEPLAB_SBD_ROOT"
SBD_FOLDER = "benchmark_RELEASE"
SBD_REQUIRED = ("dataset/img", "dataset/cls", "dataset/train.txt", "dataset/val.txt")
SBD_LAYOUT = "<sbd_root>/dataset/img/<id>.jpg, <sbd_root>/dataset/cls/<id>.mat and <sbd_root>/dataset/{train,val}.txt"
MISSING_SHOWN = 3  # missing files named in the error; the rest are counted


def read_sbd_mask(path: Path) -> np.ndarray:
    """An SBD ``cls/<id>.mat`` as uint8 [H, W] class ids: the ``Segmentation`` field of its ``GTcls`` struct.

    Read without ``squeeze_me`` so that a one-row mask stays two-dimensional. SciPy is imported here, where SBD
    needs it, not by every script that imports the datasets.
    """
    import scipy.io

    try:
        contents = scipy.io.loadmat(path, struct_as_record=False)
    except Exception as error:  # a damaged file raises MatReadError, OSError, ValueError, TypeError, ...
        raise UserError(f"{path}: cannot read this SBD .mat file ({type(error).__name__}: {error})") from None
    structs = contents.get("GTcls")
    single_struct = isinstance(structs, np.ndarray) and structs.size == 1
    segmentation = getattr(structs.flat[0], "Segmentation", None) if single_struct else None
    if not isinstance(segmentation, np.ndarray):
        raise UserError(f"{path}: not an SBD class annotation (no GTcls struct with a Segmentation field)")
    if segmentation.dtype != np.uint8 or segmentation.ndim != 2:
        raise UserError(f"{path}: GTcls.Segmentation must be a 2-D uint8 array of class ids, this one is "
                        f"{segmentation.dtype} of shape {segmentation.shape}")
    return segmentation


def read_pascal_label(path: Path) -> np.ndarray:
    """A VOC palette PNG or an SBD .mat, by suffix: trainaug mixes both."""
    return read_sbd_mask(path) if path.suffix == ".mat" else read_label_png(path)


def read_ids(list_file: Path) -> list[str]:
    """The image ids of a split file, one per line, blank lines skipped."""
    try:
        text = list_file.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"{list_file}: cannot read this split file ({error})") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def voc_root(args: argparse.Namespace, split_files: list[str]) -> Path:
    """The ``VOC2012`` folder: the data root itself, or its ``VOCdevkit/VOC2012`` when present."""
    required = ["JPEGImages", "SegmentationClass"] + [str(SPLIT_LISTS / f"{name}.txt") for name in split_files]
    return dataset_root(INFO, args, required, nested=NESTED_VOC)


def sbd_root(args: argparse.Namespace) -> Path:
    """SBD's ``benchmark_RELEASE`` folder: --sbd_root, else $AUTODEEPLAB_SBD_ROOT, else under the data root."""
    if args.sbd_root:
        root, origin = Path(args.sbd_root), "--sbd_root"
    elif os.environ.get(SBD_ROOT_VARIABLE):
        root, origin = Path(os.environ[SBD_ROOT_VARIABLE]), SBD_ROOT_VARIABLE
    else:
        root, origin = dataset_root(INFO, args) / SBD_FOLDER, f"the default <data root>/{SBD_FOLDER}"
    root = root.expanduser()
    missing = [name for name in SBD_REQUIRED if not (root / name).exists()]
    if missing:
        raise UserError(f"pascal --use_sbd: SBD root {root} (from {origin}) lacks {', '.join(missing)}; expected "
                        f"the layout {SBD_LAYOUT} (pass --sbd_root or set {SBD_ROOT_VARIABLE})")
    return root


def voc_pair(voc: Path, image_id: str) -> tuple[Path, Path]:
    return voc / "JPEGImages" / f"{image_id}.jpg", voc / "SegmentationClass" / f"{image_id}.png"


def trainaug_pairs(voc: Path, sbd: Path) -> list[tuple[Path, Path]]:
    """VOC train ∪ SBD train ∪ SBD val minus VOC val, each id once, VOC annotations first."""
    voc_train = read_ids(voc / SPLIT_LISTS / "train.txt")
    voc_val = set(read_ids(voc / SPLIT_LISTS / "val.txt"))
    sbd_ids = read_ids(sbd / "dataset" / "train.txt") + read_ids(sbd / "dataset" / "val.txt")
    voc_annotated = set(voc_train)
    pairs, seen = [], set(voc_val)
    for image_id in voc_train + sbd_ids:
        if image_id in seen:
            continue
        seen.add(image_id)
        if image_id in voc_annotated:
            pairs.append(voc_pair(voc, image_id))
        else:
            pairs.append((sbd / "dataset" / "img" / f"{image_id}.jpg", sbd / "dataset" / "cls" / f"{image_id}.mat"))
    return pairs


def check_files_exist(pairs: list[tuple[Path, Path]], what: str) -> None:
    """Fail on a listed id whose image or mask file is absent, naming the files (before any training)."""
    missing = [path for pair in pairs for path in pair if not path.is_file()]
    if missing:
        shown = ", ".join(str(p) for p in missing[:MISSING_SHOWN])
        more = f" and {len(missing) - MISSING_SHOWN} more" if len(missing) > MISSING_SHOWN else ""
        raise UserError(f"{what}: {len(missing)} listed file(s) missing: {shown}{more}")


def make_pascal_source(split: str, args: argparse.Namespace) -> FilePairSource:
    trainaug = split == "train" and args.use_sbd
    voc = voc_root(args, ["train", "val"] if trainaug else [split])
    if trainaug:
        pairs = trainaug_pairs(voc, sbd_root(args))
    else:
        pairs = [voc_pair(voc, image_id) for image_id in read_ids(voc / SPLIT_LISTS / f"{split}.txt")]
    check_files_exist(pairs, f"pascal {'trainaug' if trainaug else split}")
    return FilePairSource("pascal", split, pairs, CLASS_NAMES, read_label=read_pascal_label)


def add_pascal_arguments(group: argparse._ArgumentGroup) -> None:
    add_flag(group, "use_sbd", action="store_true", locked=True,
             help="train on trainaug: VOC train plus the SBD annotations, minus VOC val (10,582 images)")
    add_flag(group, "sbd_root", default=None,
             help=f"SBD's {SBD_FOLDER} folder (default: ${SBD_ROOT_VARIABLE}, else <data root>/{SBD_FOLDER})")


INFO = register_dataset(DatasetInfo(
    name="pascal",
    num_classes=len(CLASS_NAMES),
    default_num_classes=len(CLASS_NAMES),
    make_source=make_pascal_source,
    layout=LAYOUT,
    # The paper searches on Cityscapes only; the search here follows the public implementations' VOC runs
    # (batch 2, 321 crops of images resized to a 321 short side) with α/β from epoch 20 of 50. Retrain: the
    # paper's VOC crop of 513 with batch 8.
    add_arguments=add_pascal_arguments,
))
