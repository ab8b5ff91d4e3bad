"""env/env_toml: write a nemo-run environment profile TOML (one `<prefix>_<role>` table per step role) from one of
our hardware profiles, and read such a file back into a Profile.

Env vars are written as `${oc.env:NAME}` interpolations that nemo-run resolves at submit time, so the file names
variables and never holds their values (DGX Cloud's client id and secret included).
"""

from __future__ import annotations

import json
import re
import tomllib
from typing import Any

from nemotron_assets.artifacts.env_toml import RESERVED
from nemotron_assets.steps import StepResult, StepRun
from resources.profile import Profile, load_profile

PREFIXES = ("lepton", "slurm", "dgxcloud")
ENV_REF = re.compile(r"^\$\{oc\.env:([A-Z_][A-Z0-9_]*)(,[^}]*)?\}$")
# role -> (parent role, image of the profile, GPUs?); nodes follow the profile (single-node roles set 1).
ROLES: dict[str, tuple[str, str | None, bool]] = {
    "curator_base": ("base", "curator", False),
    "prep_base": ("base", None, False),
    "prep_sft_packing": ("prep_base", None, False),
    "prep_pretrain_prep": ("prep_base", None, False),
    "prep_rl_prep": ("prep_base", None, False),
    "pretrain_megatron_bridge": ("base", "megatron_bridge", True),
    "pretrain_automodel": ("base", "automodel", True),
    "sft_megatron_bridge": ("base", "megatron_bridge", True),
    "sft_automodel": ("base", "automodel", True),
    "peft_megatron_bridge": ("base", "megatron_bridge", True),
    "peft_automodel": ("base", "automodel", True),
    "convert_model": ("base", "megatron_bridge", True),
    "rl_nemo_rl_dpo": ("base", "nemo_rl", True),
    "rl_nemo_rl_rlvr": ("base", "nemo_rl", True),
    "rl_nemo_rl_rlhf": ("base", "nemo_rl", True),
    "optimize_modelopt_quantize": ("base", "megatron_bridge", True),
    "optimize_modelopt_distill": ("base", "megatron_bridge", True),
    "optimize_modelopt_prune": ("base", "megatron_bridge", True),
    "eval_model_eval": ("base", "evaluator", True),
    "byob_cpu": ("curator_base", None, False),
    "byob_full": ("curator_base", None, True),
    "sdg_data_designer": ("base", None, False),
    "sdg_data_designer_tiny": ("sdg_data_designer", None, False),
    "sdg_data_designer_default": ("sdg_data_designer", None, False),
    "sdg_data_designer_customer_support_tools": ("sdg_data_designer", None, False),
    "sdg_data_designer_rl_pref": ("sdg_data_designer", None, False),
    "translate": ("curator_base", None, True),
    "curate": ("curator_base", None, False),
}
SINGLE_NODE = ("convert_model", "eval_model_eval")


def env_ref(name: str) -> str:
    return f"${{oc.env:{name}}}"


def _executor_fields(run: StepRun, profile: Profile) -> dict[str, Any]:
    """The executor's own keys, as nemo-run's Lepton/Slurm/DGX Cloud executors read them."""
    if profile.executor != "slurm" and profile.mounts:
        detail = f"{profile.name}: {profile.executor} mounts go in [{profile.executor}] (mounts / pvcs), not in mounts"
        raise run.error("unsupported_profile", detail)
    if profile.executor == "lepton":
        return profile.lepton.model_dump() | {"mounts": [dict(m) for m in profile.lepton.mounts]}
    if profile.executor == "dgxcloud":
        dgx = profile.dgxcloud
        return {
            "base_url": dgx.base_url,
            "kube_apiserver_url": dgx.kube_apiserver_url,
            "project_name": dgx.project_name,
            "client_id": env_ref(dgx.app_id_env),
            "client_secret": env_ref(dgx.app_secret_env),
            "pvcs": [dict(p) for p in dgx.pvcs],
        }
    slurm = profile.slurm.model_dump(exclude={"job_dir"}, exclude_none=True)
    return slurm | {"remote_job_dir": profile.slurm.job_dir, "mounts": list(profile.mounts)}


def profile_sections(run: StepRun, profile: Profile) -> dict[str, dict[str, Any]]:
    """`<prefix>_base` with the whole profile, then one table per role extending it."""
    if profile.executor not in PREFIXES:
        raise run.error("unsupported_profile", f"{profile.name} runs on {profile.executor}, not on one of {PREFIXES}")
    prefix = profile.executor
    images = profile.images.model_dump(exclude_none=True)
    base = {
        "executor": prefix,
        "nemotron_profile": profile.name,
        "description": profile.description,
        "nodes": profile.nodes,
        "gpus_per_node": profile.gpus_per_node,
        "nprocs_per_node": max(profile.gpus_per_node, 1),
        "cpus": profile.cpus,
        "memory_gb": profile.memory_gb,
        "interconnect": profile.interconnect,
        "gpu": profile.gpu.model_dump() if profile.gpu else None,
        "images": images,
        "storage": profile.storage.model_dump(exclude_none=True) if profile.storage else None,
        "container_image": images.get("megatron_bridge") or next(iter(images.values()), None),
        **_executor_fields(run, profile),
        "env_vars": {name: env_ref(name) for name in profile.env_vars},
    }
    sections = {f"{prefix}_base": base}
    for role, (parent, image, gpus) in ROLES.items():
        section: dict[str, Any] = {"extends": f"{prefix}_{parent}"}
        if image and images.get(image):
            section["container_image"] = images[image]
        if not gpus:
            section |= {"gpus_per_node": 0, "nprocs_per_node": 1}
        elif parent != "base":  # a GPU role under a CPU parent: one GPU
            section |= {"gpus_per_node": 1, "nprocs_per_node": 1}
        if prefix == "lepton" and "gpus_per_node" in section:
            section["resource_shape"] = "cpu.large" if not gpus else f"gpu.{profile.gpu.model.lower()}"
        if role in SINGLE_NODE:
            section["nodes"] = 1
        sections[f"{prefix}_{role}"] = section
    return sections


