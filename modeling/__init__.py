"""Networks, search spaces and architecture files. Importing the package registers every network
(``modeling.registry.MODELS``) and every search system's genotype (``modeling.architecture_file.GENOTYPES``)."""

from modeling import autodeeplab, autopanoptic, deeplabv3plus, nas_segm  # noqa: F401 - register them
