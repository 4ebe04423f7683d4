"""Layer `tracking`: the only place below the studies that talks to MLflow: where runs go (setup), the
store (logging, reading runs back), dataset lineage, and the runs of `train` and `evaluate`.

May import: engine and everything below it.
"""
