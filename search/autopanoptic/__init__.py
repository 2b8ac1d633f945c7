"""Auto-Panoptic's search (Wu et al., NeurIPS 2020): fair path sampling, learning-rate groups and the greedy path
search bookkeeping (``one_shot``), and the search stage (the supernet, then the greedy search), its decoding and its
random search (``stage``). Importing the package registers the system."""

from search.autopanoptic import stage  # noqa: F401 - registers the system
