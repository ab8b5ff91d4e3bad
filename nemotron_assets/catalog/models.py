"""Pydantic models of the step catalog: artifact types, step specs, parameters, named errors."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, create_model, model_validator

ParamType = Literal["str", "int", "float", "bool", "str_list", "float_list", "dict"]


class StrictModel(BaseModel):
    """Immutable, and unknown fields are errors (a typo in a catalog or pipeline file must not pass silently)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ArtifactType(StrictModel):
    """One node of the artifact lattice."""

    name: str
    description: str
    kind: str = Field(description="Dagster kind shown on assets of this type (parquet, megatron, ...).")
    is_a: tuple[str, ...] = ()
    convert_to: dict[str, str] = Field(default_factory=dict, description="target type -> converter step id")


class Port(StrictModel):
    """An artifact a step consumes or produces."""

    type: str
    required: bool = True
    all_partitions: bool = Field(False, description="Takes every partition of a partitioned artifact at once.")
    description: str = ""


class Parameter(StrictModel):
    """A step parameter; dotted names (``peft.dim``) nest in the Launchpad config."""

    name: str
    type: ParamType
    default: Any = None
    choices: tuple[Any, ...] | None = None
    description: str
    names_model: Literal["weights", "architecture", "tokenizer", "served"] | None = Field(
        None,
        description="The parameter names a model: `weights` the step loads, `architecture` whose config (and recipe) "
        "it follows while its weights come from a consumed checkpoint, `tokenizer` it tokenizes with, or `served` the "
        "model an evaluation queries.",
    )
    versioned: bool = Field(
        True,
        description="False for a parameter that cannot change the artifact (pipeline wiring such as an evaluation's "
        "role, target or gate tolerance; a timeout): it is left out of the data version, so changing it reuses.",
    )

    @model_validator(mode="after")
    def _default_fits(self) -> Parameter:
        if self.default is not None:
            check_value(self, self.default)
        return self


def check_value(param: Parameter, value: Any) -> None:
    """A value of the parameter's declared type (strictly: no coercion) and, where it has choices, one of them."""
    try:
        _ADAPTERS[param.type].validate_python(value, strict=True)
    except ValidationError:
        raise ValueError(f"parameter {param.name!r}: {value!r} is not of type {param.type}") from None
    if param.choices is not None and value not in param.choices:
        raise ValueError(f"parameter {param.name!r}: {value!r} not in choices {list(param.choices)}")


PYTHON_ANNOTATIONS: dict[str, Any] = {
    "str": str,
    "int": int,
    "float": float,
    "bool": bool,
    "str_list": list[str],
    "float_list": list[float],
    "dict": dict[str, Any],
}


_ADAPTERS = {name: TypeAdapter(annotation) for name, annotation in PYTHON_ANNOTATIONS.items()}


class StepParams(BaseModel):
    """A step's typed parameters (generated per step: StepSpec.params_model); dotted names are nested models, so
    `peft.dim` reads as `run.p.peft.dim`. Strict: no coercion, unknown names are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, protected_namespaces=())


def nested_model(
    name: str, parameters: tuple[Parameter, ...], base: type[BaseModel], field: Callable[[Parameter], tuple[Any, Any]]
) -> type[BaseModel]:
    """A model of `parameters` whose dotted names nest (`a.b` -> field `a`, a model with field `b`); `field` gives
    each parameter's (annotation, default or FieldInfo). The factory's Launchpad config is built the same way."""

    def build(class_name: str, node: dict[str, Any]) -> type[BaseModel]:
        fields: dict[str, Any] = {}
        for field_name, child in node.items():
            if isinstance(child, Parameter):
                fields[field_name] = field(child)
            else:
                nested = build(f"{class_name}_{field_name}", child)
                fields[field_name] = (nested, Field(default_factory=nested))
        return create_model(class_name, __base__=base, **fields)

    return build(name, nest({param.name: param for param in parameters}))


def nest(params: dict[str, Any]) -> dict[str, Any]:
    """{'peft.dim': 8} -> {'peft': {'dim': 8}}."""
    tree: dict[str, Any] = {}
    for name, value in params.items():
        *parents, leaf = name.split(".")
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


def _typed(param: Parameter) -> tuple[Any, Any]:
    annotation = Literal[param.choices] if param.choices is not None else PYTHON_ANNOTATIONS[param.type]
    return (Optional[annotation] if param.default is None else annotation, param.default)  # noqa: UP045


_PARAMS_MODELS: dict[str, type[StepParams]] = {}


def _prefixes(name: str) -> list[str]:
    """'a.b.c' -> ['a', 'a.b']: the groups a dotted parameter nests under."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


class NamedErrorSpec(StrictModel):
    name: str
    recovery: str
    fed: str | None = Field(None, description="The artifact type whose arrival at this step is this error.")


