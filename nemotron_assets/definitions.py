"""The code location: every shipped pipeline as assets, with the artifact store and hardware profile resources."""

from nemotron_assets.factory import build_definitions
from nemotron_assets.pipelines import load_pipelines

defs = build_definitions(load_pipelines())