def render(sections: dict[str, dict[str, Any]], preamble: str | None = None) -> str:
    """TOML text: tables of scalars, lists, and inline tables for dicts; None values are skipped."""
    lines = [f"# {line}".rstrip() for line in (preamble or "").splitlines()]
    for name, table in sections.items():
        lines += ["", f"[{name}]"]
        lines += [f"{key} = {_value(value)}" for key, value in table.items() if value is not None]
    return "\n".join(lines).lstrip("\n") + "\n"


def _value(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {_value(v)}" for k, v in value.items() if v is not None) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value), ensure_ascii=False)


def read_profile(document: dict[str, Any]) -> Profile:
    """The hardware profile a generated file describes: its `<prefix>_base` table mapped back to our fields."""
    (prefix,) = [p for p in PREFIXES if f"{p}_base" in document]
    base = dict(document[f"{prefix}_base"])
    names = [_env_name(value) for value in base["env_vars"].values()]
    fields = {
        key: base[key]
        for key in (
            "description",
            "nodes",
            "gpus_per_node",
            "cpus",
            "memory_gb",
            "interconnect",
            "gpu",
            "images",
            "storage",
        )
        if key in base
    }
    if prefix == "lepton":
        keys = ("node_group", "resource_shape", "shared_memory_size", "image_pull_secrets", "mounts")
        fields["lepton"] = {key: base[key] for key in keys}
    elif prefix == "dgxcloud":
        keys = ("base_url", "kube_apiserver_url", "project_name", "pvcs")
        fields["dgxcloud"] = {key: base[key] for key in keys} | {
            "app_id_env": _env_name(base["client_id"]),
            "app_secret_env": _env_name(base["client_secret"]),
        }
    else:
        keys = ("partition", "account", "time", "host", "user", "cpus_per_task", "mem", "exclusive")
        fields["slurm"] = {key: base[key] for key in keys if key in base} | {"job_dir": base.get("remote_job_dir")}
        fields["mounts"] = base["mounts"]
    return Profile(name=base["nemotron_profile"], executor=prefix, env_vars=names, **fields)


def _env_name(value: str) -> str:
    match = ENV_REF.match(value)
    if not match:
        raise ValueError(f"{value!r} is not an ${{oc.env:NAME}} reference")
    return match.group(1)


def check(run: StepRun, profile: Profile, sections: dict[str, dict[str, Any]]) -> list[str]:
    """Named errors for broken inheritance, flattened or literal env vars and missing profiles; returns warnings."""
    for name, table in sections.items():
        if "extends" in table and table["extends"] not in sections:
            raise run.error("missing_parent_profile", f"[{name}] extends {table['extends']!r}, not in the file")
        env_vars = table.get("env_vars", {})
        flattened = [key for key in table if key in profile.env_vars]
        if not isinstance(env_vars, dict) or flattened:
            raise run.error("env_vars_clobbered", f"[{name}] sets env vars outside its env_vars table")
        literal = [key for key in profile.env_vars if key in env_vars and not ENV_REF.match(str(env_vars[key]))]
        if literal:
            raise run.error("env_vars_clobbered", f"[{name}] replaces the ${{oc.env:...}} reference of {literal}")
    missing = [name for name in run.p.checks.required_profiles or [] if name not in sections]
    if missing:
        raise run.error("missing_required_profile", f"{missing} are not in the file")
    minimum = run.p.checks.recommended_min_nodes or {}
    return [
        f"{name} has {_nodes(sections, name)} node(s); {nodes} recommended"
        for name, nodes in minimum.items()
        if name in sections and _nodes(sections, name) < nodes
    ]


def _nodes(sections: dict[str, dict[str, Any]], name: str) -> int:
    table = sections[name]
    return table["nodes"] if "nodes" in table else _nodes(sections, table["extends"])


def run(run: StepRun) -> StepResult:
    profile = load_profile(run.p.profile)
    sections = profile_sections(run, profile)
    for name, table in (run.p.sections or {}).items():
        sections[name] = sections.get(name, {}) | table
    sections["wandb"] = {"project": "${oc.env:WANDB_PROJECT,nemotron}", "entity": "${oc.env:WANDB_ENTITY,nvidia}"}
    warnings = check(run, profile, sections)
    for warning in warnings:
        run.log.warning(warning)
    text = render(sections, run.p.preamble or f"nemo-run env profiles from hardware profile {profile.name}")
    tomllib.loads(text)  # the file must parse as written
    path = run.output_dir / run.p.output_path
    if not path.resolve().is_relative_to(run.output_dir.resolve()):
        raise run.error("output_path_outside_artifact", f"output_path {run.p.output_path!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    profiles = [name for name in sections if name not in RESERVED]
    run.log.info(f"Wrote {run.p.output_path} with {len(profiles)} profile section(s)")
    return StepResult(
        stats={"profiles": len(profiles), "executor": profile.executor, "warnings": warnings},
        provenance={"env_profile": profile.name, "output_path": run.p.output_path},
    )
