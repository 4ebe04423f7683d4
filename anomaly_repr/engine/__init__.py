"""Layer `engine`: one model's life without tracking: prepare the data, fit (train a method), evaluate
(extract and score), and the figures of one model.

May import: methods, scoring, models, data and the base; never MLflow.
"""
