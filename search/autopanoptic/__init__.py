"""Auto-Panoptic's search (Wu et al., NeurIPS 2020): fair path sampling, learning-rate groups and the greedy path
search (``one_shot``), and the supernet's stage run and the search that decodes it (``stage``). Importing the
package registers the system."""

from search.autopanoptic import stage  # noqa: F401 - registers the system
