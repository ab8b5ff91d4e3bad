"""Lepton and DGX Cloud launchers: nemo-run executors built from the profile, one nemo-run Experiment per command.

The profile's storage is mounted in the job (Lepton: a mount from its volume; DGX Cloud: its PVC) at the path jobs
see it; Dagster Pipes runs over files in a job directory on that storage, so the job's logs, progress and metadata
reach the run while it waits.

Env-var values (and DGX Cloud's app id and secret) are read from the submitting environment when the executor is
built for a launch; the profile names only the variables.
"""

from __future__ import annotations

import shlex
import tempfile
import uuid
from pathlib import Path

import dagster as dg
import nemo_run as run

from nemotron_assets.launchers import backend_image, env_values, job_paths, step_kind, storage_pipes, storage_source
from nemotron_assets.steps.launch import InfrastructureFailure, Launcher, LaunchFailed, Measured, measured
from resources.profile import Profile


def lepton_mounts(profile: Profile) -> list[dict[str, str]]:
    """The storage's mount (from its volume), then the profile's own [lepton] mounts."""
    own = {"path": "/", "mount_path": profile.storage.mount_path, "from": storage_source(profile, "volume")}
    return [own, *(dict(m) for m in profile.lepton.mounts)]


def dgxcloud_pvcs(profile: Profile) -> list[dict[str, str]]:
    """The storage's PVC, then the profile's own [dgxcloud] pvcs."""
    own = {"name": "storage", "path": profile.storage.mount_path, "claimName": storage_source(profile, "pvc")}
    return [own, *(dict(p) for p in profile.dgxcloud.pvcs)]


def lepton_executor(profile: Profile, image: str, gpus: int, env: dict[str, str]) -> run.LeptonExecutor:
    lepton = profile.lepton
    nprocs = max(gpus, 1)  # one process per GPU, one for CPU steps
    return run.LeptonExecutor(
        container_image=image,
        nemo_run_dir=f"{profile.storage.mount_path}/nemo_run",
        nodes=profile.nodes,
        gpus_per_node=gpus,
        nprocs_per_node=nprocs,
        resource_shape=lepton.resource_shape if gpus else "cpu.large",
        node_group=lepton.node_group,
        shared_memory_size=lepton.shared_memory_size,
        mounts=lepton_mounts(profile),
        image_pull_secrets=list(lepton.image_pull_secrets),
        env_vars=env_values(profile, profile.env_vars) | env,
        launcher="torchrun" if nprocs > 1 or profile.nodes > 1 else None,
    )


def dgxcloud_executor(profile: Profile, image: str, gpus: int, env: dict[str, str]) -> run.DGXCloudExecutor:
    dgx = profile.dgxcloud
    nprocs = max(gpus, 1)
    credentials = env_values(profile, [dgx.app_id_env, dgx.app_secret_env])
    return run.DGXCloudExecutor(
        base_url=dgx.base_url,
        kube_apiserver_url=dgx.kube_apiserver_url,
        client_id=credentials[dgx.app_id_env],
        client_secret=credentials[dgx.app_secret_env],
        project_name=dgx.project_name,
        container_image=image,
        pvc_nemo_run_dir=f"{profile.storage.mount_path}/nemo_run",
        nodes=profile.nodes,
        gpus_per_node=gpus,
        nprocs_per_node=nprocs,
        pvcs=dgxcloud_pvcs(profile),
        env_vars=env_values(profile, profile.env_vars) | env,
        launcher="torchrun" if nprocs > 1 or profile.nodes > 1 else None,
    )


EXECUTORS = {"lepton": lepton_executor, "dgxcloud": dgxcloud_executor}


def submit(executor: run.Executor, command: list[str], title: str, dryrun: bool = False) -> None:
    """Run `command` as a nemo-run Script on `executor` and wait; raise LaunchFailed unless it succeeded.

    nemo-run writes the executor (env-var values included) into its experiment directory, so that directory is a
    temporary one, removed when the run ends.
    """
    with (
        tempfile.TemporaryDirectory(prefix="nemo_run-") as home,
        run.Experiment(title, executor=executor, base_dir=home, enable_goodbye_message=False) as exp,
    ):
        exp.add(run.Script(inline=shlex.join(command)), name="step")
        if dryrun:
            exp.dryrun(log=False)
            return
        exp.run(sequential=True, detach=False)
        states = {name: str(job.get("status")) for name, job in (exp.status(return_dict=True) or {}).items()}
    if failure := outcome(title, states):
        raise failure


def outcome(title: str, states: dict[str, str]) -> Exception | None:
    """None when every job succeeded; a job cancelled from outside or lost track of (nemo-run's CANCELLED, UNKNOWN)
    is an InfrastructureFailure, anything else that did not succeed a LaunchFailed."""
    if states and all("SUCCEEDED" in state for state in states.values()):
        return None
    lost = any(mark in state for state in states.values() for mark in ("CANCELLED", "UNKNOWN"))
    return (InfrastructureFailure if lost else LaunchFailed)(f"nemo-run experiment {title} ended with {states}")


def cloud_launcher(
    context: dg.AssetExecutionContext, profile: Profile, gpus: int, image: str | None = None
) -> Launcher:
    """Submit each command to Lepton or DGX Cloud (by the profile's executor) and wait for it."""

    def launch(command: list[str], env: dict[str, str]) -> Measured:
        step_image = image or backend_image(profile, step_kind(context))
        title = f"nemotron-{context.run_id[:8]}"
        directory = Path(profile.storage.host_path) / ".nemotron-jobs" / f"{title}-{uuid.uuid4().hex[:8]}"
        directory.mkdir(parents=True)
        with storage_pipes(context, directory, job_paths(profile)) as (pipes_env, session):
            executor = EXECUTORS[profile.executor](profile, step_image, gpus, env | pipes_env)
            submit(executor, command, title=title)
        return measured(session.get_custom_messages())  # no GPU-hours: nemo-run reports no job times

    return launch
