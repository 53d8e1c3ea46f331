from treg_exp.metrics.base import DatasetMetric, ImageMetric, MetricContext, MetricSuite

__all__ = ["DatasetMetric", "ImageMetric", "MetricContext", "MetricSuite"]
