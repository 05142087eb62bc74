"""`influmix` command line: run, refresh, submit, status, logs, config, verify."""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import traceback
from pathlib import Path

from operators.errors import InfluMixError
from operators.io.lease import LeaseHeld
from operators.io.secrets import redact
from workflows.config import dump_config, load_config, resolve_config_path
from workflows.logs import configure_logging, quiet_libraries

log = logging.getLogger("influmix")
#: The refresh stages in order (workflows.mixture_refresh.STAGE_NAMES; a test keeps the two equal).
STAGES_HELP = "featurize, aggregate, solve, validate, select, publish"


def _cmd_run(args: argparse.Namespace) -> int:
    from workflows.mixture_refresh import run_mixture_refresh

    cfg = load_config(args.config, args.overrides)
    configure_logging(cfg.log_format, verbose=args.verbose)
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
    configure_logging(cfg.log_format, verbose=args.verbose)
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
        n = cfg.model.average_checkpoints
        which = "the newest checkpoint" if n == 1 else f"the newest {n} checkpoints"
        print(f"# (resolved now under model.checkpoint_root; a run pins {which} when it starts)")
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
    env_vars.update(quiet_libraries(args.verbose))  # the job's workers are as quiet (or verbose) as asked here
    stamp = args.stamp if args.command_name == "refresh" else None
    submission_id = args.submission_id or jobs.submission_id_for(cfg.name, cfg.config_hash(), args.overrides, stamp)
    pinned, metadata = _job_outputs(cfg, args.command_name, stamp)
    command = ["python", "-m", "workflows.cli", args.command_name, config_arg, *args.overrides, *pinned]
    if stamp:
        command += ["--stamp", stamp]
    if args.verbose:
        command.append("-v")
    job_id, created = jobs.submit(
        args.address, command, submission_id, jobs.build_runtime_env(working_dir, env_vars), metadata=metadata,
        entrypoint_num_cpus=args.entrypoint_num_cpus, entrypoint_num_gpus=args.entrypoint_num_gpus)
    print(json.dumps({"submission_id": job_id, "created": created}))
    if args.wait:
        info = jobs.wait(args.address, job_id, timeout_s=args.timeout)
        print(json.dumps(info, default=str))
        return 0 if info["status"] == "SUCCEEDED" else 1
    return 0


def _job_outputs(cfg, command: str, stamp: str | None) -> tuple[list[str], dict[str, str]]:
    """(overrides appended to the job's command, job metadata) so that the job writes where the metadata
    says. The job runs in a copy of the working dir, so a local output_uri (already absolute in ``cfg``: it
    was resolved against this shell's directory) is passed explicitly; a run whose id is known now gets it
    pinned (other relative inputs may resolve to other absolute paths inside the job)."""
    from operators.io import storage
    from workflows.stages.problem import latest_pointer_uri, manifests_root

    overrides: list[str] = []
    if storage.local_path(cfg.output_uri, cfg.storage) is not None:
        overrides.append(f"output_uri={cfg.output_uri}")
        log.warning("output_uri %s is a local path: the job writes it on the node that runs the job's driver "
                    "(use s3:// or a shared file system on a multi-node cluster)", cfg.output_uri)
    run_id = ""
    if command == "run" and not cfg.model.checkpoint_root:
        run_id = cfg.resolved_run_id()
        if not cfg.run_id:
            overrides.append(f"run_id={run_id}")
    metadata = {"influmix_name": cfg.name, "output_uri": redact(cfg.output_uri),
                "influmix_run_id": run_id,
                "influmix_runs_root": redact(storage.join(cfg.output_uri, "runs")),
                "influmix_manifests_root": redact(manifests_root(cfg)),
                "influmix_latest_pointer": redact(latest_pointer_uri(cfg))}
    if not run_id:
        metadata["influmix_run_id_rule"] = (
            f"{cfg.name}-{stamp}-step<N>-<hash>, N = the newest checkpoint when the job starts" if command == "refresh"
            else "pinned when the job starts: the newest checkpoint under model.checkpoint_root is part of it")
    return overrides, metadata


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
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="show library output and the traceback of a failure (also accepted after the command)")
    sub = parser.add_subparsers(dest="command", required=True)

    def with_config(name: str, text: str, func) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=text)
        p.add_argument("config", help="YAML path, bundled config name (default, full, s3) or env:VAR")
        p.add_argument("overrides", nargs="*", help="dotlist overrides, e.g. mixture.beta=0.5")
        p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                       help="show library output (HF progress bars and warnings, Ray start-up warnings) and "
                            "the traceback of a failure")
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
    if not args.verbose:  # a failed Ray task is reported once, as one line; not again as Ray's traceback
        os.environ.setdefault("RAY_IGNORE_UNHANDLED_ERRORS", "1")
    if getattr(args, "command_name", None) == "refresh" and args.stamp is None:
        from workflows.refresh import default_stamp

        args.stamp = default_stamp()
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("influmix: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # one line per failure, wherever it was raised (driver, Ray task or actor)
        cause = root_cause(exc)
        if args.verbose:
            traceback.print_exception(exc)
        if isinstance(cause, LeaseHeld):
            print(f"influmix: {redact(one_line(cause))}", file=sys.stderr)
        elif isinstance(cause, InfluMixError):
            print(f"influmix: error: {redact(one_line(cause))}", file=sys.stderr)
        else:
            print(f"influmix: internal error: {type(cause).__name__}: {redact(one_line(cause))}"
                  + ("" if args.verbose else " (rerun with -v for the traceback)"), file=sys.stderr)
        return exit_code(cause)


#: Exit codes (docs/RELIABILITY.md): 0 done, 1 internal error, 2 bad input/config/data/storage, 3 another
#: driver holds the run, 4 this driver lost its run lease, 5 the Ray cluster went away, 130 interrupted.
def exit_code(exc: BaseException) -> int:
    if isinstance(exc, InfluMixError):
        return int(getattr(exc, "exit_code", 2))
    return 1


def root_cause(exc: BaseException) -> BaseException:
    """The exception a Ray task or actor raised, not Ray's wrapper around it (whose text is a traceback)."""
    seen = 0
    while seen < 10:
        cause = getattr(exc, "cause", None)
        if not isinstance(cause, BaseException) or cause is exc:
            return exc
        exc, seen = cause, seen + 1
    return exc


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def one_line(exc: BaseException) -> str:
    """The message without colour codes; a multi-line message keeps its lines (they are ours)."""
    return _ANSI.sub("", str(exc)).strip() or type(exc).__name__


if __name__ == "__main__":
    sys.exit(main())
