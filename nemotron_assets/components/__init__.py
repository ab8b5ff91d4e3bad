"""Dagster component types of this project (the `dg` registry module): `NemotronPipeline`."""

from nemotron_assets.components.pipeline import NemotronPipeline

__all__ = ["NemotronPipeline"]
