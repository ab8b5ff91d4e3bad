"""Planning: a goal, the artifacts at hand, the hardware and the user's intents -> ordered, typed stages.

The plan walks backward from the goal: each stage asks for the artifact types it consumes, and `need` answers
with an artifact already at hand (is_a-aware), a chain of catalog converters from one (only across a real
format boundary), or a producer chosen by the catalog's selection rules (catalog/rules.toml): routes pick the
step of a task from facts of the model, hardware, data and intents; data intents insert their steps on the data;
every intent must be honoured by some stage. The plan carries an `evaluation:` section, so pipelines/bookends.py
inserts the eval bookends as it does for written pipelines (a stage loading its model by parameter starts from a
declared checkpoint_hf source, which its before-evaluation scores). The result renders as JSON, a Mermaid graph,
or a pipeline spec the asset factory loads as is.
"""

from __future__ import annotations

import dataclasses
import re
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from nemotron_assets.catalog import CATALOG, CatalogError
from nemotron_assets.catalog.models import FactValue, IntentRule, Parallelism, Route
from nemotron_assets.hardware import QUANT_FORMATS, architecture, memory_gib
from nemotron_assets.pipelines import PipelineSpec
from nemotron_assets.pipelines.bookends import CHECKPOINTS, EVAL, bookended, model_path
from nemotron_assets.pipelines.models import Evaluation, Source, Stage

RULES = CATALOG.rules
GPUS = (*dict.fromkeys(row.gpu for row in RULES.parallelism), "b200", "cpu")  # B200 takes H200's layout
EXECUTORS = ("local", "slurm", "k8s", "lepton", "dgxcloud")
TASKS = ("sft", "peft", "pretrain", "cpt", "rl", "translate", "curate", "sdg", "benchmark", "eval")
TASKS += ("quantize", "prune", "distill", "convert")
NOT_APPLICABLE = "intent_not_applicable"  # the named error of an intent no stage of the plan can honour
INPUT_ROLES = ("base_model", "reward_model")
Fired = Route | IntentRule | Parallelism  # a rule of rules.toml that shaped a plan (--explain)
DECLARED = set(CATALOG.contract_errors) | {e.name for step in CATALOG.steps.values() for e in step.errors}


class Blocked(Exception):
    """The request cannot be served: a named error (errors.toml or a step's), why, and what would unblock it."""

    def __init__(self, error: str, detail: str):
        if error not in DECLARED:
            raise CatalogError(f"the planner blocks with {error!r}, which no step or errors.toml declares")
        super().__init__(f"{error}: {detail}")


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
    """What the user asked for beside the goal; catalog/rules.toml says which stage honours each."""

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


_unknown = {rule.intent for rule in RULES.intent} - {f.name for f in dataclasses.fields(Intents)}
if _unknown:
    raise CatalogError(f"rules.toml names intents planning.Intents does not have: {sorted(_unknown)}")


