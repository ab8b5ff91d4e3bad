"""Planning: a goal, the artifacts at hand, the hardware and the user's intents -> ordered, typed stages.

The plan walks backward from the goal: each stage asks for the artifact types it consumes, and `need` answers
with an artifact already at hand (is_a-aware), a chain of catalog converters from one (only across a real
format boundary), or a producer chosen by the catalog's selection rules. Eval bookends are added around every
stage that changes model quality. The result renders as JSON, a Mermaid graph, or a pipeline spec the asset
factory loads as is.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from nemotron_assets.catalog import CATALOG
from nemotron_assets.gates import QUALITY_CATEGORIES
from nemotron_assets.hardware import QUANT_FORMATS, architecture

GPUS = ("h100", "h200", "a100-40gb", "a100-80gb", "b200", "cpu")  # the GPUs of the parallelism table below
EXECUTORS = ("local", "slurm", "k8s", "lepton", "dgxcloud")
TASKS = ("sft", "peft", "pretrain", "cpt", "rl", "translate", "curate", "sdg", "benchmark", "eval")
TASKS += ("quantize", "prune", "distill", "convert")
MODEL_ALIASES = {
    "nano3": "nvidia/NVIDIA-Nemotron-3-Nano-30B-A3B-BF16",
    "super3": "nvidia/NVIDIA-Nemotron-3-Super-120B-A12B-BF16",
}
# Megatron-Bridge parallelism per model family and GPU: (tensor, pipeline, context, micro batch, recompute).
PARALLELISM: dict[tuple[str, str], tuple[int, int, int, int, str | None]] = {
    ("nano3", "a100-40gb"): (4, 2, 1, 1, "full"),
    ("nano3", "a100-80gb"): (4, 1, 2, 1, None),
    ("nano3", "h100"): (4, 1, 2, 2, None),
    ("nano3", "h200"): (4, 1, 2, 4, None),
    ("super3", "a100-80gb"): (8, 4, 1, 1, None),
    ("super3", "h100"): (8, 4, 1, 1, None),
    ("super3", "h200"): (8, 2, 2, 1, None),
}
# Step parameters that name the model a stage works for: the planner sets them all to the planned model.
MODEL_PARAMS = ("tokenizer", "model.pretrained_model_name_or_path", "hf_model_path", "policy.model_name", "hf_model_id")
CHECKPOINTS = ("checkpoint_megatron", "checkpoint_hf", "checkpoint_lora")
INPUT_ROLES = ("base_model", "reward_model")
JSONL_FAMILY = ("training_jsonl", "raw_jsonl", "filtered_jsonl", "translated_jsonl", "synthetic_jsonl")


class Blocked(Exception):
    """The request cannot be served; the message says why and what would unblock it."""


@dataclass(frozen=True)
class Hardware:
    nodes: int = 1
    gpus_per_node: int = 0
    gpu: str = "cpu"
    executor: str = "local"

    @property
    def gpus(self) -> int:
        return 0 if self.gpu == "cpu" else self.nodes * self.gpus_per_node

    @property
    def arch(self) -> str:
        return "cpu" if self.gpu == "cpu" else architecture(self.gpu)


@dataclass(frozen=True)
class Intents:
    model: str = "nano3"
    peft: str | None = None  # "lora" | "none"
    curate: bool = False
    translate: tuple[str, str] | None = None
    translate_backend: str = "llm"
    faith: bool = False
    rl: str | None = None  # "dpo" | "rlvr" | "rlhf"
    data_kind: str | None = None  # "chat" | "plain" | "mcq"
    rl_prep: bool = False  # RL data arrives as HF references or blends, or needs sharding
    seq_length: int | None = None


@dataclass(frozen=True)
class Have:
    """An artifact the user already has: `TYPE[:NAME][=PATH]` on the command line."""

    type: str
    name: str
    path: str | None = None

    @classmethod
    def parse(cls, text: str) -> Have:
        spec, _, path = text.partition("=")
        type_name, _, name = spec.partition(":")
        if type_name not in CATALOG.types:
            raise ValueError(f"unknown artifact type {type_name!r}; known: {', '.join(CATALOG.types)}")
        return cls(type_name, name or type_name, path or None)


@dataclass
class Source:
    name: str
    type: str
    path: str
    description: str


@dataclass
class Stage:
    step: str
    label: str
    consumes: dict[str, str | Stage]  # consumed type -> source name or producing stage
    preset: str
    config: dict[str, Any] = field(default_factory=dict)
    name: str = ""

    @property
    def output(self) -> str:
        return CATALOG.step(self.step).primary_output

    @property
    def category(self) -> str:
        return CATALOG.step(self.step).category


@dataclass
class Plan:
    goal: str
    hardware: Hardware
    sources: list[Source]
    stages: list[Stage]
    warnings: list[str]
    blocked: str | None = None

    def _ref(self, value: str | Stage) -> str:
        return value.name if isinstance(value, Stage) else value

    def to_json(self) -> dict[str, Any]:
        stages = [
            {
                "name": s.name,
                "step": s.step,
                "consumes": [{"type": t, "artifact": self._ref(a)} for t, a in s.consumes.items()],
                "produces": [{"type": s.output, "artifact": s.name}],
                "preset": s.preset,
                "config": s.config,
            }
            for s in self.stages
        ]
        return {
            "goal": self.goal,
            "hardware": vars(self.hardware) | {"gpus": self.hardware.gpus},
            "sources": [vars(s) for s in self.sources],
            "stages": stages,
            "warnings": self.warnings,
            "blocked": self.blocked,
        }

    def to_pipeline(self, name: str) -> dict[str, Any]:
        """A pipeline spec (nemotron_assets/pipelines/*.yaml) of this plan."""
        return {
            "name": name,
            "description": f"Planned by `nemotron-assets plan --goal {self.goal}` for {self.hardware.gpus} GPU(s) "
            f"({self.hardware.gpu}, {self.hardware.executor}).",
            "sources": [vars(s) for s in self.sources],
            "stages": [
                {
                    "name": s.name,
                    "step": s.step,
                    "consumes": {t: self._ref(a) for t, a in s.consumes.items()},
                    "preset": s.preset,
                    "config": s.config,
                }
                for s in self.stages
            ],
        }

    def to_mermaid(self) -> str:
        lines = ["graph LR"]
        lines += [f'  {s.name}[("{s.name}<br/>{s.type}")]' for s in self.sources]
        lines += [f'  {s.name}["{s.name}<br/>{s.step}"]' for s in self.stages]
        lines += [f"  {self._ref(a)} -->|{t}| {s.name}" for s in self.stages for t, a in s.consumes.items()]
        return "\n".join(lines)


@dataclass(frozen=True)
class Model:
    name: str
    family: str | None  # "nano3" / "super3": a Megatron-Bridge recipe exists; None: HF-native
    min_gpus: int  # for Megatron-Bridge training

    @classmethod
    def resolve(cls, text: str) -> Model:
        name = MODEL_ALIASES.get(text.lower(), text)
        family = next((alias for alias, hf in MODEL_ALIASES.items() if hf == name), None)
        minimum = next((m.min_gpus for m in CATALOG.step("sft/megatron_bridge").models if m.name.endswith(name)), 1)
        return cls(name, family, minimum)


class Planner:
    def __init__(self, have: list[Have], hardware: Hardware, intents: Intents):
        self.hw, self.intents = hardware, intents
        self.model = Model.resolve(intents.model)
        self.sources = [Source(h.name, h.type, h.path or _placeholder(h.name), "given") for h in have]
        self.stages: list[Stage] = []
        self.roles: dict[object, str] = {}  # artifact key -> the role it was first used for
        self.warnings: list[str] = []
        self.cpu = hardware.gpus == 0

    # ---- artifacts -------------------------------------------------------------------------------------------

    def available(self) -> list[tuple[str | Stage, str]]:
        """(artifact, type), newest first: stage outputs, then sources."""
        outputs: list[tuple[str | Stage, str]] = [(s, s.output) for s in reversed(self.stages)]
        return outputs + [(s.name, s.type) for s in self.sources]

    def _free(self, artifact: str | Stage, role: str | None) -> bool:
        claimed = self.roles.get(_key(artifact))
        return role is None or claimed is None or claimed == role

    def _claim(self, artifact: str | Stage, role: str | None) -> str | Stage:
        if role is not None:
            self.roles.setdefault(_key(artifact), role)
        return artifact

    def need(self, type_name: str, role: str | None = None) -> str | Stage:
        """An artifact of `type_name`: one at hand, one converted from one at hand, or a newly planned one.

        Base and reward models are inputs: they come from what the user has (never an adapter), not from this
        plan's training.
        """
        candidates = self.available()
        if role in INPUT_ROLES:
            candidates = [(a, t) for a, t in candidates if not isinstance(a, Stage) and t != "checkpoint_lora"]
        for artifact, have in candidates:
            if CATALOG.is_a(have, type_name) and self._free(artifact, role):
                return self._claim(artifact, role)
        for artifact, have in candidates:
            path = converter_path(have, type_name)
            if path and self._free(artifact, role):
                return self._claim(self.convert(artifact, path), role)
        return self._claim(self.produce(type_name, role), role)

    def source(self, name: str, type_name: str, description: str) -> str:
        existing = next((s for s in self.sources if s.name == name), None)
        if existing is None:
            self.sources.append(Source(name, type_name, _placeholder(name), description))
            self.warn(f"provide {name} ({type_name}): set {_placeholder(name)} or pass --have {type_name}:{name}=PATH")
        return name

    def add(self, step: str, label: str, consumes: dict[str, str | Stage], **config: Any) -> Stage:
        """Append a stage; parameters that name the model (tokenizer, model id, ...) get the planned model."""
        spec = CATALOG.step(step)
        preset = config.pop("preset", None) or ("tiny" if self.cpu and "tiny" in spec.presets else "default")
        if preset not in spec.presets:
            preset = next(iter(spec.presets))
        config = {p.name: self.model.name for p in spec.parameters if p.name in MODEL_PARAMS} | config
        stage = Stage(step, label, consumes, preset, {k: v for k, v in config.items() if v is not None})
        self.stages.append(stage)
        return stage

    def warn(self, message: str) -> None:
        if message not in self.warnings:
            self.warnings.append(message)

    def convert(self, artifact: str | Stage, steps: list[str]) -> Stage:
        for step in steps:
            consumes: dict[str, str | Stage] = {CATALOG.step(step).consumes[0].type: artifact}
            if step == "convert/merge_lora":
                consumes["checkpoint_hf"] = self.need("checkpoint_hf", "base_model")
            artifact = self.add(step, step.split("/")[-1], consumes)
        return artifact

    # ---- producers of intermediate types ---------------------------------------------------------------------

    def produce(self, type_name: str, role: str | None) -> str | Stage:
        if type_name == "packed_parquet":
            data = self.need("training_jsonl", "sft_data")
            return self.add(
                "data_prep/sft_packing", "sft_packing", {"training_jsonl": data}, pack_size=self.seq_length()
            )
        if type_name == "binidx":
            corpus = self.need("filtered_jsonl", "corpus")
            return self.add("data_prep/pretrain_prep", "pretrain_prep", {"filtered_jsonl": corpus})
        if type_name == "filtered_jsonl":
            return self.ready_corpus(role or "corpus")
        if type_name == "checkpoint_lora":
            return self.peft()
        if type_name in ("checkpoint_megatron", "checkpoint_hf") and role in (None, "policy"):
            self.sft()  # its output may be another checkpoint type: converters bridge it
            return self.need(type_name, role)
        if type_name == "checkpoint_megatron" and role == "base_model":
            return self.convert(self.need("checkpoint_hf", role), converter_path("checkpoint_hf", type_name))
        if type_name in ("mcq_benchmark_parquet", "benchmark_parquet"):
            return self.benchmark()
        if type_name == "eval_results":
            return self.evaluate()
        descriptions = {"base_model": f"HF checkpoint of {self.model.name}", "reward_model": "the reward (judge) model"}
        name = role or type_name
        return self.source(name, type_name, descriptions.get(name, f"your {type_name}"))

    def ready_corpus(self, role: str) -> str | Stage:
        """filtered_jsonl: a user corpus counts as ready unless cleaning is asked for (--curate)."""
        if self.intents.curate:
            return self.curated(role)
        corpus = self.user_corpus(role)
        if corpus is None:
            return self.source(role, "filtered_jsonl", "the corpus (treated as ready; pass --curate to clean it)")
        if corpus.type != "filtered_jsonl":
            self.warn(f"treating {corpus.name} ({corpus.type}) as a ready corpus; pass --curate to clean it first")
            corpus.type = "filtered_jsonl"
        return corpus.name

    def user_corpus(self, role: str) -> Source | None:
        return next((s for s in self.sources if s.type in JSONL_FAMILY and self._free(s.name, role)), None)

    def curated(self, role: str) -> Stage:
        """NeMo Curator over the user's corpus (declared raw), or over a raw corpus still to be provided."""
        corpus = self.user_corpus(role)
        if corpus is None:
            raw: str | Stage = self.source(role, "raw_jsonl", "the raw corpus to clean")
        else:
            corpus.type, raw = "raw_jsonl", corpus.name
        return self.add("curate/nemo_curator", "curate", {"raw_jsonl": raw})

    def seq_length(self) -> int | None:
        return self.intents.seq_length or (None if self.cpu else 4096)

    # ---- routes for goals ------------------------------------------------------------------------------------

    def require_gpus(self, what: str) -> None:
        if self.cpu:
            raise Blocked(f"insufficient_hardware: {what} needs GPUs; pick a GPU profile (--gpu, --gpus-per-node)")

    def sft(self) -> Stage:
        if self.intents.data_kind == "plain":
            raise Blocked(
                "SFT needs chat data (OpenAI messages); plain text goes to continued pretraining (--goal cpt)"
            )
        if self.intents.peft == "lora":
            return self.peft()
        model = self.model
        if model.family:
            if self.hw.gpus >= model.min_gpus:
                return self.megatron("sft/megatron_bridge", "sft", peft="null")
            self.require_gpus(f"{model.family} SFT")
            self.warn(
                f"{model.family} SFT via Megatron-Bridge needs >= {model.min_gpus} GPUs, the profile has "
                f"{self.hw.gpus}: falling back to AutoModel + LoRA"
            )
            return self.peft(automodel=True)
        self.no_packed_parquet_for_automodel()
        if self.cpu:
            self.warn("CPU: AutoModel trains only tiny models here")
        elif self.hw.gpus <= 4:
            self.warn(f"{self.hw.gpus} GPU(s): LoRA is recommended for AutoModel SFT on 1-4 GPUs (--peft lora)")
        return self.add("sft/automodel", "sft", {"training_jsonl": self.need("training_jsonl", "sft_data")})

    def peft(self, automodel: bool = False) -> Stage:
        model = self.model
        megatron_base = any(t == "checkpoint_megatron" for _, t in self.available())
        multi_node_packed = self.hw.nodes > 1 and any(t == "packed_parquet" for _, t in self.available())
        if not automodel and model.family and (megatron_base or multi_node_packed):
            if self.hw.gpus >= model.min_gpus:
                return self.megatron("peft/megatron_bridge", "peft", base=True)
            self.warn(f"{model.family} LoRA via Megatron-Bridge needs >= {model.min_gpus} GPUs: using AutoModel")
        if model.family:
            self.require_gpus(f"{model.family} LoRA")
        self.no_packed_parquet_for_automodel()
        return self.add("peft/automodel", "peft", {"training_jsonl": self.need("training_jsonl", "sft_data")})

    def no_packed_parquet_for_automodel(self) -> None:
        types = {t for _, t in self.available()}
        if "packed_parquet" in types and not any(t in types for t in JSONL_FAMILY):
            error = next(
                e for e in CATALOG.step("sft/automodel").errors if e.name == "packed_parquet_used_with_automodel"
            )
            raise Blocked(f"{error.name}: {error.recovery}")

    def megatron(self, step: str, label: str, base: bool = False, **config: Any) -> Stage:
        """A Megatron-Bridge training stage on packed data, with parallelism for the model and hardware."""
        seq = self.seq_length()
        consumes: dict[str, str | Stage] = {"packed_parquet": self.need("packed_parquet", "sft_data")}
        if base or any(t == "checkpoint_megatron" for _, t in self.available()):
            consumes["checkpoint_megatron"] = self.need("checkpoint_megatron", "base_model")
        config |= {"seq_length": seq} | self.parallelism(step, packed=True)
        if step == "sft/megatron_bridge":
            config["dataset.packed_sequence_specs.packed_sequence_size"] = seq
        return self.add(step, label, consumes, **config)

    def parallelism(self, step: str, packed: bool) -> dict[str, Any]:
        """TP/PP/CP and micro batch from the hardware table; global batch a multiple of data parallel x micro batch."""
        family, gpu = self.model.family, self.hw.gpu
        if family is None:
            raise Blocked(
                f"no Megatron-Bridge recipe for {self.model.name}: train this HF model with AutoModel (--goal sft)"
            )
        if gpu == "b200" and (family, gpu) not in PARALLELISM:
            self.warn("no B200 row in the hardware table: using the H200 layout")
            gpu = "h200"
        if (family, gpu) not in PARALLELISM:
            raise Blocked(
                f"insufficient_hardware: {family} on {self.hw.gpu} is not recommended; use A100 80GB or newer"
            )
        tp, pp, cp, mbs, recompute = PARALLELISM[(family, gpu)]
        if tp > self.hw.gpus_per_node:
            self.warn(f"tensor parallel {tp} exceeds {self.hw.gpus_per_node} GPUs per node: kept within one node")
            tp = self.hw.gpus_per_node
        if self.hw.gpus % (tp * pp * cp):
            raise Blocked(f"insufficient_hardware: {self.hw.gpus} GPUs do not divide into TP{tp} x PP{pp} x CP{cp}")
        if packed and mbs != 1:
            self.warn(f"packed sequences need micro batch 1 (the table's {mbs} applies to unpacked data)")
            mbs = 1
        unit = self.hw.gpus // (tp * pp * cp) * mbs
        batch = CATALOG.step(step).preset_values("default")["train.global_batch_size"]
        if batch % unit:
            self.warn(
                f"global batch {batch} raised to {-(-batch // unit) * unit}, a multiple of data parallel x micro batch"
            )
            batch = -(-batch // unit) * unit
        return {
            "model.tensor_model_parallel_size": tp,
            "model.pipeline_model_parallel_size": pp,
            "model.context_parallel_size": cp,
            "model.recompute_granularity": recompute,
            "train.micro_batch_size": mbs,
            "train.global_batch_size": batch,
        }

    def pretrain(self, cpt: bool) -> Stage:
        model, label = self.model, "cpt" if cpt else "pretrain"
        bins = self.need("binidx", "corpus")
        if model.family and self.hw.gpus >= model.min_gpus:
            consumes: dict[str, str | Stage] = {"binidx": bins}
            if cpt and any(t == "checkpoint_megatron" for _, t in self.available()):
                consumes["checkpoint_megatron"] = self.need("checkpoint_megatron", "base_model")
            config = {"load_hf_weights": cpt, "seq_length": self.seq_length()}
            config |= self.parallelism("pretrain/megatron_bridge", packed=False) | (
                {"optimizer.lr": 3e-5} if cpt else {}
            )
            return self.add("pretrain/megatron_bridge", label, consumes, **config)
        if model.family:
            self.require_gpus(f"{model.family} {label}")
            self.warn(f"{model.family} {label} via Megatron-Bridge needs >= {model.min_gpus} GPUs: using AutoModel")
        config = {"load_weights": cpt} | ({"optimizer.lr": 3e-5} if cpt else {})
        return self.add("pretrain/automodel", label, {"binidx": bins}, **config)

    def rl(self) -> Stage:
        kind = self.intents.rl
        if kind is None:
            kind = "dpo"
            self.warn("no --rl given: planning DPO (static preference pairs)")
        self.require_gpus(f"RL ({kind}) with NeMo-RL")
        data = self.rl_data(kind)
        policy = self.need("checkpoint_megatron", "policy")  # warm start from a validated SFT checkpoint
        consumes: dict[str, str | Stage] = {"training_jsonl": data, "checkpoint_megatron": policy}
        if kind == "rlhf":
            consumes["checkpoint_hf"] = self.need("checkpoint_hf", "reward_model")
        return self.add(f"rl/nemo_rl/{kind}", kind, consumes)

    def rl_data(self, kind: str) -> str | Stage:
        at_hand = next(
            (a for a, t in self.available() if CATALOG.is_a(t, "training_jsonl") and self._free(a, "rl_data")), None
        )
        if at_hand is None and kind == "dpo":
            pairs = self._claim(self.add("sdg/data_designer", "sdg", {}, preset="rl_pref"), "rl_data")
            return self._claim(
                self.add("data_prep/rl_prep", "rl_prep", {"training_jsonl": pairs}, kind="dpo"), "rl_data"
            )
        data = self.need("training_jsonl", "rl_data")
        if self.intents.rl_prep:
            shape = kind if kind in ("dpo", "rlvr") else "auto"
            data = self.add("data_prep/rl_prep", "rl_prep", {"training_jsonl": data}, kind=shape)
        return self._claim(data, "rl_data")

    def benchmark_guard(self) -> bool:
        """MCQ / benchmark data goes to byob/mcq, never to translate/nemo_curator."""
        benchmark_types = ("benchmark_parquet", "benchmark_source_corpus")
        return self.intents.data_kind == "mcq" or any(
            CATALOG.is_a(t, b) for _, t in self.available() for b in benchmark_types
        )

    def languages(self) -> tuple[str, str]:
        if self.intents.translate is None:
            raise Blocked("translation needs explicit languages: --translate SRC:TGT (e.g. en:th)")
        return self.intents.translate

    def translate(self) -> Stage:
        source, target = self.languages()
        if self.benchmark_guard():
            benchmark = next((a for a, t in self.available() if CATALOG.is_a(t, "benchmark_parquet")), None)
            description = "the MCQ benchmark to translate, as BYOB parquet (question, options, answer_index, ...)"
            return self.byob_translate(benchmark or self.source("benchmark", "mcq_benchmark_parquet", description))
        corpus = self.need("filtered_jsonl", "corpus")
        plain = self.intents.data_kind == "plain"
        config = {
            "source_language": source,
            "target_language": target,
            "backend": self.intents.translate_backend,
            "faith_eval.enabled": self.intents.faith,
            "text_field": "text" if plain else "messages.*.content",
            "reconstruct_messages": not plain,
        }
        return self.add("translate/nemo_curator", "translate", {"filtered_jsonl": corpus}, **config)

    def byob_translate(self, benchmark: str | Stage) -> Stage:
        source, target = self.languages()
        config = {"stage": "translate", "source_language": source, "target_language": target}
        return self.add("byob/mcq", "byob_translate", {"benchmark_parquet": benchmark}, preset="translate", **config)

    def benchmark(self) -> Stage:
        corpus = self.need("benchmark_source_corpus", "benchmark_corpus")
        generated = self.add("byob/mcq", "byob_generate", {"benchmark_source_corpus": corpus})
        return self.byob_translate(generated) if self.intents.translate else generated

    def sdg(self) -> Stage:
        seeds = next((a for a, t in self.available() if CATALOG.is_a(t, "training_jsonl")), None)
        preset = "rl_pref" if self.intents.rl == "dpo" else None
        return self.add("sdg/data_designer", "sdg", {"training_jsonl": seeds} if seeds else {}, preset=preset)

    def evaluate(self) -> Stage:
        checkpoint = next(((a, t) for a, t in self.available() if t in CHECKPOINTS), None)
        if checkpoint is None:
            return self.add("eval/model_eval", "eval", {}, role="standalone", model=self.model.name)
        return self.add("eval/model_eval", "eval", {checkpoint[1]: checkpoint[0]}, role="standalone")

    def optimize(self, kind: str) -> Stage:
        source = self.need("checkpoint_hf", "base_model")
        step = f"optimize/modelopt/{kind}"
        if kind != "quantize":
            return self.add(step, kind, {"checkpoint_hf": source})
        quant = QUANT_FORMATS.get(self.hw.arch)
        if quant is None:
            quant = "fp8" if self.cpu else "int8_sq"
            self.warn(
                "CPU: fake-quant FP8 for validation only"
                if self.cpu
                else f"{self.hw.gpu} has no FP8/NVFP4: using INT8 SmoothQuant"
            )
        preset = "tiny" if self.cpu else quant if quant in CATALOG.step(step).presets else "default"
        return self.add(step, kind, {"checkpoint_hf": source}, preset=preset, **{"args.export_quant_cfg": quant})

    def convert_goal(self) -> Stage:
        for have, target in (("checkpoint_lora", "checkpoint_hf"), ("checkpoint_megatron", "checkpoint_hf")):
            found = next((a for a, t in self.available() if t == have), None)
            if found is not None:
                return self.convert(found, converter_path(have, target))
        found = next((a for a, t in self.available() if t == "checkpoint_hf"), None)
        if found is None:
            raise Blocked("convert needs a checkpoint: --have checkpoint_megatron | checkpoint_hf | checkpoint_lora")
        return self.convert(found, converter_path("checkpoint_hf", "checkpoint_megatron"))

    def explicit_step(self, step_id: str) -> Stage:
        """A goal naming a catalog step: its own consumes, no fallback routing (insufficient hardware blocks)."""
        step = CATALOG.step(step_id)
        minimum = max([step.min_gpus] + [m.min_gpus for m in step.models if m.name.endswith(self.model.name)])
        if self.hw.gpus < minimum:
            raise Blocked(f"insufficient_hardware: {step_id} needs >= {minimum} GPUs, the profile has {self.hw.gpus}")
        routes = {
            "sft/megatron_bridge": lambda: self.megatron(step_id, "sft", peft="null"),
            "peft/megatron_bridge": lambda: self.megatron(step_id, "peft", base=True),
            "pretrain/megatron_bridge": lambda: self.pretrain(cpt=False),
            "translate/nemo_curator": self.translate,
            "byob/mcq": self.benchmark,
            "eval/model_eval": self.evaluate,
        }
        if step_id in routes:
            return routes[step_id]()
        consumes = {p.type: self.need(p.type) for p in step.consumes if p.required}
        return self.add(step_id, step_id.split("/")[-1], consumes)

    def goal(self, goal: str) -> Stage | None:
        routes = {
            "sft": self.sft,
            "peft": self.peft,
            "pretrain": lambda: self.pretrain(cpt=False),
            "cpt": lambda: self.pretrain(cpt=True),
            "rl": self.rl,
            "translate": self.translate,
            "curate": lambda: self.curated("corpus"),
            "sdg": self.sdg,
            "benchmark": self.benchmark,
            "eval": self.evaluate,
            "quantize": lambda: self.optimize("quantize"),
            "prune": lambda: self.optimize("prune"),
            "distill": lambda: self.optimize("distill"),
            "convert": self.convert_goal,
        }
        if goal in routes:
            return routes[goal]()
        if goal in CATALOG.steps:
            return self.explicit_step(goal)
        if goal in CATALOG.types:
            if any(CATALOG.is_a(t, goal) for _, t in self.available()):
                self.warn(f"{goal} is already at hand: nothing to do")
                return None
            if goal in ("mcq_benchmark_parquet", "translated_mcq_benchmark_parquet", "benchmark_parquet"):
                return self.benchmark()
            if goal == "translated_jsonl":
                return self.translate()
            if goal in ("raw_jsonl", "training_jsonl", "benchmark_source_corpus"):
                raise Blocked(f"{goal} is an input: pass it with --have {goal}=PATH (or generate data with --goal sdg)")
            return self.need(goal)
        raise Blocked(f"unknown goal {goal!r}: a step id, an artifact type, or one of {', '.join(TASKS)}")

    # ---- eval bookends -------------------------------------------------------------------------------------

    def add_bookends(self) -> None:
        """Evaluate before and after every quality-changing stage; one eval serves as `after` and next `before`."""
        ordered: list[Stage] = []
        after_of: dict[int, Stage] = {}  # id(checkpoint stage) -> its after-eval
        for stage in self.stages:
            if stage.category not in QUALITY_CATEGORIES:
                ordered.append(stage)
                continue
            start = next(((t, a) for t, a in stage.consumes.items() if t in CHECKPOINTS), None)
            if start is not None and isinstance(start[1], Stage) and id(start[1]) in after_of:
                after_of[id(start[1])].config["also_before"] = stage
            else:
                consumes = {start[0]: start[1]} if start else {}
                config = {} if start else {"model": self.model.name}
                ordered.append(self.bookend("before", stage, consumes, config))
            ordered.append(stage)
            after = self.bookend("after", stage, {stage.output: stage}, {})
            ordered.append(after)
            after_of[id(stage)] = after
        self.stages = ordered

    def bookend(self, role: str, target: Stage, consumes: dict[str, str | Stage], config: dict[str, Any]) -> Stage:
        preset = "tiny" if self.cpu else "default"
        return Stage(
            "eval/model_eval",
            f"eval_{role}_{target.label}",
            consumes,
            preset,
            {"role": role, "target": target} | config,
        )

    def finish(self) -> None:
        for index, stage in enumerate(self.stages, 1):
            stage.name = f"{index:02d}_{stage.label}"
        for stage in self.stages:
            stage.config = {k: v.name if isinstance(v, Stage) else v for k, v in stage.config.items()}


def converter_path(have: str, want: str) -> list[str] | None:
    """The shortest chain of catalog converters from one artifact type to another (None if there is none)."""
    if CATALOG.is_a(have, want):
        return None
    queue, seen = deque([(have, [])]), {have}
    while queue:
        current, steps = queue.popleft()
        for target, step in CATALOG.types[current].convert_to.items():
            if CATALOG.is_a(target, want):
                return [*steps, step]
            if target not in seen:
                seen.add(target)
                queue.append((target, [*steps, step]))
    return None


def _key(artifact: str | Stage) -> object:
    return id(artifact) if isinstance(artifact, Stage) else artifact


def _placeholder(name: str) -> str:
    return "${NEMOTRON_INPUT_" + re.sub(r"\W", "_", name).upper() + "}"


def plan(goal: str, have: list[Have], hardware: Hardware, intents: Intents) -> Plan:
    """Stages that reach `goal` from the artifacts at hand on this hardware, with eval bookends, or why not."""
    planner = Planner(have, hardware, intents)
    try:
        planner.goal(goal)
    except Blocked as e:
        return Plan(goal, hardware, [], [], planner.warnings, str(e))
    planner.add_bookends()
    planner.finish()
    return Plan(goal, hardware, planner.sources, planner.stages, planner.warnings)
