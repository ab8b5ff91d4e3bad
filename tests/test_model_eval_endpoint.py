"""eval/model_eval on OpenAI-compatible endpoints (tests/openai_server.py serving the tiny Llama) and with the NeMo
Evaluator Launcher: its config passes the real launcher's dry run; its results are read from a results.yml that
nemo-evaluator itself wrote (a real run needs docker and NGC containers)."""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from conftest import DATA
from helpers import published
from openai_server import ServedModel, serve
from test_tracking import items, offline_records

from nemotron_assets.errors import NamedError
from nemotron_assets.execution import Materialization, run_stage
from nemotron_assets.pipelines import PipelineSpec
from nemotron_assets.steps.evaluation import nemo_evaluator
from nemotron_assets.steps.launch import Launcher, LaunchFailed, subprocess_launcher
from nemotron_assets.tracking import MlflowTracker, WandbTracker
from resources.artifact_store import ArtifactStore

EVALUATOR_BIN = Path(__file__).resolve().parents[1] / ".venv-evaluator" / "bin"
LAUNCHER = EVALUATOR_BIN / "nemo-evaluator-launcher"
needs_launcher = pytest.mark.skipif(
    not LAUNCHER.exists(), reason="no .venv-evaluator (`make test` builds it): the real launcher checks the configs"
)
KEY_ENV, SECRET = "NEMOTRON_TEST_ENDPOINT_KEY", "sk-planted-6f1d2c9e"
MODEL_ID = "tiny"
ROUTES = {"completions": "/v1/completions", "chat": "/v1/chat/completions"}
DATA_INPUTS = {"mcq_benchmark_parquet": "mcq", "training_jsonl": "chat"}
MCQ = {"mcq_benchmark_parquet": "mcq"}
CHAT_LOSS = "nemotron_chat_loss/nll_per_byte"
UNREACHABLE = "http://127.0.0.1:9"  # named errors come before any request
LAUNCHER_MODE = {"backend": "nemo_evaluator", "evaluator_tasks": ["mmlu_instruct"]}
HOSTED = "https://integrate.api.nvidia.com/v1/chat/completions"
STUB_SCORES = {"mmlu_instruct": {"accuracy": {"accuracy": 0.75}, "exact_match": {"strict": 0.5, "flexible": 0.625}}}
PARSED_SCORES = {"mmlu_instruct": {"accuracy": 0.75, "exact_match_strict": 0.5, "exact_match_flexible": 0.625}}


def evaluate(
    store: ArtifactStore, consumes: dict, preset: str = "tiny", launcher: Launcher | None = None, tracker=None, **config
):
    """Run one eval/model_eval stage `t/out` on the shipped data, the tiny Llama (`base`) or `lora`."""
    sources = [
        {"name": "chat", "type": "training_jsonl", "path": str(DATA / "tiny_chat.jsonl")},
        {"name": "mcq", "type": "mcq_benchmark_parquet", "path": str(DATA / "tiny_mcq.parquet")},
        {"name": "base", "type": "checkpoint_hf", "path": "${NEMOTRON_FIXTURES}/tiny-llama"},
        {"name": "lora", "type": "checkpoint_lora", "path": "${NEMOTRON_FIXTURES}/tiny-lora"},
    ]
    stage = {"name": "out", "step": "eval/model_eval", "preset": preset, "consumes": consumes, "config": config}
    pipeline = PipelineSpec.parse({"name": "t", "description": "eval", "sources": sources, "stages": [stage]})
    spec = pipeline.stage("out")
    return run_stage(pipeline, spec, pipeline.params(spec), store, "local_cpu", launcher=launcher, tracker=tracker)


def endpoint(url: str, kind: str, **config) -> dict:
    return {"endpoint_url": url + ROUTES[kind], "endpoint_model": MODEL_ID, "endpoint_type": kind} | config


