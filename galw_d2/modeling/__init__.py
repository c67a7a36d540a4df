"""Person-search models: NAE, AlignPS and ROI-AlignPS* as detectron2 meta-architectures."""
