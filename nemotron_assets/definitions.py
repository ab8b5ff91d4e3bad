"""The code location: every shipped pipeline and every NemotronPipeline component under defs/ as assets, with the
artifact store and hardware profile resources."""

import dagster as dg

import nemotron_assets.defs
from nemotron_assets.factory import build_definitions
from nemotron_assets.paths import PROJECT_ROOT
from nemotron_assets.pipelines import load_pipelines

defs = build_definitions(load_pipelines(), dg.components.load_defs(nemotron_assets.defs, PROJECT_ROOT))
