"""Auto-Panoptic (Wu et al., NeurIPS 2020): its search space and network, registered as the ``autopanoptic``
genotype and model."""

from modeling.autopanoptic import network  # noqa: F401 - registers the genotype and the network
