"""Mancs (ECCV 2018) as torchreid-native parts, its three losses weighted by galw_d2's loss weighting.

Modules (imported on use, not here: torchreid is a heavy import): ``attention`` (FAB), ``model``
(Mancs, torchreid model-factory entries), ``curriculum`` and ``losses`` (curriculum triplet, focal,
attention BCE), ``data`` (SynthPS crops in the Market-1501 layout, torchreid data manager),
``engine`` (``MancsEngine``, ``build_reid_weighting``), ``config`` (``add_reid_config``),
``runner`` (tools/train_reid.py's body). See docs/reid.md.
"""