@dataclass(frozen=True)
class MemoryEstimate:
    """Per-GPU memory of full SFT (weights, gradients and optimizer state) and of LoRA (the frozen weights),
    sharded over the GPUs, against what each GPU has (catalog/rules.toml [memory])."""

    parameters_b: float | None  # billions, read from the model's name (30B, 8B); None: unknown
    gpus: int
    gpu_gib: int | None

    def _per_gpu(self, bytes_per_parameter: float) -> float | None:
        if self.parameters_b is None or self.gpus == 0:
            return None
        return round(self.parameters_b * 1e9 * bytes_per_parameter / self.gpus / 2**30, 1)

    @property
    def full_gib(self) -> float | None:
        m = RULES.memory
        return self._per_gpu(m.weight_bytes + m.gradient_bytes + m.optimizer_bytes)

    @property
    def lora_gib(self) -> float | None:
        return self._per_gpu(RULES.memory.weight_bytes)

    @property
    def fits(self) -> str:
        if self.full_gib is None or self.gpu_gib is None:
            return "unknown"
        return "yes" if self.full_gib <= self.gpu_gib * RULES.memory.usable_fraction else "no"

    def to_json(self) -> dict[str, Any]:
        return {
            "parameters_b": self.parameters_b,
            "gpus": self.gpus,
            "gpu_gib": self.gpu_gib,
            "usable_fraction": RULES.memory.usable_fraction,
            "full_sft_gib_per_gpu": self.full_gib,
            "lora_gib_per_gpu": self.lora_gib,
            "full_sft_fits": self.fits,
        }


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
class Plan:
    """The planned stages and the `evaluation:` section that bookends them; `spec` is the pipeline they make,
    with the bookends inserted (pipelines/bookends.py, the one place evaluations are inserted)."""

    goal: str
    hardware: Hardware
    sources: list[Source]
    stages: list[Stage]
    warnings: list[str]
    blocked: str | None = None
    fired: list[Fired] = field(default_factory=list)  # the selection rules that shaped the plan
    memory: MemoryEstimate | None = None
    evaluation: Evaluation | None = None

    def spec(self, name: str = "plan") -> PipelineSpec:
        """The plan as a type-checked pipeline, its evaluation section's bookends in place."""
        return PipelineSpec.parse(self.to_pipeline(name))

    def to_json(self) -> dict[str, Any]:
        stages = [
            {
                "name": s.name,
                "step": s.step,
                "consumes": [{"type": t, "artifact": a} for t, a in s.consumes.items()],
                "produces": [{"type": CATALOG.step(s.step).primary_output, "artifact": s.name}],
                "preset": s.preset,
                "config": s.config,
            }
            for s in self.spec().stages
        ]
        return {
            "goal": self.goal,
            "hardware": vars(self.hardware) | {"gpus": self.hardware.gpus},
            "sources": [_source_json(s) for s in self.sources],
            "stages": stages,
            "warnings": self.warnings,
            "blocked": self.blocked,
        }

    def explain(self) -> dict[str, Any]:
        """The rules that fired, in order, each with the seed sentence it encodes, and the memory estimate."""
        return {
            "rules": [{"rule": r.id, "cite": r.cite} for r in self.fired],
            "memory": self.memory.to_json() if self.memory else None,
        }

    def to_pipeline(self, name: str) -> dict[str, Any]:
        """A pipeline spec (nemotron_assets/pipelines/*.yaml) of this plan."""
        return {
            "name": name,
            "description": f"Planned by `nemotron-assets plan --goal {self.goal}` for {self.hardware.gpus} GPU(s) "
            f"({self.hardware.gpu}, {self.hardware.executor}).",
            "sources": [_source_json(s) for s in self.sources],
            "stages": [s.model_dump(include={"name", "step", "consumes", "preset", "config"}) for s in self.stages],
        } | ({"evaluation": self.evaluation.model_dump(exclude_unset=True)} if self.evaluation else {})

    def to_mermaid(self) -> str:
        stages = self.spec().stages
        lines = ["graph LR"]
        lines += [f'  {s.name}[("{s.name}<br/>{s.type}")]' for s in self.sources]
        lines += [f'  {s.name}["{s.name}<br/>{s.step}"]' for s in stages]
        lines += [f"  {a} -->|{t}| {s.name}" for s in stages for t, a in s.consumes.items()]
        return "\n".join(lines)


@dataclass(frozen=True)
class Model:
    name: str
    family: str | None  # a family of rules.toml [families]: a Megatron-Bridge recipe exists; None: HF-native
    min_gpus: int  # for Megatron-Bridge training

    @classmethod
    def resolve(cls, text: str) -> Model:
        name = RULES.families.get(text.lower(), text)
        family = next((alias for alias, hf in RULES.families.items() if hf == name), None)
        minimum = next((m.min_gpus for m in CATALOG.step("sft/megatron_bridge").models if m.name.endswith(name)), 1)
        return cls(name, family, minimum)