def decoded(data: bytes) -> list[bytes]:
    """The base64 blobs in `data` (the launcher's scripts carry their configs so), decoded."""
    blobs = []
    for blob in re.findall(rb"[A-Za-z0-9+/]{16,}={0,2}", data):
        with contextlib.suppress(ValueError):  # not base64 after all
            blobs.append(base64.b64decode(blob, validate=True))
    return blobs


def holding(root: Path, secret: str) -> list[Path]:
    """Files under `root` holding `secret`, in plain text or base64."""
    found = []
    for path in (p for p in root.rglob("*") if p.is_file()):
        data = path.read_bytes()
        if any(secret.encode() in text for text in (data, *decoded(data))):
            found.append(path)
    return found


def assert_secret_kept(result: Materialization, *roots: Path) -> None:
    for root in roots:
        assert holding(root, SECRET) == []
    assert SECRET not in json.dumps(result.provenance, default=str)  # stats are part of the provenance


@pytest.fixture(scope="module")
def server(fixtures_dir: Path):
    with serve(ServedModel(fixtures_dir / "tiny-llama"), MODEL_ID, SECRET) as running:
        yield running


@pytest.fixture
def key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, SECRET)


def test_completions_endpoint_scores_equal_local_scores(
    fixtures_dir: Path, server, key, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    store = ArtifactStore(root=str(tmp_path / "endpoint"))
    unpublished_holders = []

    def launch_then_look(command: list[str], env: dict[str, str]) -> None:
        with caplog.at_level(logging.INFO, logger="lm_eval_child"):
            subprocess_launcher(logging.getLogger("lm_eval_child"))(command, env)
        unpublished_holders.extend(holding(store.base, SECRET))  # work dir and staging, before they are cleaned

    local = evaluate(ArtifactStore(root=str(tmp_path / "local")), {"checkpoint_hf": "base"} | DATA_INPUTS)
    answered = server.requests["/v1/completions"]
    config = endpoint(server.url, "completions", tokenizer=str(fixtures_dir / "tiny-llama"), api_key_env=KEY_ENV)
    remote = evaluate(store, DATA_INPUTS, launcher=launch_then_look, **config)

    assert server.requests["/v1/completions"] > answered
    assert set(remote.stats) == set(local.stats) == {"nemotron_mcq/acc", "nemotron_mcq/acc_norm", CHAT_LOSS}
    for metric, value in local.stats.items():
        assert remote.stats[metric] == pytest.approx(value, abs=1e-6), metric
    settings = json.loads((remote.path / "settings.json").read_text())
    assert settings["backend"] == "local-completions" and settings["endpoint_type"] == "completions"
    evaluated = json.loads((remote.path / "checkpoint.json").read_text())
    assert evaluated == {
        "endpoint_url": server.url + "/v1/completions",
        "endpoint_model": MODEL_ID,
        "endpoint_type": "completions",
        "tokenizer": str(fixtures_dir / "tiny-llama"),
    }
    assert unpublished_holders == [] and "Requesting API" in caplog.text and SECRET not in caplog.text
    assert_secret_kept(remote, tmp_path)
    assert remote.provenance["params"]["api_key_env"] == KEY_ENV


def test_a_wrong_key_is_refused_and_publishes_nothing(server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setenv(KEY_ENV, "not-the-key")
    store = ArtifactStore(root=str(tmp_path))
    answered = dict(server.requests)
    with pytest.raises(LaunchFailed, match="401 Client Error: Unauthorized"):
        evaluate(store, MCQ, **endpoint(server.url, "chat", api_key_env=KEY_ENV), limit=1)
    assert server.requests == answered and published(store) == [".work"]


def test_chat_endpoint_asks_the_mcq_generatively(server, key, tmp_path: Path):
    answered = server.requests["/v1/chat/completions"]
    result = evaluate(ArtifactStore(root=str(tmp_path)), MCQ, **endpoint(server.url, "chat", api_key_env=KEY_ENV))
    assert server.requests["/v1/chat/completions"] - answered == 48  # one greedy reply per question
    assert set(result.stats) == {"nemotron_mcq_gen/exact_match"}
    assert 0 <= result.stats["nemotron_mcq_gen/exact_match"] <= 1
    settings = json.loads((result.path / "settings.json").read_text())
    assert settings["backend"] == "local-chat-completions" and settings["apply_chat_template"] is True
    assert settings["tasks"] == ["nemotron_mcq_gen"]
    assert_secret_kept(result, tmp_path)


class LetterOracle(ServedModel):
    """Replies 'The answer is X.' to each tiny MCQ question: the right letter for the first `right` questions."""

    def __init__(self, right: int) -> None:
        rows = pq.read_table(DATA / "tiny_mcq.parquet").to_pylist()
        wrong = {"A": "B"}  # any other letter
        self.letters = {
            r["question"]: r["answer"] if i < right else wrong.get(r["answer"], "A") for i, r in enumerate(rows)
        }

    def chat(self, messages: list[dict[str, str]], max_tokens: int, stop: list[str]) -> str:
        return f"The answer is {self.letters[messages[-1]['content'].splitlines()[0]]}."


def test_generative_mcq_scores_the_replied_letters(key, tmp_path: Path):
    with serve(LetterOracle(right=12), MODEL_ID, SECRET) as oracle:
        config = endpoint(oracle.url, "chat", api_key_env=KEY_ENV)
        result = evaluate(ArtifactStore(root=str(tmp_path)), MCQ, **config)
    assert oracle.requests["/v1/chat/completions"] == 48
    assert result.stats["nemotron_mcq_gen/exact_match"] == 12 / 48


@pytest.fixture(scope="module")
def adapter(fixtures_dir: Path) -> Path:
    """A LoRA adapter on the tiny Llama at <fixtures>/tiny-lora."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(fixtures_dir / "tiny-llama")
    model = get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    model.save_pretrained(fixtures_dir / "tiny-lora")
    return fixtures_dir / "tiny-lora"


@pytest.mark.parametrize(
    ("error", "consumes", "config"),
    [
        ("wrong_endpoint_type", MCQ, endpoint(UNREACHABLE, "chat") | {"endpoint_type": "completions"}),
        ("wrong_endpoint_type", MCQ, endpoint(UNREACHABLE, "completions") | {"endpoint_type": "chat"}),
        ("wrong_endpoint_type", DATA_INPUTS, endpoint(UNREACHABLE, "chat")),  # chat loss needs log-probs
        ("missing_tokenizer_for_logprobs", MCQ, endpoint(UNREACHABLE, "completions")),
        ("api_key_not_set", MCQ, endpoint(UNREACHABLE, "chat", api_key_env="NEMOTRON_TEST_UNSET_KEY")),
        ("api_key_not_set", {}, LAUNCHER_MODE | endpoint(UNREACHABLE, "chat", api_key_env="NEMOTRON_TEST_UNSET_KEY")),
        ("no_checkpoint_to_evaluate", MCQ, endpoint(UNREACHABLE, "chat", endpoint_model="")),
        ("no_checkpoint_to_evaluate", {}, LAUNCHER_MODE),
        ("adapter_not_deployable", {"checkpoint_lora": "lora"}, LAUNCHER_MODE),
        ("no_eval_data", {"checkpoint_hf": "base"}, {"backend": "nemo_evaluator"}),
    ],
)
def test_named_errors_publish_nothing(
    adapter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: str, consumes: dict, config: dict
):
    monkeypatch.delenv("NEMOTRON_TEST_UNSET_KEY", raising=False)
    store = ArtifactStore(root=str(tmp_path))
    with pytest.raises(NamedError, match=f"^{error}: "):
        evaluate(store, consumes, **config)
    assert published(store) == [".work"]


@pytest.mark.parametrize("launcher", ["", "/nonexistent/nemo-evaluator-launcher"])
def test_a_missing_launcher_is_framework_cli_not_found(
    fixtures_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, launcher: str
):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    if launcher:
        monkeypatch.setenv(nemo_evaluator.LAUNCHER_ENV, launcher)
    else:
        monkeypatch.delenv(nemo_evaluator.LAUNCHER_ENV, raising=False)
    store = ArtifactStore(root=str(tmp_path / "store"))
    with pytest.raises(NamedError, match="^framework_cli_not_found: "):
        evaluate(store, {"checkpoint_hf": "base"}, **LAUNCHER_MODE)
    assert published(store) == [".work"]


def finish_task(task_dir: Path, exit_code: int) -> None:
    """What the local executor's run.sh writes when a task's container exits: `<UTC time> <exit code>`."""
    (task_dir / "logs").mkdir(parents=True, exist_ok=True)
    (task_dir / "logs" / "stage.exit").write_text(f"2026-11-22T16:00:13Z {exit_code}\n")


def test_wait_for_tasks_waits_for_every_exit_stage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(nemo_evaluator, "POLL_SECONDS", 0.05)
    invocation = tmp_path / "20261122_160013-5fc6a2cb0bf8bd0d"  # <execution.output_dir>/<timestamp>-<invocation id>
    first, second = invocation / "mmlu_instruct.0", invocation / "gsm8k.1"
    finish_task(first, 0)
    (second / "logs").mkdir(parents=True)
    (second / "logs" / "stage.running").write_text("2026-11-22T16:00:14Z\n")
    late = threading.Timer(0.5, finish_task, (second, 0))
    started = time.monotonic()
    late.start()
    assert set(nemo_evaluator.wait_for_tasks(tmp_path, 2)) == {first, second}
    assert time.monotonic() - started >= 0.5


def test_wait_for_tasks_gives_up_at_the_timeout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(nemo_evaluator, "POLL_SECONDS", 0.05)
    invocation = tmp_path / "20261122_160013-5fc6a2cb0bf8bd0d"
    finish_task(invocation / "mmlu_instruct.0", 0)
    (invocation / "gsm8k.1" / "logs").mkdir(parents=True)
    (invocation / "gsm8k.1" / "logs" / "stage.running").write_text("2026-11-22T16:00:14Z\n")  # never ends
    with pytest.raises(NamedError, match=r"evaluator_timeout: 1 of 2 tasks .*\['gsm8k\.1'\]") as raised:
        nemo_evaluator.wait_for_tasks(tmp_path, 2, timeout_minutes=0.01)
    assert "nemo-evaluator-launcher kill" in raised.value.recovery


def test_wait_for_tasks_names_the_failed_tasks(tmp_path: Path):
    invocation = tmp_path / "20261122_160013-5fc6a2cb0bf8bd0d"
    finish_task(invocation / "mmlu_instruct.0", 0)
    finish_task(invocation / "gsm8k.1", 137)
    with pytest.raises(LaunchFailed, match=r"\{'gsm8k\.1': '137'\}"):
        nemo_evaluator.wait_for_tasks(tmp_path, 2)


@pytest.fixture(scope="module")
def results_yml(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A results.yml written by nemo-evaluator's own `evaluate` (tests/evaluator_stub) with STUB_SCORES."""
    if not LAUNCHER.exists():
        pytest.skip("no .venv-evaluator (`make test` builds it): nemo-evaluator writes the results.yml")
    output = tmp_path_factory.mktemp("nemo_evaluator_results")
    stub = Path(__file__).parent / "evaluator_stub" / "write_results.py"
    command = [str(EVALUATOR_BIN / "python"), str(stub), str(output), "mmlu_instruct", json.dumps(STUB_SCORES)]
    subprocess.run(command, check=True, capture_output=True)
    return (output / "results.yml").read_text()


def test_read_scores_parses_nemo_evaluator_results(results_yml: str, tmp_path: Path):
    (tmp_path / "mmlu_instruct.0" / "artifacts").mkdir(parents=True)
    (tmp_path / "mmlu_instruct.0" / "artifacts" / "results.yml").write_text(results_yml)
    assert nemo_evaluator.read_scores([tmp_path / "mmlu_instruct.0"]) == {
        "scores": PARSED_SCORES,
        "higher_is_better": {"mmlu_instruct": dict.fromkeys(PARSED_SCORES["mmlu_instruct"], True)},
    }


@pytest.fixture(scope="module")
def mmlu_instruct_container() -> str:
    """The container the launcher's task catalog runs mmlu_instruct in."""
    listing = subprocess.run([str(LAUNCHER), "ls", "tasks", "--json"], check=True, capture_output=True, text=True)
    return next(t["container"] for t in json.loads(listing.stdout)["tasks"] if t["task"] == "mmlu_instruct")


class DryRunLauncher:
    """Stands in for `nemo-evaluator-launcher run`: the real launcher's dry run of the step's command (config
    validated, tasks resolved to containers, scripts written), then what each task's run.sh does once its container
    exits: results.yml into artifacts/, the exit code into logs/stage.exit. Keeps the dry run's output and files."""

    def __init__(self, results_yml: str, home: Path, exit_code: int = 0) -> None:
        self.results_yml, self.home, self.exit_code = results_yml, home, exit_code
        self.output, self.files = "", home / "dry_run"

    def __call__(self, command: list[str], env: dict[str, str]) -> None:
        assert command[1:3] == ["run", "--config"]
        env = os.environ | env | {"HOME": str(self.home)}
        done = subprocess.run([*command, "--dry-run"], env=env, capture_output=True, text=True)
        self.output = done.stdout + done.stderr
        assert done.returncode == 0, self.output[-4000:]
        output_dir = Path(yaml.safe_load(Path(command[3]).read_text())["execution"]["output_dir"])
        shutil.copytree(output_dir, self.files)
        for script in output_dir.glob("*/*/run.sh"):
            (script.parent / "artifacts").mkdir()
            (script.parent / "artifacts" / "results.yml").write_text(self.results_yml)
            finish_task(script.parent, self.exit_code)


@needs_launcher
def test_tiny_chat_preset_config_passes_the_launchers_dry_run(
    results_yml: str, mmlu_instruct_container: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("NVIDIA_API_KEY", SECRET)
    monkeypatch.setenv(nemo_evaluator.LAUNCHER_ENV, str(LAUNCHER))
    launcher = DryRunLauncher(results_yml, tmp_path / "home")
    model = "meta/llama-3.1-8b-instruct"
    store = ArtifactStore(root=str(tmp_path / "store"))
    result = evaluate(store, {}, "tiny_chat", launcher, endpoint_url=HOSTED, endpoint_model=model)

    config = yaml.safe_load((result.path / nemo_evaluator.CONFIG).read_text())
    assert config["defaults"] == [{"execution": "local"}, {"deployment": "none"}, "_self_"]
    assert config["target"]["api_endpoint"] == {
        "model_id": model,
        "url": HOSTED,
        "type": "chat",
        "api_key_name": "NVIDIA_API_KEY",
    }
    evaluation = config["evaluation"]
    assert evaluation["tasks"] == [{"name": "mmlu_instruct"}]
    assert evaluation["nemo_evaluator_config"]["config"]["params"]["limit_samples"] == 1
    assert evaluation["env_vars"]["NVIDIA_API_KEY"] == "runtime:NVIDIA_API_KEY"
    assert config["execution"]["output_dir"].startswith(str(store.artifact_dir(("t", "out")) / ".work"))
    assert mmlu_instruct_container in launcher.output
    assert "-e NVIDIA_API_KEY" in launcher.output  # passed by name into the container

    assert result.stats == {f"mmlu_instruct/{metric}": v for metric, v in PARSED_SCORES["mmlu_instruct"].items()}
    assert (result.path / "nemo_evaluator" / "mmlu_instruct.0" / "results.yml").read_text() == results_yml
    settings = json.loads((result.path / "settings.json").read_text())
    assert settings["harness"] == "nemo-evaluator-launcher" and settings["deployment"] == "none"
    assert settings["tasks"] == ["mmlu_instruct"] and settings["endpoint_type"] == "chat"
    assert json.loads((result.path / "checkpoint.json").read_text())["endpoint_url"] == HOSTED
    assert SECRET not in launcher.output
    assert_secret_kept(result, tmp_path)  # config, the dry run's scripts and .secrets.env, the artifact


@needs_launcher
def test_a_local_checkpoint_is_served_by_the_launchers_vllm(
    fixtures_dir: Path, results_yml: str, mmlu_instruct_container: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv(nemo_evaluator.LAUNCHER_ENV, str(LAUNCHER))
    launcher = DryRunLauncher(results_yml, tmp_path / "home")
    result = evaluate(
        ArtifactStore(root=str(tmp_path / "store")),
        {"checkpoint_hf": "base"},
        "tiny",
        launcher,
        limit=1,
        **LAUNCHER_MODE,
    )

    checkpoint = fixtures_dir / "tiny-llama"
    config = yaml.safe_load((result.path / nemo_evaluator.CONFIG).read_text())
    assert config["defaults"][1] == {"deployment": "vllm"} and "target" not in config
    assert config["deployment"] == {
        "checkpoint_path": str(checkpoint),
        "served_model_name": "base",
        "tensor_parallel_size": 1,
    }
    assert config["evaluation"]["env_vars"] == {"HF_TOKEN": "runtime:HF_TOKEN"}
    assert f"-v {checkpoint}:/checkpoint:ro" in launcher.output and "vllm serve /checkpoint" in launcher.output
    assert mmlu_instruct_container in launcher.output
    assert json.loads((result.path / "checkpoint.json").read_text())["name"] == "base"
    assert result.stats["mmlu_instruct/accuracy"] == 0.75


@needs_launcher
@pytest.mark.parametrize("kind", ["mlflow", "wandb"])
def test_launcher_scores_reach_the_named_tracker(
    kind: str, results_yml: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """NeMo Evaluator's scores are logged through the tracker's own client (MLflow on a SQLite store; W&B offline)."""
    monkeypatch.setenv(nemo_evaluator.LAUNCHER_ENV, str(LAUNCHER))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = (
        MlflowTracker(kind="mlflow", tracking_uri=uri)
        if kind == "mlflow"
        else WandbTracker(kind="wandb", project="p", entity="e", mode="offline", dir=str(tmp_path / "wandb"))
    )
    launcher = DryRunLauncher(results_yml, tmp_path / "home")
    store = ArtifactStore(root=str(tmp_path / "store"))
    result = evaluate(store, {"checkpoint_hf": "base"}, "tiny", launcher, tracker, **LAUNCHER_MODE)
    record = result.provenance["tracking"]
    if kind == "mlflow":
        from mlflow import MlflowClient

        logged = MlflowClient(uri).get_run(record["run_id"]).data
        assert logged.metrics == result.stats and logged.params["harness"] == "nemo-evaluator-launcher"
    else:
        run_dir = next(Path(record["directory"]).glob(f"offline-run-*-{record['run_id']}"))
        records = offline_records(run_dir)
        history = {k: v for r in records if r.HasField("history") for k, v in items(r.history.item).items()}
        assert {k: history[k] for k in result.stats} == pytest.approx(result.stats)


@needs_launcher
def test_a_failed_launcher_task_publishes_nothing(results_yml: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(nemo_evaluator.LAUNCHER_ENV, str(LAUNCHER))
    store = ArtifactStore(root=str(tmp_path / "store"))
    launcher = DryRunLauncher(results_yml, tmp_path / "home", exit_code=1)
    with pytest.raises(LaunchFailed, match=r"mmlu_instruct\.0"):
        evaluate(store, {"checkpoint_hf": "base"}, "tiny", launcher, **LAUNCHER_MODE)
    assert published(store) == [".work"]
