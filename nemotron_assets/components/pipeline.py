"""`NemotronPipeline`: a pipeline spec as a Dagster component, so `dg` scaffolds, checks and lists it.

Its attributes are the pipeline YAML of nemotron_assets/pipelines (the same model, PipelineFields, is its schema: an
unknown key or artifact type is an error `dg check yaml` reports at its line); loading type-checks the spec against
the catalog (PipelineSpec.parse), and `build_defs` builds its assets, checks and automation as a shipped pipeline's.
"""

from __future__ import annotations

import dagster as dg

from nemotron_assets.pipelines import PipelineFields, PipelineSpec


class NemotronPipelineScaffolder(dg.Scaffolder):
    """`dg scaffold defs nemotron_assets.components.NemotronPipeline <name>`: an SFT pipeline on the shipped tiny
    data and base model, evaluated on held-out rows before and after training, named after its folder."""

    def scaffold(self, request: dg.ScaffoldRequest) -> None:
        model = "${NEMOTRON_BASE_MODEL}"
        dg.scaffold_component(
            request,
            {
                "name": request.target_path.name,
                "description": "Supervised fine-tuning with NeMo AutoModel, gated by held-out evaluations.",
                "sources": [
                    {"name": "chat", "type": "training_jsonl", "path": "${NEMOTRON_DATA}/tiny_chat.jsonl"},
                    {"name": "base_model", "type": "checkpoint_hf", "path": model},
                ],
                "evaluation": {"data": {"training_jsonl": "chat_split"}, "preset": "tiny"},
                "stages": [
                    {"name": "chat_split", "step": "data_prep/split", "consumes": {"training_jsonl": "chat"}},
                    {
                        "name": "sft",
                        "step": "sft/automodel",
                        "consumes": {"training_jsonl": "chat_split"},
                        "preset": "tiny",
                        "config": {"model.pretrained_model_name_or_path": model},
                    },
                ],
            },
        )


@dg.scaffold_with(NemotronPipelineScaffolder)
class NemotronPipeline(dg.Component):
    """A Nemotron customization pipeline: external sources and catalog steps, as assets keyed `<name>/<artifact>`."""

    def __init__(self, spec: PipelineSpec):
        self.spec = spec

    @classmethod
    def get_schema(cls) -> type[PipelineFields]:
        """The attributes' schema is the pipeline YAML's own (no `{{ }}` templating: pipelines use ${VAR})."""
        return PipelineFields

    @classmethod
    def load(cls, attributes: PipelineFields, context: dg.ComponentLoadContext) -> NemotronPipeline:
        return cls(PipelineSpec.parse(attributes.model_dump(exclude_unset=True)))

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        from nemotron_assets.factory import pipeline_definitions

        return pipeline_definitions(self.spec)
