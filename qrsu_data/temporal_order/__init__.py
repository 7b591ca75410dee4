"""The temporal_order TFDS dataset (builder, configs, dataset card)."""

from qrsu_data.temporal_order.temporal_order_dataset_builder import (
    DEFAULT_CONFIG,
    RELEASE_DATES,
    VERSION,
    Builder,
    TemporalOrderConfig,
)

__all__ = ["Builder", "TemporalOrderConfig", "DEFAULT_CONFIG", "VERSION", "RELEASE_DATES"]
