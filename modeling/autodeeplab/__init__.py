"""Auto-DeepLab (Liu et al., CVPR 2019): the cell and network-level search space, the supernet, decoding and
the retrained network."""
