"""nemotron-assets: the Nemotron customization step catalog as Dagster software-defined assets."""