class Planner:
    def __init__(self, have: list[Have], hardware: Hardware, intents: Intents):
        self.hw, self.intents = hardware, intents
        self.model = Model.resolve(intents.model)
        self.sources = [Source(name=h.name, type=h.type, path=h.path or _placeholder(h.name), description="given")
                        for h in have]  # fmt: skip
        self.stages: list[Stage] = []  # named "#<n>:<label>" until `finish` numbers them
        self.roles: dict[str, str] = {}  # artifact -> the role it was first used for
        self.data: dict[str, str] = {}  # data role -> the artifact its data intents made
        self.warnings: list[str] = []
        self.fired: list[Fired] = []
        self.cpu = hardware.gpus == 0
        self.memory = MemoryEstimate(_parameters_b(self.model.name), hardware.gpus, memory_gib(hardware.gpu))

    # ---- artifacts -------------------------------------------------------------------------------------------

    def available(self) -> list[tuple[str, str]]:
        """(artifact, type), newest first: stage outputs, then sources."""
        outputs = [(s.name, CATALOG.step(s.step).primary_output) for s in reversed(self.stages)]
        return outputs + [(s.name, s.type) for s in self.sources]

    def is_stage(self, artifact: str) -> bool:
        return any(s.name == artifact for s in self.stages)

    def _free(self, artifact: str, role: str | None) -> bool:
        claimed = self.roles.get(artifact)
        return role is None or claimed is None or claimed == role

    def _claim(self, artifact: str, role: str | None) -> str:
        if role is not None:
            self.roles.setdefault(artifact, role)
        return artifact

    def need(self, type_name: str, role: str | None = None) -> str:
        """An artifact of `type_name`: one at hand, one converted from one at hand, or a newly planned one.

        Base and reward models are inputs: they come from what the user has (never an adapter), not from this
        plan's training. Data whose role an intent acts on (--curate, --translate, --rl-prep) passes its steps.
        """
        if CATALOG.is_a(type_name, "training_jsonl") and any(
            role in rule.roles for rule in self.intent_rules() if rule.step
        ):
            return self._claim(self.prepared(role), role)
        candidates = self.available()
        if role in INPUT_ROLES:
            candidates = [(a, t) for a, t in candidates if not self.is_stage(a) and t != "checkpoint_lora"]
        for artifact, have in candidates:
            if CATALOG.is_a(have, type_name) and self._free(artifact, role):
                return self._claim(artifact, role)
        for artifact, have in candidates:
            path = converter_path(have, type_name)
            if path and self._free(artifact, role):
                return self._claim(self.convert(artifact, path), role)
        return self._claim(self.produce(type_name, role), role)

    def source(self, name: str, type_name: str, description: str) -> str:
        if all(s.name != name for s in self.sources):
            self.sources.append(Source(name=name, type=type_name, path=_placeholder(name), description=description))
            self.warn(f"provide {name} ({type_name}): set {_placeholder(name)} or pass --have {type_name}:{name}=PATH")
        return name

    def retype(self, name: str, type_name: str) -> None:
        self.sources = [s.model_copy(update={"type": type_name}) if s.name == name else s for s in self.sources]

    def add(self, step: str, label: str, consumes: dict[str, str], **config: Any) -> str:
        """Append a stage; parameters that name the model (tokenizer, model id, ...) get the planned model."""
        spec = CATALOG.step(step)
        preset = config.pop("preset", None) or ("tiny" if self.cpu and "tiny" in spec.presets else "default")
        if preset not in spec.presets:
            preset = next(iter(spec.presets))
        config = dict.fromkeys(spec.model_parameters(), self.model.name) | config
        name = f"#{len(self.stages)}:{label}"
        config = {k: v for k, v in config.items() if v is not None}
        stage = Stage(name=name, step=step, consumes=consumes, preset=preset, config=config)
        if bookended(stage) and model_path(stage) and not set(consumes) & set(CHECKPOINTS):
            stage = self.start_from_source(stage)
        self.stages.append(stage)
        return name

    def start_from_source(self, stage: Stage) -> Stage:
        """A stage that loads its model by parameter starts from a checkpoint_hf source, so its before-evaluation
        scores that source: the user's HF base if there is one (its path becomes the stage's weights), else
        `base_model` declared at the path the stage names."""
        base = next((s for s in self.sources if s.type == "checkpoint_hf" and self._free(s.name, "base_model")), None)
        if base is None:
            path = model_path(stage)
            base = Source(name="base_model", type="checkpoint_hf", path=path, description=f"the base model ({path})")
            self.sources.append(base)
            self.warn(f"base_model is {path}: its evaluation reads a directory; for a hub id, download it and set "
                      "that directory as base_model's path and the stages' weights parameters")  # fmt: skip
        self._claim(base.name, "base_model")
        weights = dict.fromkeys(CATALOG.step(stage.step).model_parameters("weights"), base.path)
        return stage.model_copy(update={"config": stage.config | weights})

    def warn(self, message: str) -> None:
        if message not in self.warnings:
            self.warnings.append(message)

    def convert(self, artifact: str, steps: list[str]) -> str:
        for step in steps:
            consumes = {CATALOG.step(step).consumes[0].type: artifact}
            if step == "convert/merge_lora":
                consumes["checkpoint_hf"] = self.need("checkpoint_hf", "base_model")
            artifact = self.add(step, step.split("/")[-1], consumes)
        return artifact

    # ---- rules -----------------------------------------------------------------------------------------------

    def facts(self) -> dict[str, FactValue]:
        """The facts rules.toml's `when` tables test (catalog/models.py, Fact)."""
        types = {t for _, t in self.available()}
        gpus = self.hw.gpus
        return {
            "recipe": self.model.family is not None,
            "enough_gpus": gpus >= self.model.min_gpus,
            "cpu": self.cpu,
            "small_gpu_count": 1 <= gpus <= 4,
            "megatron_signal": "checkpoint_megatron" in types or (self.hw.nodes > 1 and "packed_parquet" in types),
            "full_sft_fits": self.memory.fits,
            "native_quant": self.hw.arch in QUANT_FORMATS,
            "benchmark": self.benchmark_guard(),
            "peft": self.intents.peft or "unset",
            "data_kind": self.intents.data_kind or "unset",
        }

    def fire(self, rule: Fired) -> None:
        if rule not in self.fired:
            self.fired.append(rule)

    def values(self, task: str) -> dict[str, Any]:
        """What a rule's reason or warning may name."""
        m = self.memory
        return {"model": self.model.name, "family": self.model.family, "min_gpus": self.model.min_gpus,
                "gpus": self.hw.gpus, "gpu": self.hw.gpu, "task": task.upper() if task == "sft" else task,
                "full_gib": m.full_gib, "lora_gib": m.lora_gib, "gpu_gib": m.gpu_gib}  # fmt: skip

    def blocked(self, rule: Route, task: str) -> None:
        """Raise the block the rule names, if it names one."""
        if rule.block:
            raise Blocked(rule.block, rule.reason.format(**self.values(task)))

    def route(self, task: str) -> str:
        """The stage the first rule of `task` that holds picks (or the block it names)."""
        facts = self.facts()
        rule = next(r for r in RULES.routes(task) if r.holds(facts))
        self.fire(rule)
        self.blocked(rule, task)
        if rule.warn:
            self.warn(rule.warn.format(**self.values(task)))
        if rule.use not in CATALOG.steps:
            return self.route(rule.use)
        return self.build(rule.use, task, rule)

    def build(self, step: str, task: str, rule: Route | None = None) -> str:
        """A stage of `step`, wired for the model, hardware and intents (by default: what it requires, as found)."""
        builders = {
            "sft/megatron_bridge": lambda: self.megatron(step, "sft", peft="null"),
            "peft/megatron_bridge": lambda: self.megatron(step, "peft", base=True),
            "sft/automodel": lambda: self.automodel(step, "sft"),
            "peft/automodel": lambda: self.automodel(step, "peft"),
            "pretrain/megatron_bridge": lambda: self.pretrain_megatron(cpt=task == "cpt"),
            "pretrain/automodel": lambda: self.pretrain_automodel(cpt=task == "cpt"),
            "translate/nemo_curator": self.translate_goal,
            "byob/mcq": self.translate_benchmark if task == "translate" else self.benchmark,
            "optimize/modelopt/quantize": lambda: self.quantize(rule.quant_format if rule else "native"),
            "optimize/modelopt/prune": lambda: self.optimize("prune"),
            "optimize/modelopt/distill": lambda: self.optimize("distill"),
            "sdg/data_designer": self.sdg,
            EVAL: self.evaluate,
        }
        if step in builders:
            return builders[step]()
        consumes = {p.type: self.need(p.type) for p in CATALOG.step(step).consumes if p.required}
        return self.add(step, step.split("/")[-1], consumes)

    def intent_rules(self) -> list[IntentRule]:
        """The intent rules of the intents the user set."""
        return [
            rule
            for rule in RULES.intent
            if getattr(self.intents, rule.intent) not in (None, False)
            and rule.value in (None, getattr(self.intents, rule.intent))
        ]

    def check_intents(self, goal: str) -> None:
        """Every intent is honoured by a stage of the plan (intent_not_applicable otherwise)."""
        steps = {s.step for s in self.stages}
        for rule in self.intent_rules():
            self.fire(rule)
            if not steps & set(rule.steps):
                flag = "--" + rule.intent.replace("_", "-") + (f" {rule.value}" if rule.value else "")
                raise Blocked(
                    NOT_APPLICABLE, f"{flag} needs a stage of {' or '.join(rule.steps)}, and a plan for {goal} has none"
                )

    # ---- data and its intents ----------------------------------------------------------------------------------

    def prepared(self, role: str) -> str:
        """The data of `role` after the steps of its data intents, in rules.toml order (each planned once)."""
        if role in self.data:
            return self.data[role]
        rules = [rule for rule in self.intent_rules() if role in rule.roles and rule.step]
        data = self.user_data(role, CATALOG.step(rules[0].step).consumes[0].type)
        for rule in rules:
            if rule.step == "translate/nemo_curator" and self.benchmark_guard():
                self.fire(next(r for r in RULES.route if r.use == "byob/mcq"))
                raise Blocked(
                    NOT_APPLICABLE,
                    "MCQ / benchmark data is translated with byob/mcq (--goal translate), never translate/nemo_curator",
                )
            data = self.intent_stage(rule.step, data)
        self.data[role] = data
        return data

    def user_data(self, role: str, type_name: str) -> str:
        """The user's data for `role` (a stage output or a JSONL source), declared `type_name` when it is a
        source of the JSONL family; a source to provide when there is none."""
        output = next(
            (a for a, t in self.available() if self.is_stage(a) and CATALOG.is_a(t, type_name) and self._free(a, role)),
            None,
        )
        if output is not None:
            return self._claim(output, role)
        corpus = next(
            (s for s in self.sources if CATALOG.is_a(s.type, "training_jsonl") and self._free(s.name, role)), None
        )
        if corpus is None:
            return self.source(role, type_name, f"the {role.replace('_', ' ')} ({type_name})")
        if not CATALOG.is_a(corpus.type, type_name):
            if type_name == "filtered_jsonl":
                self.warn(f"treating {corpus.name} ({corpus.type}) as a ready corpus; pass --curate to clean it first")
            self.retype(corpus.name, type_name)
        return self._claim(corpus.name, role)

    def intent_stage(self, step: str, data: str) -> str:
        port = CATALOG.step(step).consumes[0].type
        if step == "translate/nemo_curator":
            return self.translate_corpus(data)
        if step == "data_prep/rl_prep":
            shape = self.intents.rl if self.intents.rl in ("dpo", "rlvr") else "auto"
            return self.add(step, "rl_prep", {port: data}, kind=shape)
        return self.add(step, step.split("/")[0], {port: data})

    # ---- producers of intermediate types ---------------------------------------------------------------------

    def produce(self, type_name: str, role: str | None) -> str:
        if type_name == "packed_parquet":
            data = self.need("training_jsonl", "sft_data")
            return self.add(
                "data_prep/sft_packing", "sft_packing", {"training_jsonl": data}, pack_size=self.seq_length()
            )
        if type_name == "binidx":
            corpus = self.need("filtered_jsonl", "corpus")
            return self.add("data_prep/pretrain_prep", "pretrain_prep", {"filtered_jsonl": corpus})
        if type_name == "filtered_jsonl":
            return self.user_data(role or "corpus", "filtered_jsonl")
        if type_name == "checkpoint_lora":
            return self.route("peft")
        if type_name in ("checkpoint_megatron", "checkpoint_hf") and role in (None, "policy"):
            self.route("sft")  # its output may be another checkpoint type: converters bridge it
            return self.need(type_name, role)
        if type_name == "checkpoint_megatron" and role == "base_model":
            return self.convert(self.need("checkpoint_hf", role), converter_path("checkpoint_hf", type_name))
        if type_name in ("mcq_benchmark_parquet", "benchmark_parquet"):
            return self.benchmark()
        if type_name == "eval_results":
            return self.evaluate()
        producer = next((s for s in CATALOG.steps.values() if s.primary_output == type_name), None)
        if role is None and producer is not None and not any(p.required for p in producer.consumes):
            return self.build(producer.id, producer.category)  # a producer that needs no input
        descriptions = {"base_model": f"HF checkpoint of {self.model.name}", "reward_model": "the reward (judge) model"}
        name = role or type_name
        return self.source(name, type_name, descriptions.get(name, f"your {type_name}"))

    def seq_length(self) -> int | None:
        return self.intents.seq_length or (None if self.cpu else 4096)

    # ---- stages of the routed steps ----------------------------------------------------------------------------

    def automodel(self, step: str, label: str) -> str:
        types = {t for _, t in self.available()}
        if "packed_parquet" in types and not any(CATALOG.is_a(t, "training_jsonl") for t in types):
            error = next(
                e for e in CATALOG.step("sft/automodel").errors if e.name == "packed_parquet_used_with_automodel"
            )
            raise Blocked(error.name, error.recovery)
        return self.add(step, label, {"training_jsonl": self.need("training_jsonl", "sft_data")})

    def megatron(self, step: str, label: str, base: bool = False, **config: Any) -> str:
        """A Megatron-Bridge training stage on packed data, with parallelism for the model and hardware."""
        seq = self.seq_length()
        consumes = {"packed_parquet": self.need("packed_parquet", "sft_data")}
        if base or any(t == "checkpoint_megatron" for _, t in self.available()):
            consumes["checkpoint_megatron"] = self.need("checkpoint_megatron", "base_model")
        config |= {"seq_length": seq} | self.parallelism(step, packed=True)
        if step == "sft/megatron_bridge":
            config["dataset.packed_sequence_specs.packed_sequence_size"] = seq
        return self.add(step, label, consumes, **config)

    def parallelism(self, step: str, packed: bool) -> dict[str, Any]:
        """TP/PP/CP and micro batch from the hardware table (rules.toml [[parallelism]]); global batch a multiple of
        data parallel x micro batch."""
        family, gpu = self.model.family, self.hw.gpu
        if family is None:
            raise Blocked("no_recipe_for_model", f"no Megatron-Bridge recipe for {self.model.name}: train this HF "
                          "model with AutoModel (--goal sft)")  # fmt: skip
        if gpu == "b200" and RULES.layout(family, gpu) is None:
            self.warn("no B200 row in the hardware table: using the H200 layout")
            gpu = "h200"
        row = RULES.layout(family, gpu)
        if row is None:
            raise Blocked(
                "insufficient_hardware", f"{family} on {self.hw.gpu} is not recommended; use A100 80GB or newer"
            )
        self.fire(row)
        layout = row.layout
        tp, pp, cp, mbs = layout.tensor, layout.pipeline, layout.context, layout.micro_batch
        if tp > self.hw.gpus_per_node:
            self.warn(f"tensor parallel {tp} exceeds {self.hw.gpus_per_node} GPUs per node: kept within one node")
            tp = self.hw.gpus_per_node
        if self.hw.gpus % (tp * pp * cp):
            raise Blocked("insufficient_hardware", f"{self.hw.gpus} GPUs do not divide into TP{tp} x PP{pp} x CP{cp}")
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
            "model.recompute_granularity": layout.recompute,
            "train.micro_batch_size": mbs,
            "train.global_batch_size": batch,
        }

    def pretrain_megatron(self, cpt: bool) -> str:
        consumes = {"binidx": self.need("binidx", "corpus")}
        if cpt and any(t == "checkpoint_megatron" for _, t in self.available()):
            consumes["checkpoint_megatron"] = self.need("checkpoint_megatron", "base_model")
        config = {"load_hf_weights": cpt, "seq_length": self.seq_length()}
        config |= self.parallelism("pretrain/megatron_bridge", packed=False) | ({"optimizer.lr": 3e-5} if cpt else {})
        return self.add("pretrain/megatron_bridge", "cpt" if cpt else "pretrain", consumes, **config)

    def pretrain_automodel(self, cpt: bool) -> str:
        config = {"load_weights": cpt} | ({"optimizer.lr": 3e-5} if cpt else {})
        bins = self.need("binidx", "corpus")
        return self.add("pretrain/automodel", "cpt" if cpt else "pretrain", {"binidx": bins}, **config)

    def require_gpus(self, what: str) -> None:
        if self.cpu:
            raise Blocked("insufficient_hardware", f"{what} needs GPUs; pick a GPU profile (--gpu, --gpus-per-node)")

    def rl(self) -> str:
        kind = self.intents.rl
        if kind is None:
            kind = "dpo"
            self.warn("no --rl given: planning DPO (static preference pairs)")
        self.require_gpus(f"RL ({kind}) with NeMo-RL")
        data = self.rl_data(kind)
        policy = self.need("checkpoint_megatron", "policy")  # warm start from a validated SFT checkpoint
        consumes = {"training_jsonl": data, "checkpoint_megatron": policy}
        if kind == "rlhf":
            consumes["checkpoint_hf"] = self.need("checkpoint_hf", "reward_model")
        return self.add(f"rl/nemo_rl/{kind}", kind, consumes)

    def rl_data(self, kind: str) -> str:
        at_hand = next(
            (a for a, t in self.available() if CATALOG.is_a(t, "training_jsonl") and self._free(a, "rl_data")), None
        )
        if at_hand is None and kind == "dpo":
            pairs = self._claim(self.add("sdg/data_designer", "sdg", {}, preset="rl_pref"), "rl_data")
            return self._claim(
                self.add("data_prep/rl_prep", "rl_prep", {"training_jsonl": pairs}, kind="dpo"), "rl_data"
            )
        return self.need("training_jsonl", "rl_data")

    def benchmark_guard(self) -> bool:
        """MCQ / benchmark data goes to byob/mcq, never to translate/nemo_curator."""
        benchmark_types = ("benchmark_parquet", "benchmark_source_corpus")
        return self.intents.data_kind == "mcq" or any(
            CATALOG.is_a(t, b) for _, t in self.available() for b in benchmark_types
        )

    def languages(self) -> tuple[str, str]:
        if self.intents.translate is None:
            raise Blocked(
                "missing_language_codes", "translation needs explicit languages: --translate SRC:TGT (e.g. en:th)"
            )
        return self.intents.translate

    def translate_goal(self) -> str:
        self.languages()
        return self.prepared("corpus")

    def translate_corpus(self, corpus: str) -> str:
        source, target = self.languages()
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

    def translate_benchmark(self) -> str:
        benchmark = next((a for a, t in self.available() if CATALOG.is_a(t, "benchmark_parquet")), None)
        description = "the MCQ benchmark to translate, as BYOB parquet (question, options, answer_index, ...)"
        return self.byob_translate(benchmark or self.source("benchmark", "mcq_benchmark_parquet", description))

    def byob_translate(self, benchmark: str) -> str:
        source, target = self.languages()
        config = {"stage": "translate", "source_language": source, "target_language": target}
        return self.add("byob/mcq", "byob_translate", {"benchmark_parquet": benchmark}, preset="translate", **config)

    def benchmark(self) -> str:
        corpus = self.need("benchmark_source_corpus", "benchmark_corpus")
        generated = self.add("byob/mcq", "byob_generate", {"benchmark_source_corpus": corpus})
        return self.byob_translate(generated) if self.intents.translate else generated

    def sdg(self) -> str:
        seeds = next((a for a, t in self.available() if CATALOG.is_a(t, "training_jsonl")), None)
        preset = "rl_pref" if self.intents.rl == "dpo" else None
        return self.add("sdg/data_designer", "sdg", {"training_jsonl": seeds} if seeds else {}, preset=preset)

    def evaluate(self) -> str:
        checkpoint = next(((a, t) for a, t in self.available() if t in CHECKPOINTS), None)
        if checkpoint is None:
            return self.add(EVAL, "eval", {}, role="standalone", model=self.model.name)
        return self.add(EVAL, "eval", {checkpoint[1]: checkpoint[0]}, role="standalone")

    def optimize(self, kind: str) -> str:
        if kind == "quantize":
            return self.route("quantize")
        return self.add(f"optimize/modelopt/{kind}", kind, self.modelopt_inputs())

    def modelopt_inputs(self) -> dict[str, str]:
        """A ModelOpt stage's model (an adapter at hand is merged into its base first) and the rows it calibrates on
        (quantize, prune) or trains on (distill): the SFT data, so the data intents act on it too."""
        return {
            "checkpoint_hf": self.conversion("checkpoint_hf") or self.need("checkpoint_hf", "base_model"),
            "training_jsonl": self.need("training_jsonl", "sft_data"),
        }

    def quantize(self, quant_format: str) -> str:
        step = "optimize/modelopt/quantize"
        quant = QUANT_FORMATS[self.hw.arch] if quant_format == "native" else quant_format
        preset = "tiny" if self.cpu else quant if quant in CATALOG.step(step).presets else "default"
        return self.add(step, "quantize", self.modelopt_inputs(), preset=preset, **{"args.export_quant_cfg": quant})

    def conversion(self, goal: str | None) -> str | None:
        """The first convert rule whose source is at hand: for --goal convert (goal None) any; for an artifact goal,
        one that is the goal even though its target is at hand (an adapter merged into its base)."""
        for rule in RULES.convert:
            if goal is not None and not (rule.replaces_target and converter_path(rule.source, goal)):
                continue
            found = next((a for a, t in self.available() if t == rule.source), None)
            if found is not None:
                self.fire(rule)
                return self.convert(found, converter_path(rule.source, goal or rule.target))
        return None

    def convert_goal(self) -> str:
        converted = self.conversion(None)
        if converted is None:
            raise Blocked(
                "artifact_missing",
                "convert needs a checkpoint: --have checkpoint_megatron | checkpoint_hf | checkpoint_lora",
            )
        return converted

    def explicit_step(self, step_id: str) -> str:
        """A goal naming a catalog step: its own consumes, no fallback routing (insufficient hardware blocks)."""
        step = CATALOG.step(step_id)
        minimum = max([step.min_gpus] + [m.min_gpus for m in step.models if m.name.endswith(self.model.name)])
        if self.hw.gpus < minimum:
            raise Blocked("insufficient_hardware", f"{step_id} needs >= {minimum} GPUs, the profile has {self.hw.gpus}")
        facts = self.facts()
        for rule in RULES.routes(step.category):  # an intent contradicting the step's task (--peft none) blocks it
            if rule.block == NOT_APPLICABLE and rule.holds(facts):
                self.fire(rule)
                self.blocked(rule, step.category)
        if step_id == "translate/nemo_curator":
            return self.route("translate")  # the MCQ hard guard overrides an explicit step too
        if step_id == "optimize/modelopt/quantize":
            return self.route("quantize")  # the format for the GPU
        return self.build(step_id, step.category)

    def goal(self, goal: str) -> str | None:
        routes = {
            "sft": lambda: self.route("sft"),
            "peft": lambda: self.route("peft"),
            "pretrain": lambda: self.route("pretrain"),
            "cpt": lambda: self.route("cpt"),
            "rl": self.rl,
            "translate": lambda: self.route("translate"),
            "curate": lambda: self.prepared("corpus"),
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
            merged = self.conversion(goal)
            if merged is not None:
                return merged
            if any(CATALOG.is_a(t, goal) for _, t in self.available()):
                self.warn(f"{goal} is already at hand: nothing to do")
                return None
            if goal in ("mcq_benchmark_parquet", "translated_mcq_benchmark_parquet", "benchmark_parquet"):
                return self.benchmark()
            if goal == "translated_jsonl":
                return self.route("translate")
            if goal in ("raw_jsonl", "training_jsonl", "benchmark_source_corpus"):
                raise Blocked(
                    "artifact_missing",
                    f"{goal} is an input: pass it with --have {goal}=PATH (or generate data with --goal sdg)",
                )
            return self.need(goal)
        raise Blocked(
            "unknown_goal", f"unknown goal {goal!r}: a step id, an artifact type, or one of {', '.join(TASKS)}"
        )

    def finish(self) -> None:
        """Number the stages in order (NN_label) and point every consumed artifact at the new names."""
        names = {s.name: f"{i:02d}_{_label(s.name)}" for i, s in enumerate(self.stages, 1)}
        for i, s in enumerate(self.stages):
            consumes = {t: names.get(a, a) for t, a in s.consumes.items()}
            self.stages[i] = s.model_copy(update={"name": names[s.name], "consumes": consumes})

    def evaluation(self) -> Evaluation | None:
        """The `evaluation:` section whose bookends (pipelines/bookends.py) surround the quality-changing stages;
        None when the plan has none. Its data is the user's to give: the plan has no held-out eval data."""
        if not any(bookended(s, self.stages) for s in self.stages):
            return None
        self.warn("give the evaluation section data to score (evaluation.data: mcq_benchmark_parquet and/or held-out "
                  "training_jsonl) before running its evaluations (no_eval_data otherwise)")  # fmt: skip
        return Evaluation(preset="tiny" if self.cpu else "default")


def _label(name: str) -> str:
    """'#3:sft' -> 'sft'."""
    return name.rsplit(":", 1)[1]


def _source_json(source: Source) -> dict[str, Any]:
    return source.model_dump(include={"name", "type", "path", "description"})


def _parameters_b(model: str) -> float | None:
    """Billions of parameters from a model's name ('...-Nano-30B-A3B' -> 30); None when the name has none."""
    size = re.search(r"(?<![\w.])(\d+(?:\.\d+)?)B(?![a-zA-Z])", model.replace("-", " ").replace("_", " "))
    return float(size.group(1)) if size else None


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


def _placeholder(name: str) -> str:
    return "${NEMOTRON_INPUT_" + re.sub(r"\W", "_", name).upper() + "}"


def plan(goal: str, have: list[Have], hardware: Hardware, intents: Intents) -> Plan:
    """Stages that reach `goal` from the artifacts at hand on this hardware, with eval bookends, or why not."""
    implied = {"curate": {"curate": True}}.get(goal, {})  # a goal that is an intent honours it
    planner = Planner(have, hardware, dataclasses.replace(intents, **implied))
    try:
        planner.goal(goal)
        planner.check_intents(goal)
    except Blocked as e:
        return Plan(goal, hardware, [], [], planner.warnings, str(e), planner.fired, planner.memory)
    planner.finish()
    sections = planner.sources, planner.stages, planner.warnings, None, planner.fired, planner.memory
    return Plan(goal, hardware, *sections, planner.evaluation())
