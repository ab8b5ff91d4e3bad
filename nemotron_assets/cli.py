"""nemotron-assets: query the catalog, validate artifacts, build fixtures, run a local Slurm, summarize a demo run."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path
from typing import Any

from nemotron_assets.catalog import CATALOG
from nemotron_assets.errors import NamedError
from nemotron_assets.fixtures import DEFAULT_FIXTURES, FIXTURES
from nemotron_assets.paths import STATE_DIR, setting


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, default=str))


def cmd_steps_list(args: argparse.Namespace) -> int:
    for type_name in filter(None, (args.consumes, args.produces)):
        if type_name not in CATALOG.types:
            print(f"unknown artifact type {type_name!r}; known: {', '.join(CATALOG.types)}", file=sys.stderr)
            return 2
    steps = CATALOG.find_steps(args.category, args.consumes, args.produces)
    if args.json:
        _print_json([s.to_json() for s in steps])
        return 0
    for s in steps:
        consumes = ", ".join(p.type + ("" if p.required else "?") for p in s.consumes) or "-"
        produces = ", ".join(p.type + ("" if p.required else "?") for p in s.produces)
        print(f"{s.id:28} {consumes} -> {produces}{'' if s.entry else '   (not runnable here yet)'}")
    return 0


def cmd_steps_show(args: argparse.Namespace) -> int:
    try:
        step = CATALOG.step(args.id)
    except KeyError as e:
        print(e.args[0], file=sys.stderr)
        return 2
    shown = step.to_json() | {"presets": step.presets}
    if args.json:
        _print_json(shown)
    else:
        print(f"{step.id}: {step.name}\n  {step.description}")
        for p in step.parameters:
            choices = f" {list(p.choices)}" if p.choices else ""
            print(f"  {p.name} = {p.default!r}{choices}  # {p.description}")
        for e in step.errors:
            print(f"  error {e.name}: {e.recovery}")
    return 0


def cmd_types(args: argparse.Namespace) -> int:
    types = CATALOG.types_json()
    if args.json:
        _print_json(types)
    else:
        for name, t in types.items():
            relations = [f"-> {target} via {step}" for target, step in t["convert_to"].items()]
            if t["is_a"]:
                relations.insert(0, f"is_a {', '.join(t['is_a'])}")
            print(f"{name:34} {'; '.join(relations)}")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from nemotron_assets.artifacts import validate

    try:
        _print_json(validate(Path(args.path), args.type))
    except NamedError as e:
        _print_json(e.to_json())
        return 1
    except (KeyError, NotImplementedError) as e:
        print(e.args[0], file=sys.stderr)
        return 2
    return 0


def cmd_fixtures_build(args: argparse.Namespace) -> int:
    unknown = sorted(set(args.names) - set(FIXTURES))
    if unknown:
        print(f"unknown fixtures {unknown}; choose from {sorted(FIXTURES)}", file=sys.stderr)
        return 2
    for name in args.names or DEFAULT_FIXTURES:
        print(f"{name}: {FIXTURES[name]()}")
    return 0


def cmd_slurm(args: argparse.Namespace) -> int:
    from nemotron_assets import local_slurm

    directory = Path(args.dir).resolve()
    if args.action == "down":
        local_slurm.stop(directory)
        return 0
    try:
        local_slurm.start(directory)
    except RuntimeError as e:
        print(e, file=sys.stderr)
        return 1
    print(
        f"export SLURM_CONF={directory}/slurm.conf NEMOTRON_PROFILE_DIR={directory} "
        f"NEMOTRON_PROFILE={local_slurm.PROFILE}"
    )
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    import yaml

    from nemotron_assets.planning import Hardware, Have, Intents, plan

    try:
        have = [Have.parse(text) for text in args.have]
    except ValueError as e:
        print(e, file=sys.stderr)
        return 2
    gpu = args.gpu or ("h100" if args.gpus_per_node else "cpu")
    gpus_per_node = args.gpus_per_node if args.gpus_per_node is not None else (0 if gpu == "cpu" else 8)
    hardware = Hardware(args.nodes, gpus_per_node, gpu, args.executor)
    translate = tuple(args.translate.split(":", 1)) if args.translate else None
    intents = Intents(
        model=args.model,
        peft=args.peft,
        curate=args.curate,
        translate=translate,
        translate_backend=args.translate_backend,
        faith=args.faith,
        rl=args.rl,
        data_kind=args.data_kind,
        rl_prep=args.rl_prep,
        seq_length=args.seq_length,
    )
    result = plan(args.goal, have, hardware, intents)
    if args.format == "json":
        _print_json(result.to_json() | ({"explain": result.explain()} if args.explain else {}))
        return 0
    comment = "%%" if args.format == "mermaid" else "#"
    if args.explain:
        explained = result.explain()
        for rule in explained["rules"]:
            print(f"{comment} rule {rule['rule']}: {rule['cite']}")
        print(f"{comment} memory: {json.dumps(explained['memory'])}")
    if result.blocked:
        print(f"{comment} blocked: {result.blocked}")
    elif args.format == "mermaid":
        print(result.to_mermaid())
    else:
        name = args.name or "plan_" + "".join(c if c.isalnum() else "_" for c in args.goal).lower()
        for warning in result.warnings:
            print(f"# warning: {warning}")
        print(yaml.safe_dump(result.to_pipeline(name), sort_keys=False), end="")
    return 0


def cmd_services(args: argparse.Namespace) -> int:
    from nemotron_assets.fixtures.services import ServiceServer

    server = ServiceServer(args.host, args.port)
    print(f"fixture LLM + NMT services at {server.url} (Ctrl-C stops them)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def cmd_demo_summary(args: argparse.Namespace) -> int:
    from nemotron_assets.demo import summary

    print(summary(args.pipeline))
    return 0


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="nemotron-assets", description=__doc__)
    commands = root.add_subparsers(required=True, metavar="COMMAND")

    steps = commands.add_parser("steps", help="the step catalog").add_subparsers(required=True, metavar="ACTION")
    listing = steps.add_parser("list", help="list steps, optionally filtered (is_a-aware)")
    listing.add_argument("--category")
    listing.add_argument("--consumes", metavar="TYPE", help="steps that accept this artifact type")
    listing.add_argument("--produces", metavar="TYPE", help="steps whose output is (a kind of) this type")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=cmd_steps_list)
    show = steps.add_parser("show", help="one step in full")
    show.add_argument("id")
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=cmd_steps_show)

    types = commands.add_parser("types", help="the artifact types and their is_a / convert_to relations")
    types.add_argument("--json", action="store_true")
    types.set_defaults(func=cmd_types)

    check = commands.add_parser("validate", help="check an artifact against its type's contract")
    check.add_argument("path")
    check.add_argument("--type", required=True, choices=sorted(CATALOG.types))
    check.set_defaults(func=cmd_validate)

    from nemotron_assets.planning import EXECUTORS, GPUS

    planning = commands.add_parser(
        "plan", help="compose a pipeline from a goal, the artifacts at hand and the hardware"
    )
    planning.add_argument("--goal", required=True, help="a step id, an artifact type, or a task word (sft, peft, ...)")
    planning.add_argument(
        "--have", action="append", default=[], metavar="TYPE[:NAME][=PATH]", help="an artifact at hand"
    )
    planning.add_argument("--model", default="nano3", help="nano3, super3, or an HF model id or path")
    planning.add_argument("--nodes", type=int, default=1)
    planning.add_argument("--gpus-per-node", type=int)
    planning.add_argument("--gpu", choices=GPUS)
    planning.add_argument("--executor", choices=EXECUTORS, default="local")
    planning.add_argument("--peft", choices=["lora", "none"])
    planning.add_argument("--curate", action="store_true", help="clean the corpus with NeMo Curator first")
    planning.add_argument("--translate", metavar="SRC:TGT")
    planning.add_argument("--translate-backend", choices=["llm", "nmt"], default="llm")
    planning.add_argument("--faith", action="store_true", help="score translations with FAITH")
    planning.add_argument("--rl", choices=["dpo", "rlvr", "rlhf"])
    planning.add_argument(
        "--rl-prep", action="store_true", help="RL data arrives as HF references/blends or needs sharding"
    )
    planning.add_argument("--data-kind", choices=["chat", "plain", "mcq"])
    planning.add_argument(
        "--seq-length", type=int, help="training sequence length = packing size (default 4096 on GPUs)"
    )
    planning.add_argument("--format", choices=["json", "mermaid", "yaml"], default="json")
    planning.add_argument("--name", help="pipeline name for --format yaml (default plan_<goal>)")
    planning.add_argument(
        "--explain",
        action="store_true",
        help="also print the selection rules that fired (catalog/rules.toml, with the seed sentence each encodes) "
        "and the memory estimate of full SFT vs LoRA",
    )
    planning.set_defaults(func=cmd_plan)

    fixtures = commands.add_parser("fixtures", help="offline fixtures").add_subparsers(required=True, metavar="ACTION")
    build = fixtures.add_parser("build", help="build fixtures into $NEMOTRON_FIXTURES (skips built ones)")
    # No `choices=`: Python 3.11's argparse checks an empty nargs="*" list against them and fails.
    build.add_argument(
        "names", nargs="*", metavar="NAME", help=f"{', '.join(FIXTURES)}; default: {' '.join(DEFAULT_FIXTURES)}"
    )
    build.set_defaults(func=cmd_fixtures_build)

    rootfs = commands.add_parser("rootfs", help="the container executor's job root filesystem (bubblewrap)")
    rootfs.add_argument("action", choices=["build"], help="debootstrap + this environment's pins + this package")
    rootfs.add_argument("--dir", default=None, help="where (default $NEMOTRON_ROOTFS, else .nemotron/rootfs/job)")
    rootfs.set_defaults(func=cmd_rootfs)

    store = commands.add_parser("store", help="the artifact store").add_subparsers(required=True, metavar="ACTION")
    gc = store.add_parser("gc", help="remove what dead runs left (staging, finished work dirs)")
    export = store.add_parser("export", help="copy a checkpoint version out with its model card, ready to upload")
    export.add_argument("key", help="<pipeline>/<artifact>, e.g. tiny/merged")
    export.add_argument("destination", type=Path, help="a directory that does not exist yet")
    export.add_argument("--version", default=None, help="default: the current version")
    for action, func in ((gc, cmd_store_gc), (export, cmd_store_export)):
        action.add_argument("--root", default=None, help="the artifact root (default $NEMOTRON_ARTIFACT_ROOT)")
        action.set_defaults(func=func)

    slurm = commands.add_parser("slurm", help="a single-node Slurm on this machine, to try the Slurm launcher")
    slurm.add_argument("action", choices=["up", "down"], help="up: start it and print the exports; down: stop it")
    slurm.add_argument("--dir", default=str(STATE_DIR / "slurm"), help="its configuration, state and logs")
    slurm.set_defaults(func=cmd_slurm)

    services = commands.add_parser(
        "services", help="the deterministic loopback LLM/NMT services the tiny data branch talks to"
    )
    services.add_argument("--host", default="127.0.0.1")
    services.add_argument("--port", type=int, default=8765)
    services.set_defaults(func=cmd_services)

    demo = commands.add_parser("demo", help="demo helpers").add_subparsers(required=True, metavar="ACTION")
    summary = demo.add_parser("summary", help="summarize the latest materializations of a pipeline in $DAGSTER_HOME")
    summary.add_argument("--pipeline", default="tiny")
    summary.set_defaults(func=cmd_demo_summary)
    return root


def cmd_rootfs(args: argparse.Namespace) -> int:
    from nemotron_assets.launchers.container import build_rootfs

    print(build_rootfs(Path(args.dir or setting("NEMOTRON_ROOTFS"))))
    return 0


def cmd_store_gc(args: argparse.Namespace) -> int:
    from resources.artifact_store import ArtifactStore

    for path in ArtifactStore(root=args.root).gc():
        print(f"removed {path}")
    return 0


def cmd_store_export(args: argparse.Namespace) -> int:
    from nemotron_assets.model_card import export
    from resources.artifact_store import ArtifactStore

    try:
        print(export(ArtifactStore(root=args.root), args.key.split("/"), args.destination, args.version))
    except NamedError as e:
        _print_json(e.to_json())
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `nemotron-assets steps list | head` ends quietly
    args = parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
