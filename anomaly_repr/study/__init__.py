"""Layer `study`: many runs as one study: the Optuna pool of workers, cells, `reproduce`, the parent run,
the summary over seeds and splits, and the report. The top-level `tuning` package sits at this layer.

May import: tracking and everything below it.
"""
