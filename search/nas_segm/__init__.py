"""The decoder search of Nekrasov et al. (CVPR 2019, WACV 2020): the controller (``controller``), the agents that
teach it (``agents``), the training and scoring of one candidate (``candidates``) and the search stage (``stage``).
Importing the package registers the system."""

from search.nas_segm import stage  # noqa: F401 - registers the system
