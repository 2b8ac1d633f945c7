"""Auto-DeepLab's search (Liu et al., CVPR 2019): the supernet trained bi-level (``bilevel``), its stage run and
decoding (``stage``). Importing the package registers the system."""

from search.autodeeplab import stage  # noqa: F401 - registers the system
