"""Auto-Panoptic (Wu et al., NeurIPS 2020): its search space, registered as the ``autopanoptic`` genotype."""

from modeling.autopanoptic import genotype  # noqa: F401 - registers the genotype
