"""Layer `models`: the backbones (registered architectures) and the served form of a trained model.

May import: data and the base.
"""
