"""One module per real dataset; each registers itself with ``dataloaders.registry`` on import."""
