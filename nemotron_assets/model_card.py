"""Model cards: a Hugging Face `README.md` for every checkpoint_hf and checkpoint_lora, written from provenance.

A card is written twice. At publication, inside the artifact (sealed with its other files), from what is known
then: base model, training data by name and version, parameters, training results. When the quality gate decides,
the full card (the before/after scores and the verdict added) goes beside the artifact, in
`<artifact>/.cards/<version>.md`: a sealed version is never edited. `export` bundles an artifact version with its
latest card as README.md, re-sealed, ready for `huggingface-cli upload`.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from nemotron_assets.artifacts.files import read_provenance
from nemotron_assets.catalog import CATALOG
from nemotron_assets.errors import contract_error
from nemotron_assets.gates import Comparison, comparison_table
from nemotron_assets.held_out import TRAINED_ON, lineage
from nemotron_assets.pipelines.bookends import CHECKPOINTS

if TYPE_CHECKING:
    from collections.abc import Sequence

    from resources.artifact_store import ArtifactStore

CARD = "README.md"
CARDS = ".cards"  # <artifact>/.cards/<version>.md: the card with the gate's verdict
LIBRARY = {"checkpoint_hf": "transformers", "checkpoint_lora": "peft"}  # the library that loads the format
LICENSE_NOTE = (
    "License: not set. Add `license: <id>` to the header above (the base model's license, or a stricter one your "
    "training data requires; ids as on https://huggingface.co/docs/hub/repositories-licenses) before pushing."
)


def card_type(type_name: str) -> str | None:
    """The card format an artifact type gets (checkpoint_hf or checkpoint_lora), None when it gets no card."""
    return next((t for t in LIBRARY if CATALOG.is_a(type_name, t)), None)


def shown(value: Any) -> Any:
    """A parameter as a card shows it: a local path by its last component (a card holds no machine's paths, so
    one version's card is the same wherever it was built)."""
    return Path(value).name if isinstance(value, str) and value.startswith("/") else value


def base_model(provenance: dict[str, Any]) -> str | None:
    """The model the checkpoint was trained or derived from: its recorded base, the model parameter, or the
    checkpoint it consumed (by asset key)."""
    record = provenance.get("base_model") or provenance.get("merged_from", {}).get("base")
    params = provenance.get("params", {})
    weights = CATALOG.step(provenance["step"]["id"]).model_parameters("weights")
    named = record["name_or_path"] if record else next((params[p] for p in weights if params.get(p)), None)
    if named:
        return shown(named)
    pipeline = provenance["asset_key"].split("/")[0]
    return next((f"{pipeline}/{i['name']}" for i in provenance.get("inputs", []) if i["type"] in CHECKPOINTS), None)


def datasets(directory: Path) -> list[dict[str, str]]:
    """What the checkpoint's lineage learned from: {id: <pipeline>/<artifact>@<version>, split}, once each."""
    found = {
        f"{provenance['asset_key'].split('/')[0]}/{record['name']}@{record['version']}": record["split"]
        for provenance in lineage(directory)
        for record in provenance.get(TRAINED_ON, [])
    }
    return [{"id": key, "split": split} for key, split in sorted(found.items())]


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows])


def evaluation_section(verdict: dict[str, Any] | None, rows: Sequence[Comparison]) -> str:
    if verdict is None:
        return (
            "Not evaluated when published. When the quality gate decides, the card with the scores before and after "
            f"this stage and the verdict is written to `{CARDS}/<version>.md` beside the artifact; "
            "`nemotron-assets store export` bundles it."
        )
    outcome = "passed" if verdict["passed"] else "FAILED"
    return (
        f"Evaluated by `{verdict['before']}` (before) and `{verdict['after']}` (after).\n\n{comparison_table(rows)}\n\n"
        f"Quality gate: **{outcome}** (tolerance {verdict['tolerance']}): {verdict['reason']}."
    )


def render(
    directory: Path, provenance: dict[str, Any], verdict: dict[str, Any] | None = None, rows: Sequence[Comparison] = ()
) -> str:
    """The card of the artifact at `directory` from its provenance, with the gate's verdict when given."""
    kind = card_type(provenance["type"])
    step = CATALOG.step(provenance["step"]["id"])
    base, data = base_model(provenance), datasets(directory)
    pipeline = provenance["asset_key"].split("/")[0]
    header = {
        "base_model": base,
        "datasets": [d["id"] for d in data],
        "library_name": LIBRARY[kind],
        "tags": sorted({"nemotron-assets", step.category, pipeline, *(["lora"] if kind == "checkpoint_lora" else [])}),
    }
    front = yaml.safe_dump({k: v for k, v in header.items() if v}, sort_keys=False)
    params = sorted((k, shown(v)) for k, v in provenance["params"].items() if v is not None)
    results = sorted((k, v) for k, v in provenance.get("stats", {}).items() if isinstance(v, (int, float, str)))
    data_rows = [(d["id"].split("@")[0], d["id"].split("@")[1], d["split"]) for d in data]
    return "\n\n".join(
        [
            f"---\n{front}# license: set it before pushing (see License below)\n---",
            f"# {provenance['asset_key']}",
            f"{CATALOG.types[provenance['type']].description} Version `{provenance['version']}`, made by step "
            f"`{step.id}` (preset `{provenance['step']['preset']}`) of nemotron-assets: {step.description}",
            f"## Base model\n\n`{base}`" if base else "## Base model\n\nNone (trained from scratch).",
            "## Training data\n\n"
            + (table(("dataset", "version", "split"), data_rows) if data else "None (a conversion of its inputs)."),
            "## Training parameters\n\n" + table(("parameter", "value"), params),
            "## Results\n\n" + table(("metric", "value"), results),
            "## Evaluation\n\n" + evaluation_section(verdict, rows),
            f"## License\n\n{LICENSE_NOTE}\n",
        ]
    )


def write_card(directory: Path, provenance: dict[str, Any]) -> None:
    """The publication card, inside the artifact being built (a card a training library left there replaced)."""
    (directory / CARD).unlink(missing_ok=True)  # may be a hard link into the step's work directory
    (directory / CARD).write_text(render(directory, provenance))


def sidecar(artifact: Path, version: str) -> Path:
    return artifact / CARDS / f"{version}.md"


def write_verdict(directory: Path, verdict: dict[str, Any], rows: Sequence[Comparison]) -> Path:
    """The full card of the published version at `directory`, beside the artifact: its sealed files stay as they are."""
    path = sidecar(directory.parent, directory.name)
    path.parent.mkdir(exist_ok=True)
    path.write_text(render(directory, read_provenance(directory), verdict, rows))
    return path


def export(store: ArtifactStore, key: Sequence[str], destination: Path, version: str | None = None) -> Path:
    """Copy a checkpoint version (default: the current one) to `destination` with its latest card as README.md,
    re-sealed so the copy verifies on its own. Refuses an existing destination."""
    from resources.artifact_store import seal

    current = (version, store.version_dir(key, version)) if version else store.current(key)
    if current is None or read_provenance(current[1]) is None:
        raise contract_error("artifact_missing", f"{'/'.join(key)} has no published version {version or ''}".strip())
    if destination.exists():
        raise contract_error("export_destination_exists", f"{destination} exists")
    version, source = current
    shutil.copytree(source, destination)
    if (card := sidecar(source.parent, version)).exists():
        shutil.copyfile(card, destination / CARD)
    provenance = read_provenance(destination)
    seal(destination, provenance | {"exported_from": {"asset_key": "/".join(key), "version": version}})
    return destination
