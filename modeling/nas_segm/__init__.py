"""The decoder search of Nekrasov et al. (CVPR 2019, WACV 2020): its MobileNetV2 encoder, ops and WACV
decoder, registered as the ``nas-segm`` genotype and model."""

from modeling.nas_segm import network  # noqa: F401 - registers the genotype and the network
