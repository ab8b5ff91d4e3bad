"""rl/nemo_rl/dpo, rlvr and rlhf: NeMo-RL in its container (nvcr.io/nvidia/nemo-rl), launched through the hardware
profile (Slurm job, Kubernetes pod) with a Ray cluster sized from it.

Before anything is launched: the data's rows fit the algorithm (DPO pairs ordered chosen over rejected, RLVR prompts
carrying a verifier field, RLHF rows NeMo-Gym can serve), train and validation are distinct splits, the batch shapes
divide, and the policy starts from a validated SFT checkpoint_megatron (the Megatron contract). NeMo-RL reads only
HF checkpoints, so the job first exports the SFT checkpoint to HF with Megatron-Bridge's AutoBridge (architecture
and tokenizer from `policy.model_name`), then runs NeMo-RL's entry on the generated config. Checkpoints go to the
stage's work directory (a retried job resumes); the last step's Megatron weights become the artifact.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

from nemotron_assets.artifacts import validate
from nemotron_assets.artifacts.checkpoints import megatron_iteration_dir
from nemotron_assets.artifacts.files import TRAIN, data_files, link_or_copy
from nemotron_assets.artifacts.jsonl import PROMPT_FIELDS, VERIFIER_FIELDS, RecordStream, iter_lines, parse_line
from nemotron_assets.digests import content_digest
from nemotron_assets.errors import NamedError
from nemotron_assets.steps import StepResult, StepRun
from nemotron_assets.steps.nemo_rl.config import ENTRIES, NEMO_RL, data_section, merge, run_config
from resources.profile import HardwareProfile

SHAPES = {"rl/nemo_rl/dpo": "dpo", "rl/nemo_rl/rlvr": "rlvr"}
CONTRACT_ERRORS = {  # the JSONL contract's row errors, as these steps name them
    "invalid_dpo_preference_schema": "inverted_preference_pairs",
    "missing_rlvr_verifier_fields": "missing_verifier_fields",
}
GYM_FIELDS = ("responses_create_params",)  # a row already in NeMo-Gym's Responses API form
RAY_PORT = 6379
EXPORT = (  # Megatron SFT checkpoint -> HF directory NeMo-RL can load (Megatron-Bridge is in the nemo-rl image)
    "from megatron.bridge import AutoBridge; import sys; "
    "AutoBridge.from_hf_pretrained(sys.argv[1]).export_ckpt(sys.argv[2], sys.argv[3])"
)


def splits(run: StepRun) -> tuple[Path, Path]:
    """(train, validation) JSONL: from data_prep/rl_prep's manifest.json, else the data files and parameters."""
    data = run.input("training_jsonl").path
    manifest = data / "manifest.json" if data.is_dir() else None
    if manifest is not None and manifest.exists():
        entries = json.loads(manifest.read_text())
        train, validation = data / entries["train"], data / entries["val"] if entries.get("val") else None
    else:
        train = data_files(data, (".jsonl",), TRAIN)[0]
        validation = run.p.data.validation.data_path
        validation = Path(validation) if validation else None
    if validation is None or validation.resolve() == train.resolve():
        if not run.p.data.allow_train_as_validation:
            raise run.error("train_used_as_validation_unintentionally", f"no validation split apart from {train}")
        validation = train
    return train, validation


def check_rows(run: StepRun, files: list[Path]) -> dict[str, Any]:
    """Every row fits the algorithm; returns the row count and the prompt/answer fields the rows use."""
    if run.step.id == "rl/nemo_rl/rlhf":
        return check_gym_rows(run, files)
    stream = RecordStream(files, frozenset({SHAPES[run.step.id]}))
    fields: dict[str, Any] = {"gym_rows": 0}
    try:
        for record in stream:
            fields.setdefault("prompt", next(f for f in PROMPT_FIELDS if record.get(f)))
            fields.setdefault("answer", next((f for f in VERIFIER_FIELDS if record.get(f) is not None), None))
            fields["gym_rows"] += any(f in record for f in GYM_FIELDS)
    except NamedError as e:
        if e.name not in CONTRACT_ERRORS:
            raise
        raise run.error(CONTRACT_ERRORS[e.name], e.detail) from None
    rows = fields["gym_rows"]
    if run.step.id == "rl/nemo_rl/rlvr" and (
        rows not in (0, stream.records) or bool(rows) != run.p.env.should_use_nemo_gym
    ):
        raise run.error(
            "mixed_nemo_gym_and_upstream_config",
            f"env.should_use_nemo_gym is {run.p.env.should_use_nemo_gym} but {rows} of {stream.records} rows are "
            "NeMo-Gym rows",
        )
    return fields | {"rows": stream.records}


