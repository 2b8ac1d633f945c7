"""Segment every image of a folder (or one image) with a trained network.

    python inference.py --ckpt run/cityscapes/retrain/experiment_0/model_best.pth.tar \
        --in-path photos/ --out-path predictions/

For ``photos/a/b.jpg`` it writes ``predictions/masks/a/b.png``, an index PNG whose palette holds the
dataset's colours (class ids survive exactly; labels are never written as JPEG), and
``predictions/overlays/a/b.jpg``, the colours blended over the photo. A panoptic network (Auto-Panoptic)
writes COCO-panoptic outputs instead: ``predictions/panoptic/a/b.png`` (segment ids as colours),
``predictions/panoptic.json`` (the segments of every image, with their categories) and the overlays.

With ``--split val`` instead of ``--in-path``, a panoptic network segments that split of its dataset (or of the
one the dataset flags name), and each prediction carries the image's own id and PNG file name, so that
panopticapi's ``pq_compute`` and ``evaluate.py --pred-dir`` match it to the ground truth.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from config_utils.common import explicit_dests
from config_utils.eval_args import inference_parser
from dataloaders import panoptic_split_source
from dataloaders.files import IMAGE_SUFFIXES, files_with_suffix, read_image
from dataloaders.panoptic import resized_shape
from dataloaders.registry import inherit_dataset_flags
from dataloaders.transforms import image_to_input
from engine.cli import resolve_device, run_cli
from evaluation.panoptic import panoptic_prediction
from evaluation.panoptic_quality import id_to_rgb
from evaluation.semantic import predict
from modeling.registry import checkpoint_classes, load_trained_model
from utils.errors import UserError
from utils.labels import overlay, palette_bytes, panoptic_colours
from utils.output_path import check_output_path


def list_images(in_path: Path) -> tuple[list[Path], Path]:
    """The images to segment and the folder their output paths are taken relative to."""
    if in_path.is_file():
        return [in_path], in_path.parent
    if not in_path.is_dir():
        raise UserError(f"--in-path {in_path}: no such file or folder")
    images = files_with_suffix(in_path, IMAGE_SUFFIXES, recursive=True)
    if not images:
        raise UserError(f"--in-path {in_path}: holds no images ({', '.join(IMAGE_SUFFIXES)})")
    stems: dict[Path, Path] = {}
    for image in images:
        other = stems.setdefault(image.relative_to(in_path).with_suffix(""), image)
        if other != image:
            raise UserError(f"--in-path {in_path}: {other.name} and {image.name} would write the same mask; "
                            "rename one of them")
    return images, in_path


class PanopticWriter:
    """COCO-panoptic outputs of an Auto-Panoptic network under ``out``: ``panoptic/<name>.png`` (segment ids as
    R + 256 G + 256² B), ``overlays/<name>.jpg`` and, on ``close``, ``panoptic.json`` (every image's segments,
    with the categories)."""

    def __init__(self, args: argparse.Namespace, model: torch.nn.Module, checkpoint: dict[str, Any],
                 device: torch.device) -> None:
        if list(args.eval_scales) != [1.0] or args.flip or args.resize:
            raise UserError("--eval-scales/--flip/--resize: a panoptic network segments at its own input size")
        self.model, self.device, self.alpha = model.eval(), device, args.overlay_alpha
        self.trained, self.categories = checkpoint["args"], checkpoint["categories"]
        self.things = [c["id"] for c in self.categories if c["isthing"]]
        self.stuff = [c["id"] for c in self.categories if not c["isthing"]]
        self.out, self.annotations = Path(args.out_path), []

    def add(self, image: np.ndarray, image_id: int | str, name: str) -> None:
        """Segment ``image`` (RGB uint8 at its own size, resized as training resized it) and write its outputs as
        ``name`` (a relative path without suffix) under ``image_id``."""
        height, width = image.shape[:2]
        size = resized_shape(height, width, self.trained["min_size"], self.trained["max_size"])
        resized = np.asarray(Image.fromarray(image).resize(size[::-1], Image.Resampling.BILINEAR))
        tensor = torch.from_numpy(np.ascontiguousarray(resized.transpose(2, 0, 1))).float().div(255).to(self.device)
        with torch.no_grad():
            output = self.model([tensor])[0]
        ids, segments = panoptic_prediction(output, self.things, self.stuff, (height, width),
                                            self.trained["stuff_area_limit"])
        png_path, overlay_path = self.out / "panoptic" / f"{name}.png", self.out / "overlays" / f"{name}.jpg"
        png_path.parent.mkdir(parents=True, exist_ok=True)
        overlay_path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(id_to_rgb(ids)).save(png_path)
        colours = panoptic_colours(ids, segments, [c["id"] for c in self.categories], set(self.things))
        blended = (1 - self.alpha) * image + self.alpha * colours
        Image.fromarray(blended.round().clip(0, 255).astype(np.uint8)).save(overlay_path, quality=90)
        self.annotations.append({"image_id": image_id, "file_name": f"{name}.png",
                                 "segments_info": [{**segment, "iscrowd": 0} for segment in segments]})

    def close(self) -> Path:
        (self.out / "panoptic.json").write_text(json.dumps({"annotations": self.annotations,
                                                            "categories": self.categories}) + "\n")
        print(f"segmented {len(self.annotations)} image(s) into {self.out / 'panoptic'} (with "
              f"{self.out / 'panoptic.json'}) and {self.out / 'overlays'}")
        return self.out


def segment_panoptic_split(args: argparse.Namespace, writer: PanopticWriter, explicit: set[str]) -> Path:
    """The ``--split`` of a panoptic dataset, each prediction under the image's id and its PNG's file name."""
    inherit_dataset_flags(args, writer.trained, explicit)
    source = panoptic_split_source(args, writer.categories, args.ckpt)
    for index in tqdm(range(len(source)), desc=f"segmenting {args.dataset} {args.split}", unit="image",
                      disable=None):
        writer.add(source.load(index)[0], source.image_id(index), str(Path(source.png_name(index)).with_suffix("")))
    return writer.close()


def main(argv: list[str] | None = None) -> Path:
    parser = inference_parser()
    args = parser.parse_args(argv)
    if not 0 <= args.overlay_alpha <= 1:
        raise UserError(f"--overlay-alpha {args.overlay_alpha}: expected a value in 0..1")
    if (args.in_path is None) == (args.split is None):
        raise UserError("--in-path: give the images to segment, or --split to segment a panoptic dataset's split "
                        "(one of the two)")
    images, base = list_images(Path(args.in_path)) if args.in_path is not None else ([], Path())
    out = check_output_path("--out-path", args.out_path)
    device = resolve_device(args.device)
    model, checkpoint, spec = load_trained_model(args.ckpt, device)
    if spec.task == "panoptic":
        writer = PanopticWriter(args, model, checkpoint, device)
        if args.split is not None:
            return segment_panoptic_split(args, writer, explicit_dests(parser, argv))
        for path in tqdm(images, desc="segmenting", unit="image", disable=None):
            relative = path.relative_to(base).with_suffix("")
            writer.add(read_image(path), str(relative), str(relative))
        return writer.close()
    if args.split is not None:
        raise UserError(f"--split: segments a panoptic dataset's split; {args.ckpt} is a semantic network, so give "
                        "--in-path (evaluate.py scores a split)")
    palette = checkpoint_classes(checkpoint)[1]
    for path in tqdm(images, desc="segmenting", unit="image", disable=None):
        image = read_image(path)
        with torch.no_grad():
            probabilities = predict(model, image_to_input(image)[None].to(device), args.eval_scales, args.flip,
                                    args.resize)
        classes = probabilities.argmax(dim=1)[0]
        classes_np = classes.to(torch.uint8).cpu().numpy()
        relative = path.relative_to(base).with_suffix("")
        mask_path, overlay_path = out / "masks" / f"{relative}.png", out / "overlays" / f"{relative}.jpg"
        mask_path.parent.mkdir(parents=True, exist_ok=True)
        overlay_path.parent.mkdir(parents=True, exist_ok=True)
        mask = Image.fromarray(classes_np, mode="P")
        mask.putpalette(palette_bytes(palette))
        mask.save(mask_path)
        Image.fromarray(overlay(image, classes_np, palette, args.overlay_alpha)).save(overlay_path, quality=90)
    print(f"segmented {len(images)} image(s) into {out / 'masks'} and {out / 'overlays'}")
    return out


if __name__ == "__main__":
    run_cli(main, "inference.py")
