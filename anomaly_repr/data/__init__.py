"""Layer `data`: image sources, the open-set split, the batch pipeline and augmentation.

May import: config, errors, registry (the base). Nothing here knows of models, scorers or runs.
"""
