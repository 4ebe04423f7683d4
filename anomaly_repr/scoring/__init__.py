"""Layer `scoring`: a model's outputs (extraction), the scorer contract, the classic, feature and oracle
scorers, anomaly metrics, and the bootstrap behind every interval.

May import: models, data and the base.
"""
