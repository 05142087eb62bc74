"""`influmix` command line: run, refresh, submit, status, logs, config, verify."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from operators.errors import InfluMixError
from operators.io.lease import LeaseHeld
from operators.io.secrets import redact
from workflows.config import dump_config, load_config, resolve_config_path
from workflows.logs import configure_logging

log = logging.getLogger("influmix")
#: The refresh stages in order (workflows.mixture_refresh.STAGE_NAMES; a test keeps the two equal).
STAGES_HELP = "featurize, aggregate, solve, validate, select, publish"


def _cmd_run(args: argparse.Namespace) -> int:
    from workflows.mixture_refresh import run_mixture_refresh

    cfg = load_config(args.config, args.overrides)
    configure_logging(cfg.log_format)
    _print_result(run_mixture_refresh(cfg, start=args.start, until=args.until))
    return 0


def _print_result(result) -> None:
    out = {"run_id": result.run_id, "manifest": result.manifest_uri, "weights": result.weights}
    if result.manifest_uri is None:  # a span of stages that stops before publishing
        out.update({"run_root": result.run_root, "stages": list(result.stages)})
    print(json.dumps(out, indent=2, sort_keys=True))


def _cmd_refresh(args: argparse.Namespace) -> int:
    from workflows.refresh import run_scheduled_refresh

    cfg = load_config(args.config, args.overrides)
    configure_logging(cfg.log_format)
    _print_result(run_scheduled_refresh(cfg, stamp=args.stamp))
    return 0


def _cmd_config(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    sys.stdout.write(dump_config(cfg))
    from workflows.run.plan import run_keys
    from workflows.run.pins import resolve_checkpoint, with_checkpoint

    try:  # the keys list the inputs and the checkpoint's files
        keys = run_keys(with_checkpoint(cfg, resolve_checkpoint(cfg)))
    except InfluMixError as exc:
        print(f"# keys: cannot be derived now: {redact(str(exc))}")
        return 0
    print(f"# featurizer key: {keys.featurizer}  (features: {redact(keys.store)})")
    print(f"# analysis key: {keys.analysis}")
    print(f"# run_id: {keys.run_id}")
    if cfg.model.checkpoint_root and not cfg.run_id:
        print("# (the newest checkpoint under model.checkpoint_root now; a run pins it when it starts)")
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from operators.io.corpus import absolute_location
    from operators.io.storage import StorageSpec
    from workflows.run.verify import invalidate_bad, verify_location

    spec = StorageSpec(endpoint_url=args.endpoint_url) if args.endpoint_url else StorageSpec()
    location = absolute_location(args.location)
    report = verify_location(location, spec, checksums=not args.sizes_only)
    for bad in report.bad:
        print(f"BAD {bad.part_uri}: {bad.reason} (shard {bad.shard_id})")
    if report.unfinished:
        print(f"unfinished: {len(report.unfinished)} planned shard(s) have no features yet "
              f"({', '.join(report.unfinished[:5])}{', ...' if len(report.unfinished) > 5 else ''})")
    print(f"checked {report.shards} shard(s), {report.parts} part(s) under {redact(location)}: "
          f"{len(report.bad)} bad")
    if report.bad and args.repair:
        dropped = invalidate_bad(report, spec)
        print(f"dropped the completion records of {len(dropped)} shard(s); the next run featurizes them again")
    return 0 if report.ok else 1


def _cmd_submit(args: argparse.Namespace) -> int:
    import os

    from cluster import jobs

    cfg = load_config(args.config, args.overrides)  # validate locally before submitting
    working_dir = args.working_dir or (str(jobs.project_root()) if jobs.project_root() else None)
    env_vars: dict[str, str] = {}
    config_arg = args.config
    path = Path(args.config)
    if path.is_file():
        inside = working_dir and path.resolve().is_relative_to(Path(working_dir).resolve())
        if inside:
            config_arg = str(path.resolve().relative_to(Path(working_dir).resolve()))
        else:
            env_vars["INFLUMIX_CONFIG_YAML"] = path.read_text()
            config_arg = "env:INFLUMIX_CONFIG_YAML"
    else:
        resolve_config_path(args.config)
    for name in args.env:
        if name in os.environ:
            env_vars[name] = os.environ[name]
    stamp = args.stamp if args.command_name == "refresh" else None
    submission_id = args.submission_id or jobs.submission_id_for(cfg.name, cfg.config_hash(), args.overrides, stamp)
    command = ["python", "-m", "workflows.cli", args.command_name, config_arg, *args.overrides]
    if stamp:
        command += ["--stamp", stamp]
    job_id, created = jobs.submit(
        args.address, command, submission_id, jobs.build_runtime_env(working_dir, env_vars),
        metadata={"influmix_run_id": cfg.resolved_run_id(), "influmix_name": cfg.name,
                  "output_uri": redact(cfg.output_uri)},
        entrypoint_num_cpus=args.entrypoint_num_cpus, entrypoint_num_gpus=args.entrypoint_num_gpus)
    print(json.dumps({"submission_id": job_id, "created": created}))
    if args.wait:
        info = jobs.wait(args.address, job_id, timeout_s=args.timeout)
        print(json.dumps(info, default=str))
        return 0 if info["status"] == "SUCCEEDED" else 1
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from cluster import jobs

    print(json.dumps(jobs.status(args.address, args.job_id), indent=2, default=str))
    return 0


def _cmd_logs(args: argparse.Namespace) -> int:
    from cluster import jobs

    sys.stdout.write(jobs.logs(args.address, args.job_id))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="influmix", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def with_config(name: str, text: str, func) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=text)
        p.add_argument("config", help="YAML path, bundled config name (default, full, s3) or env:VAR")
        p.add_argument("overrides", nargs="*", help="dotlist overrides, e.g. mixture.beta=0.5")
        p.set_defaults(func=func)
        return p

    p = with_config("run", "run or resume a mixture refresh", _cmd_run)
    p.add_argument("--until", default=None, metavar="STAGE", help=f"stop after this stage ({STAGES_HELP})")
    p.add_argument("--from", dest="start", default=None, metavar="STAGE",
                   help="start at this stage; earlier stages must have run for this run id (their outputs are loaded)")
    p = with_config("refresh", "scheduled refresh: latest checkpoint + previous manifest", _cmd_refresh)
    p.add_argument("--stamp", default=None, help="schedule stamp in the run id (default: today, UTC)")
    with_config("config", "print the resolved, validated config", _cmd_config)
    p = with_config("submit", "submit a run through the Ray Jobs API", _cmd_submit)
    p.add_argument("--address", required=True, help="Ray dashboard address, e.g. http://HEAD:8265")
    p.add_argument("--command", dest="command_name", choices=["run", "refresh"], default="run")
    p.add_argument("--stamp", default=None, help="refresh: schedule stamp (part of the submission id)")
    p.add_argument("--submission-id", default=None, help="override the deterministic submission id")
    p.add_argument("--working-dir", default=None, help="code shipped with the job (default: this checkout)")
    p.add_argument("--env", action="append", default=[], help="forward this environment variable")
    p.add_argument("--entrypoint-num-cpus", type=float, default=None)
    p.add_argument("--entrypoint-num-gpus", type=float, default=None)
    p.add_argument("--wait", action="store_true", help="wait for the job and exit non-zero if it fails")
    p.add_argument("--timeout", type=float, default=24 * 3600)
    p = sub.add_parser("verify", help="check the feature parts of a run or of every datastore under an output root")
    p.add_argument("location", help="a run root (<output>/runs/<run_id>) or an output root")
    p.add_argument("--sizes-only", action="store_true", help="check sizes only, not sha256 (no part is read)")
    p.add_argument("--repair", action="store_true",
                   help="drop the completion records of shards with bad parts (the next run redoes them)")
    p.add_argument("--endpoint-url", default=None, help="S3 endpoint for s3:// locations")
    p.set_defaults(func=_cmd_verify)
    for name, func, text in (("status", _cmd_status, "status of a submitted job"),
                             ("logs", _cmd_logs, "logs of a submitted job")):
        p = sub.add_parser(name, help=text)
        p.add_argument("job_id")
        p.add_argument("--address", required=True)
        p.set_defaults(func=func)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "command_name", None) == "refresh" and args.stamp is None:
        from workflows.refresh import default_stamp

        args.stamp = default_stamp()
    try:
        return args.func(args)
    except LeaseHeld as exc:
        print(f"influmix: {redact(str(exc))}", file=sys.stderr)
        return 3
    except InfluMixError as exc:
        print(f"influmix: error: {redact(str(exc))}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
