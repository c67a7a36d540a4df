"""Applications over the engine and the GALW workflow: the SynthPS recipe (data + short-run configs),
evaluation with figures, reports, the demo pipeline and the study. The tools in ``tools/`` are thin
command lines over these modules."""
