"""Scoring networks: the confusion matrix and its metrics (``metrics``), semantic validation and reports
(``semantic``), panoptic quality with the official rules (``panoptic_quality``) and the panoptic validation of a
network (``panoptic``)."""