def check_gym_rows(run: StepRun, files: list[Path]) -> dict[str, Any]:
    """RLHF rows NeMo-Gym serves: Responses API parameters, or a prompt to build them from, and an agent."""
    agent = run.p.data.default_agent_ref
    rows = 0
    for where, line in iter_lines(files):
        record = parse_line(where, line)
        if not any(record.get(f) for f in (*GYM_FIELDS, "messages", "prompt", "question")):
            raise run.error("responses_api_schema_missing", f"{where}: no responses_create_params or prompt")
        if not (record.get("agent_ref") or agent):
            raise run.error("responses_api_schema_missing", f"{where}: no agent_ref and no data.default_agent_ref")
        rows += 1
    return {"rows": rows}


def response_rows(source: Path, target: Path, answer: str) -> Path:
    """Chat-form RLVR rows as NeMo-RL's ResponseDataset reads them for the math environment: the prompt (the last
    user turn) under `input`, the verifier's ground truth under `output`. (ResponseDataset passes a `messages`
    column through as is, so the separate answer field would never reach the verifier.)"""
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("w") as out:
        for _, line in iter_lines([source]):
            record = json.loads(line)
            prompt = [m["content"] for m in record["messages"] if m["role"] == "user"][-1]
            out.write(json.dumps({"input": prompt, "output": str(record[answer])}) + "\n")
    return target


