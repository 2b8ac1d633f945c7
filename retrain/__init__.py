"""Retraining a searched architecture from scratch: Auto-Panoptic's multi-step PQ retrain (``panoptic``).
``train_new_model.py`` runs it for an Auto-Panoptic architecture and the semantic retrain for the others."""
