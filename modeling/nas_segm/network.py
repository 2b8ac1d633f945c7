"""A decoder found by the RL decoder search, on its MobileNetV2 encoder, as a segmentation network for the
retrain stage, registered as the ``nas-segm`` model; and its ``--summary`` table."""

from __future__ import annotations

import json

import torch
import torch.nn.functional as F
from torch import nn

from modeling.architecture_file import architecture_to_json
from modeling.nas_segm.encoder import CVPR_TAPS, WACV_TAPS, MobileNetV2Encoder, load_encoder_weights
from modeling.nas_segm.genotype import DecoderGenotype
from modeling.nas_segm.micro_decoder import MicroDecoder
from modeling.nas_segm.template_decoder import RELEASED_AGG_SIZE, RELEASED_REPEATS, TemplateDecoder
from modeling.registry import ModelSpec, register_model


class DecoderSearchNetwork(nn.Module):
    """Encoder and decoder, by default at the released settings (aggregation width 64, separable convs repeated
    twice, no auxiliary heads; a search trains its candidates at 48, once, with the CVPR auxiliary heads);
    ``forward`` gives logits upsampled to the input size, as every network of the project does."""

    def __init__(self, genotype: DecoderGenotype, num_classes: int, agg_size: int = RELEASED_AGG_SIZE,
                 sep_repeats: int = RELEASED_REPEATS, aux_heads: bool = False, aux_cell: bool = False) -> None:
        super().__init__()
        cvpr = genotype.space == "cvpr"
        self.encoder = MobileNetV2Encoder(CVPR_TAPS if cvpr else WACV_TAPS)
        in_channels = [info.channels for info in self.encoder.feature_info]
        self.decoder = (MicroDecoder(genotype.config, in_channels, num_classes, agg_size, sep_repeats, aux_heads,
                                     aux_cell) if cvpr
                        else TemplateDecoder(genotype.config, in_channels, num_classes, agg_size, sep_repeats))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.decoder(self.encoder(x))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


def summary(model: DecoderSearchNetwork) -> str:
    """Parameters per component; the last line is the total as a plain integer."""
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    rows = [("encoder (MobileNetV2)", count(model.encoder))]
    if isinstance(model.decoder, MicroDecoder):
        rows += [(f"adapt {i}", count(adapt)) for i, adapt in enumerate(model.decoder.adapt)]
        rows += [(f"cell {b}", count(cell)) for b, cell in enumerate(model.decoder.cells)]
    else:
        rows += [(f"block {j}", count(block)) for j, block in enumerate(model.decoder.blocks)]
    rows += [("pre_clf", count(model.decoder.pre_clf)), ("conv_clf", count(model.decoder.conv_clf)),
             ("total", count(model))]
    width = max(len(name) for name, _ in rows)
    return "\n".join([f"{'component':<{width}}  {'params':>10}"] + [f"{name:<{width}}  {n:>10,}" for name, n in rows]
                     + [str(rows[-1][1])])


def build(args: dict, genotype: DecoderGenotype, encoder_weights: str | None) -> DecoderSearchNetwork:
    """The retrained network; its encoder starts from ``encoder_weights`` (--backbone_weights) when given."""
    network = DecoderSearchNetwork(genotype, args["num_classes"])
    if encoder_weights is not None:
        load_encoder_weights(network.encoder, encoder_weights)
    return network


register_model(ModelSpec(
    name=DecoderGenotype.system,
    build=build,
    describe=lambda args, genotype: f"{DecoderGenotype.system} {genotype.space} decoder on MobileNetV2",
    export_metadata=lambda args, genotype: {"model": DecoderGenotype.system,
                                            "architecture": json.dumps(architecture_to_json(genotype))},
    genotype_system=DecoderGenotype.system,
    summary=lambda args, genotype, size: summary(DecoderSearchNetwork(genotype, args["num_classes"])),
    flags=frozenset({"backbone_weights"}),
))