def data_parallel(run: StepRun, cluster: dict[str, int]) -> int:
    megatron = run.p.policy.megatron_cfg
    model_parallel = megatron.tensor_model_parallel_size * megatron.pipeline_model_parallel_size
    return max(cluster["num_nodes"] * cluster["gpus_per_node"] // model_parallel, 1)


def check_batches(run: StepRun, cluster: dict[str, int]) -> None:
    """DPO: pairs per step split into micro batches on every data-parallel rank. GRPO: the rollouts of a step split
    into whole policy updates."""
    dp, gbs = data_parallel(run, cluster), run.p.policy.train_global_batch_size
    if run.step.id == "rl/nemo_rl/dpo":
        micro = run.p.policy.train_micro_batch_size
        if gbs % (micro * dp):
            raise run.error("batch_shape_not_divisible", f"{gbs} pairs over micro {micro} x data-parallel {dp}")
        return
    rollouts = run.p.grpo.num_prompts_per_step * run.p.grpo.num_generations_per_prompt
    if gbs is not None and (rollouts % gbs or gbs % dp):
        error = "rollout_batch_not_divisible" if run.step.id == "rl/nemo_rl/rlvr" else "invalid_batch_shape"
        raise run.error(error, f"{rollouts} rollouts per step, train_global_batch_size {gbs}, data-parallel {dp}")


def policy_source(run: StepRun) -> tuple[Path, Path]:
    """(the validated SFT Megatron checkpoint every RL stage warm-starts from, the HF export of it NeMo-RL loads)."""
    checkpoint = run.input("checkpoint_megatron").path
    validate(checkpoint, "checkpoint_megatron")  # bad or incomplete SFT checkpoints stop here
    return megatron_iteration_dir(checkpoint), run.work_dir / "policy_hf"


def check_reward_model(run: StepRun, policy: Path) -> dict[str, Any]:
    """RLHF: the GenRM is its own HF checkpoint, never the policy."""
    if run.step.id != "rl/nemo_rl/rlhf":
        return {}
    reward = run.input("checkpoint_hf").path
    validate(reward, "checkpoint_hf")
    # the Megatron policy checkpoint can only be the reward model by path; its HF name by content (hashed once)
    hf_start = Path(run.p.policy.model_name)
    same_path = policy.resolve() == reward.resolve()
    if same_path or (hf_start.exists() and content_digest(hf_start) == content_digest(reward)):
        raise run.error("reward_model_policy_confused", f"reward model {reward} is the policy's checkpoint")
    return {"env": {"nemo_gym": {"genrm_model": {"responses_api_models": {"vllm_model": {"model": reward}}}}}}


def cluster_size(run: StepRun) -> dict[str, int]:
    """Ray's cluster: the profile's nodes, each with the GPUs this step may use."""
    return {"num_nodes": HardwareProfile(name=run.profile).load().nodes, "gpus_per_node": run.gpus}


def job_script(run: StepRun, checkpoint: Path, policy: Path, nodes: int) -> str:
    """The job's script (in the job's filesystem): export the SFT checkpoint (once), start Ray across the job's
    nodes, run NeMo-RL's entry on node 0 on the config the backend wrote (CONFIG). On one node NeMo-RL starts its
    own Ray. Multi-node jobs find the head through Slurm's node list."""
    entry = f'python {NEMO_RL}/{ENTRIES[run.step.id][0]} --config "$CONFIG"'
    lines = ["set -euo pipefail", f"cd {NEMO_RL}"]
    policy = run.paths.name(policy)
    model = run.paths.name(run.p.policy.model_name)
    export = shlex.join(["python", "-c", EXPORT, model, run.paths.to_job(checkpoint), policy])
    lines.append(f'if [ "${{SLURM_NODEID:-0}}" = 0 ] && [ ! -f {shlex.quote(policy)}/config.json ]; then {export}; fi')
    if nodes == 1:
        return "\n".join([*lines, f"exec {entry}", ""])
    head = '$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)'
    gpus = f"--num-gpus={run.gpus}"
    return "\n".join(
        [
            *lines,
            f"HEAD={head}",
            'if [ "${SLURM_NODEID:-0}" = 0 ]; then',
            f"  ray start --head --port={RAY_PORT} {gpus}",
            f'  until [ "$(ray list nodes --format json | grep -c ALIVE)" -ge {nodes} ]; do sleep 5; done',
            f"  {entry}; status=$?; ray stop; exit $status",
            "else",
            f"  sleep 10; exec ray start --address=$HEAD:{RAY_PORT} {gpus} --block",
            "fi",
            "",
        ]
    )


def latest_step(checkpoints: Path) -> Path:
    """NeMo-RL's last saved step_<N> directory."""
    steps = sorted(checkpoints.glob("step_*"), key=lambda p: int(p.name.removeprefix("step_")))
    if not steps:
        raise FileNotFoundError(f"NeMo-RL saved no step_* checkpoint under {checkpoints}")
    return steps[-1]


def prepare(run: StepRun) -> tuple[dict[str, Any], dict[str, Any]]:
    """Every check, then the job's NeMo-RL config and script; returns them and a summary."""
    train, validation = splits(run)
    fields = check_rows(run, sorted({train, validation}))
    cluster = cluster_size(run)
    check_batches(run, cluster)
    checkpoint, policy = policy_source(run)
    reward = check_reward_model(run, checkpoint)
    run.work_dir.mkdir(parents=True, exist_ok=True)
    if run.step.id == "rl/nemo_rl/rlvr" and fields["prompt"] == "messages" and not fields["gym_rows"]:
        directory, answer = run.work_dir / "data", fields["answer"]
        train = response_rows(train, directory / "train.jsonl", answer)
        validation = response_rows(validation, directory / "val.jsonl", answer)
        fields |= {"prompt": "input", "answer": "output"}
    output = {"checkpoints": run.work_dir / "checkpoints", "logs": run.work_dir / "logs"}
    agent = run.p.data.default_agent_ref if run.step.id == "rl/nemo_rl/rlhf" else None
    data = data_section(run.step.id, train, validation, fields, agent)
    config = merge(run_config(run.step.id, run.p, policy, data, cluster, output), reward)
    job = {"config": config, "script": job_script(run, checkpoint, policy, cluster["num_nodes"])}
    return job, {"rows": fields["rows"], "policy": str(policy), "warm_start": str(checkpoint)}


def run(run: StepRun) -> StepResult:
    job, summary = prepare(run)
    run.launch_job("nemo_rl", job)
    step = latest_step(run.work_dir / "checkpoints")
    weights = step / "policy" / "weights"
    for item in weights.rglob("*"):
        if item.is_file():
            (run.output_dir / item.relative_to(weights)).parent.mkdir(parents=True, exist_ok=True)
            link_or_copy(item, run.output_dir / item.relative_to(weights))
    info = json.loads((step / "training_info.json").read_text()) if (step / "training_info.json").exists() else {}
    return StepResult(summary | info | {"checkpoint": step.name}, {"rl": summary | {"algorithm": run.step.id}})
