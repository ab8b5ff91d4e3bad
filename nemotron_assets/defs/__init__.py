"""Component instances: `dg scaffold defs nemotron_assets.components.NemotronPipeline <name>` adds a pipeline here
(<name>/defs.yaml); definitions.py loads every one beside the shipped pipelines."""
