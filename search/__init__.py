"""Search strategies: how each system searches, decodes its checkpoints and draws its architectures
(``search.registry.SYSTEMS``). Importing the package registers every system."""

from search import autodeeplab, autopanoptic, nas_segm  # noqa: F401 - registers them
