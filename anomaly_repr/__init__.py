"""anomaly-repr: representation analysis of open-category image anomaly detection, tracked in MLflow."""

__version__ = "0.1.0"
