"""Pydantic models of the step catalog: artifact types, step specs, parameters, named errors."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

ParamType = Literal["str", "int", "float", "bool", "str_list", "float_list", "dict"]

_PYTHON_TYPES: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "int": (int,),
    "float": (int, float),
    "bool": (bool,),
    "str_list": (list,),
    "float_list": (list,),
    "dict": (dict,),
}


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
    ok = isinstance(value, _PYTHON_TYPES[param.type]) and not (
        param.type in ("int", "float") and isinstance(value, bool)
    )
    if not ok:
        raise ValueError(f"parameter {param.name!r}: {value!r} is not of type {param.type}")
    if param.choices is not None and value not in param.choices:
        raise ValueError(f"parameter {param.name!r}: {value!r} not in choices {list(param.choices)}")


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

    def preset_values(self, preset: str) -> dict[str, Any]:
        """Parameter defaults overlaid with a preset's values."""
        if preset not in self.presets:
            raise KeyError(f"step {self.id} has no preset {preset!r}; presets: {sorted(self.presets)}")
        return {p.name: p.default for p in self.parameters} | self.presets[preset]

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