class ModelOption(StrictModel):
    """A model the step is known to run, with its minimum GPU count."""

    name: str
    min_gpus: int
    default: bool = False
    description: str = ""


class StepSpec(StrictModel):
    """A catalog step: its artifact contract, parameters, presets and named errors."""

    id: str
    name: str
    category: str
    description: str
    backend: Literal["in_process", "process", "torchrun", "ray", "container"] = Field(
        description="How the step's work runs: in_process (in the Dagster or CLI process, nothing launched), process "
        "(one launched process through the profile's executor), torchrun (a launched job under torchrun over the "
        "node's GPUs), ray (a launched job running a Ray cluster), container (in a container of its own)."
    )
    min_gpus: int
    libraries: tuple[str, ...] = Field(
        (), description="Distributions the step runs; their versions are part of its derived code version."
    )
    entry: str | None = Field(None, description="'module:function' running the step here; None = not yet runnable")
    kind: str = Field(description="Dagster kind naming the library doing the work.")
    consumes: tuple[Port, ...] = ()
    produces: tuple[Port, ...]
    parameters: tuple[Parameter, ...] = ()
    models: tuple[ModelOption, ...] = ()
    errors: tuple[NamedErrorSpec, ...] = ()
    presets: dict[str, dict[str, Any]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> StepSpec:
        if self.id.rsplit("/", 1)[0].split("/")[0] != self.category:
            raise ValueError(f"step {self.id}: category {self.category!r} does not match its id")
        names = [p.name for p in self.parameters]
        if len(set(names)) != len(names):
            raise ValueError(f"step {self.id}: duplicate parameter names")
        clashes = sorted(set(names) & {p for n in names for p in _prefixes(n)})
        if clashes:
            raise ValueError(f"step {self.id}: {clashes} are both parameters and groups of dotted parameters")
        by_name = {p.name: p for p in self.parameters}
        for preset, values in self.presets.items():
            for key, value in values.items():
                if key not in by_name:
                    raise ValueError(f"step {self.id}: preset {preset!r} sets unknown parameter {key!r}")
                if value is not None:
                    check_value(by_name[key], value)
        errors = [e.name for e in self.errors]
        if len(set(errors)) != len(errors):
            raise ValueError(f"step {self.id}: duplicate error names")
        if not any(p.required for p in self.produces):
            raise ValueError(f"step {self.id}: produces no required artifact")
        return self

    @property
    def primary_output(self) -> str:
        return next(p.type for p in self.produces if p.required)

    def parameter(self, name: str) -> Parameter:
        return next(p for p in self.parameters if p.name == name)

    def model_parameters(self, *kinds: str) -> list[str]:
        """Names of the parameters naming a model in one of these ways (all ways if none is given)."""
        return [p.name for p in self.parameters if p.names_model and (not kinds or p.names_model in kinds)]

    def preset_values(self, preset: str) -> dict[str, Any]:
        """Parameter defaults overlaid with a preset's values."""
        if preset not in self.presets:
            raise KeyError(f"step {self.id} has no preset {preset!r}; presets: {sorted(self.presets)}")
        return {p.name: p.default for p in self.parameters} | self.presets[preset]

    def params_model(self) -> type[StepParams]:
        """The step's typed parameters model, generated from its catalog parameters (once per step)."""
        if self.id not in _PARAMS_MODELS:
            name = "Params_" + "".join(c if c.isalnum() else "_" for c in self.id)
            _PARAMS_MODELS[self.id] = nested_model(name, self.parameters, StepParams, _typed)
        return _PARAMS_MODELS[self.id]

    def typed_params(self, params: dict[str, Any]) -> StepParams:
        """`params` (dotted names; missing or None ones take the step's defaults) validated into the typed model; a
        value of the wrong type, outside its choices, or an unknown name raises ValueError naming the parameter."""
        try:
            return self.params_model().model_validate(nest({k: v for k, v in params.items() if v is not None}))
        except ValidationError as e:
            problems = "; ".join(
                f"parameter {'.'.join(map(str, error['loc']))!r}: {error['input']!r} {error['msg'].lower()}"
                for error in e.errors()
            )
            raise ValueError(problems) from None

    def recovery(self, error: str) -> str:
        return next(e.recovery for e in self.errors if e.name == error)

    def to_json(self) -> dict[str, Any]:
        """The `steps list --json` shape."""
        return {
            "id": self.id,
            "name": self.name,
            "category": self.category,
            "description": self.description,
            "backend": self.backend,
            "runnable": self.entry is not None,
            "consumes": [{"type": p.type, "required": p.required} for p in self.consumes],
            "produces": [{"type": p.type, "required": p.required} for p in self.produces],
            "parameters": [
                {
                    "name": p.name,
                    "type": p.type,
                    "default": p.default,
                    "choices": list(p.choices) if p.choices is not None else None,
                    "description": p.description,
                }
                for p in self.parameters
            ],
            "errors": [{"name": e.name, "recovery": e.recovery} for e in self.errors],
            "presets": sorted(self.presets),
            "min_gpus": self.min_gpus,
            "models": [m.model_dump() for m in self.models],
        }


# ---- the planner's selection rules (rules.toml) -------------------------------------------------------------------

Fact = Literal[
    "recipe",  # a Megatron-Bridge recipe exists for the model (Nano3, Super3)
    "enough_gpus",  # the profile has the model's Megatron-Bridge minimum of GPUs
    "cpu",  # the profile has no GPUs
    "small_gpu_count",  # 1-4 GPUs
    "megatron_signal",  # a Megatron base at hand, or packed Parquet at hand on several nodes
    "full_sft_fits",  # "yes" / "no" / "unknown": weights, gradients and optimizer state fit the GPUs
    "native_quant",  # the GPU's architecture has a native low-precision format (hardware.QUANT_FORMATS)
    "benchmark",  # the data is an MCQ benchmark (--data-kind mcq, or a benchmark at hand)
    "peft",  # --peft: "lora" / "none" / "unset"
    "data_kind",  # --data-kind: "chat" / "plain" / "mcq" / "unset"
]
FactValue = bool | str


class Rule(StrictModel):
    """A selection rule: an id, the seed sentence it encodes (quoted), and the facts under which it holds."""

    id: str
    cite: str = Field(description="The seed catalog sentence this rule encodes, quoted.")
    when: dict[Fact, FactValue | tuple[FactValue, ...]] = Field(default_factory=dict)

    def holds(self, facts: dict[str, FactValue]) -> bool:
        return all(facts[fact] in (want if isinstance(want, tuple) else (want,)) for fact, want in self.when.items())


class Route(Rule):
    """Which step serves a task: `use` (a step or another task), with a warning, or `block` with a named error."""

    tasks: tuple[str, ...]
    use: str | None = None
    warn: str | None = None
    block: str | None = Field(None, description="The named error (errors.toml) that blocks the plan.")
    reason: str | None = None
    quant_format: str | None = Field(None, description="Quantization format; 'native' = the GPU's own.")

    @model_validator(mode="after")
    def _one_outcome(self) -> Route:
        if (self.use is None) == (self.block is None) or (self.block is None) != (self.reason is None):
            raise ValueError(f"route {self.id}: either `use`, or `block` with its `reason`")
        return self


class IntentRule(Rule):
    """An intent (a field of planning.Intents, at `value` if given): a data intent inserts `step` on the data
    consumed in `roles`; a plan honours it by a stage of `step` or of `honoured_by`."""

    intent: str
    value: str | None = None
    step: str | None = None
    roles: tuple[str, ...] = ()
    honoured_by: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _honourable(self) -> IntentRule:
        if self.step is None and not self.honoured_by:
            raise ValueError(f"intent rule {self.id}: no step honours it")
        return self

    @property
    def steps(self) -> tuple[str, ...]:
        return (*([self.step] if self.step else []), *self.honoured_by)


class ConvertRule(Rule):
    source: str
    target: str
    replaces_target: bool = False


class Bookends(StrictModel):
    categories: tuple[str, ...] = Field(description="Catalog categories whose stages change model quality.")
    cite: str


class Memory(StrictModel):
    """Bytes per model parameter held by full SFT (and by LoRA: the weights), and the share of GPU memory usable."""

    weight_bytes: float
    gradient_bytes: float
    optimizer_bytes: float
    usable_fraction: float = Field(gt=0, le=1)
    cite: str


class Layout(StrictModel):
    """Megatron-Bridge's parallel layout: tensor, pipeline and context parallel sizes, micro batch, recompute."""

    tensor: int = Field(ge=1)
    pipeline: int = Field(ge=1)
    context: int = Field(ge=1)
    micro_batch: int = Field(ge=1)
    recompute: Literal["full", "selective"] | None = None


class Parallelism(StrictModel):
    """A row of upstream's hardware table: the layout of these model families on one GPU model."""

    families: tuple[str, ...]
    gpu: str
    layout: Layout
    cite: str = Field(description="The row of upstream's hardware table, quoted.")

    @property
    def id(self) -> str:
        return f"layout-{'+'.join(self.families)}-{self.gpu}"


class Rules(StrictModel):
    route: tuple[Route, ...]
    intent: tuple[IntentRule, ...]
    convert: tuple[ConvertRule, ...]
    bookends: Bookends
    memory: Memory
    families: dict[str, str] = Field(description="Model family -> HF id: the models with a Megatron-Bridge recipe.")
    parallelism: tuple[Parallelism, ...]

    def routes(self, task: str) -> list[Route]:
        return [r for r in self.route if task in r.tasks]

    def layout(self, family: str, gpu: str) -> Parallelism | None:
        return next((row for row in self.parallelism if family in row.families and row.gpu == gpu), None)
