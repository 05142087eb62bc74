"""Dynamic refresh, shown: train in stages, refresh the mixture between stages, compare with static mixtures.

    python benchmarks/dynamic_refresh.py [--stages 3] [--steps 30] [--seeds 0 1] [--average 2]
                                         [--targets val_legal,val_changelog] [--json out.json]

From the embedded default tiny checkpoint (step 60, with its AdamW state) every arm trains S stages of
T AdamW steps (batch B, batches drawn from per-domain pools of the whole corpus by the arm's mixture,
continuing the optimizer across stages):

* ``uniform``  static uniform mixture for all stages;
* ``first``    the mixture published by one refresh of the initial checkpoint, kept for all stages;
* ``dynamic``  that same mixture for stage 0, then at every stage boundary the CURRENT model is written
  as ``checkpoint-<step>`` under a temp ``checkpoint_root`` (operators/model/checkpoints.py) and
  ``run_mixture_refresh`` (``model.checkpoint_root=...``, a fresh run id, the previous stage's manifest
  as the KL reference) publishes the mixture of the next stage;
* ``avg<N>``   (``--average N``) as dynamic with ``model.average_checkpoints=N`` (needs the refresh to
  honour it: workflows/stages/checkpoint_average.py wired into workflows/mixture_refresh.py).

Target loss is measured on the TEST split of the targets (never used by a refresh: influence uses
the influence split, validation probes the validation split) after every stage. A seed changes the
training batch draws (the same draws for every arm: common random numbers). The final table gives
each arm's difference vs ``uniform`` and vs ``first`` in units of the pooled seed std of the final loss.
Refreshes use fast settings (sampling.rate=0.2, 20 bootstrap draws, validation 8 steps × 2 seeds).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import tempfile
import time

import numpy as np

from operators.model.checkpoints import optimizer_from_state, save_step_checkpoint
from operators.model.loading import checkpoint_adam_state, load_causal_lm
from operators.training.probing import ProbeSpec, reference_loss, train_on_mixture
from operators.model.tiny_lm import small_model_threads
from operators.model.tokenize import prepare_tokenizer
from workflows.config import RunConfig, TargetSpec, load_config
from workflows.jobs.examples import ExampleSource, domain_pools, reference_set
from workflows.run.plan import build_plan

log = logging.getLogger("dynamic_refresh")
MAX_LENGTH = 128


def base_config(out: str, cache: str, args: argparse.Namespace) -> RunConfig:
    overrides = [f"output_uri={out}", f"model.cache_dir={cache}", "sampling.rate=0.2",
                 f"influence.bootstrap={args.bootstrap}", "cluster.num_workers=2", "cluster.progress_interval_s=30",
                 f"mixture.validation.steps={args.validation_steps}", "mixture.validation.seeds=2",
                 "mixture.compare=[]", "mixture.baselines=[uniform,tokens]",
                 f"mixture.budget.tokens_next_stage={args.steps * args.batch_size * MAX_LENGTH}"]
    cfg = load_config("default", overrides + list(args.override))
    if args.targets:
        from workflows.assets import default_targets

        known = default_targets()
        names = [n.strip() for n in args.targets.split(",") if n.strip()]
        unknown = [n for n in names if n not in known]
        if unknown:
            raise SystemExit(f"--targets: unknown {unknown}; bundled targets: {sorted(known)}")
        cfg = cfg.model_copy(update={"targets": [TargetSpec(name=n, paths=[known[n]]) for n in names]})
    return cfg


def refresh(cfg: RunConfig, run_id: str, *, checkpoint_root: str | None = None, previous: str | None = None,
            average: int = 1) -> tuple[dict[str, float], str, dict]:
    """One mixture refresh; returns (published weights, manifest uri, summary)."""
    from workflows.mixture_refresh import run_mixture_refresh

    model = {"checkpoint_root": checkpoint_root, "average_checkpoints": average}
    mixture = {"previous_manifest": previous}
    cfg = cfg.model_copy(update={"run_id": run_id, "model": cfg.model.model_copy(update=model),
                                 "mixture": cfg.mixture.model_copy(update=mixture)})
    t0 = time.perf_counter()
    result = run_mixture_refresh(cfg)
    if average > 1 and not os.path.isfile(os.path.join(result.run_root, "checkpoints.json")):
        raise SystemExit("--average needs run_mixture_refresh to honour model.average_checkpoints "
                         "(workflows/stages/checkpoint_average.py is not wired into workflows/mixture_refresh.py)")
    v = result.report.get("validation", {})
    summary = {"run_id": run_id, "published": result.report.get("published"),
               "improvement_found": v.get("improvement_found"), "wall_s": round(time.perf_counter() - t0, 1),
               "weights": {d: round(w, 4) for d, w in result.weights.items()}}
    log.warning("refresh %s: %s", run_id, summary)
    return result.weights, result.manifest_uri, summary


class Arm:
    """One trajectory: a model, its AdamW state, the current mixture and (dynamic) its checkpoint root."""

    def __init__(self, name: str, model_uri: str, weights: dict[str, float], root: str | None, average: int,
                 manifest: str | None) -> None:
        loaded = load_causal_lm(model_uri)
        self.name, self.model, self.tokenizer = name, loaded.model, loaded.tokenizer
        self.state = checkpoint_adam_state(loaded)
        self.step = loaded.step
        self.weights, self.root, self.average, self.manifest = dict(weights), root, average, manifest
        self.losses: list[float] = []
        self.mixtures: list[dict[str, float]] = []
        self.refreshes: list[dict] = []
        if root is not None:  # the starting checkpoint is the first one of the trajectory
            save_step_checkpoint(root, self.step, self.model, self.tokenizer,
                                 optimizer_from_state(self.model, self.state))

    def train(self, pools: dict, steps: int, batch_size: int, spec: ProbeSpec, seed: int) -> None:
        self.mixtures.append(dict(self.weights))
        w = {d: v for d, v in self.weights.items() if v > 0 and d in pools}
        with small_model_threads(self.model):
            opt = train_on_mixture(self.model, pools, w, steps, batch_size, spec, seed, self.state)
        self.state, self.step = opt.state_dict(), self.step + steps
        if self.root is not None:
            save_step_checkpoint(self.root, self.step, self.model, self.tokenizer, opt)


def run(args: argparse.Namespace) -> dict:
    from cluster.runtime import init_ray
    from workflows.mixture_refresh import resolve_model_uri

    out = tempfile.mkdtemp(prefix="influmix-dynamic-")
    cache = args.cache_dir or os.path.join(out, "cache")
    cfg = base_config(os.path.join(out, "refresh"), cache, args)
    init_ray(cfg.cluster.model_copy(update={"num_cpus": args.num_cpus}))
    t0 = time.perf_counter()
    start_uri = resolve_model_uri(cfg)
    plan = build_plan(cfg)
    first, first_manifest, first_summary = refresh(cfg, "stage0")
    domains = sorted(first)
    loaded = load_causal_lm(start_uri)
    tokenizer = prepare_tokenizer(loaded.tokenizer)
    pool_cfg = cfg.model_copy(update={"sampling": cfg.sampling.model_copy(update={"rate": 1.0,
                                                                                  "max_per_domain": None})})
    pools = domain_pools(ExampleSource.of(pool_cfg), plan, tokenizer, per_domain=args.per_domain, seed=1, domains=domains)
    test_ids, test_mask = reference_set(ExampleSource.of(cfg), plan, tokenizer, total=args.test_examples, seed=1, split="test")
    with small_model_threads(loaded.model):
        base_loss = reference_loss(loaded.model, test_ids, test_mask, 64)
    spec = ProbeSpec(lr=args.lr, reference_batch_size=64)
    arm_specs = [("uniform", {d: 1.0 / len(domains) for d in domains}, False, 1),
                 ("first", first, False, 1), ("dynamic", first, True, 1)]
    if args.average > 1:
        arm_specs.append((f"avg{args.average}", first, True, args.average))
    results: dict[str, dict] = {name: {"loss": [], "mixtures": [], "refreshes": []} for name, *_ in arm_specs}
    for seed in args.seeds:
        for name, weights, dynamic, average in arm_specs:
            root = os.path.join(out, "ckpts", f"{name}-seed{seed}") if dynamic else None
            arm = Arm(name, start_uri, weights, root, average, first_manifest if dynamic else None)
            for stage in range(args.stages):
                if dynamic and stage > 0:
                    arm.weights, arm.manifest, summary = refresh(
                        cfg, f"{name}-seed{seed}-stage{stage}", checkpoint_root=root, previous=arm.manifest,
                        average=average)
                    arm.refreshes.append(summary)
                arm.train(pools, args.steps, args.batch_size, spec, seed=1000 * seed + stage)
                with small_model_threads(arm.model):
                    arm.losses.append(reference_loss(arm.model, test_ids, test_mask, 64))
                log.warning("seed %d %s stage %d: test loss %.4f (%.0fs)", seed, name, stage, arm.losses[-1],
                            time.perf_counter() - t0)
            results[name]["loss"].append(arm.losses)
            results[name]["mixtures"].append(arm.mixtures)
            results[name]["refreshes"].append(arm.refreshes)
    return {"settings": {k: v for k, v in vars(args).items()}, "domains": domains, "base_loss": base_loss,
            "targets": [t.name for t in cfg.targets], "test_examples": int(test_ids.shape[0]),
            "first_refresh": first_summary, "arms": results, "wall_s": round(time.perf_counter() - t0, 1),
            "output": out}


def summarize(report: dict) -> str:
    arms = report["arms"]
    loss = {n: np.array(a["loss"]) for n, a in arms.items()}  # (seeds, stages)
    n_seeds, n_stages = next(iter(loss.values())).shape
    lines = [f"targets {report['targets']} (TEST split, {report['test_examples']} examples); start loss "
             f"{report['base_loss']:.4f}; {n_seeds} seeds; wall {report['wall_s']:.0f}s", "",
             "| stage | " + " | ".join(f"{n} mean ± std" for n in loss) + " |",
             "| --- |" + " ---: |" * len(loss)]
    for s in range(n_stages):
        cells = [f"{v[:, s].mean():.4f} ± {v[:, s].std(ddof=1) if n_seeds > 1 else 0:.4f}" for v in loss.values()]
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    final = {n: v[:, -1] for n, v in loss.items()}
    pooled = math.sqrt(np.mean([x.var(ddof=1) for x in final.values()])) if n_seeds > 1 else float("nan")
    lines += ["", f"final-stage pooled seed std: {pooled:.4f} nats (negative diff = arm is better)", "",
              "| arm | vs | diff (nats) | diff / seed std | paired diff std |", "| --- | --- | ---: | ---: | ---: |"]
    for name in final:
        for base in ("uniform", "first"):
            if name == base or name == "uniform" or base not in final:
                continue
            d = final[name] - final[base]
            paired = d.std(ddof=1) if n_seeds > 1 else float("nan")
            lines.append(f"| {name} | {base} | {d.mean():+.4f} | {d.mean() / pooled:+.2f} | {paired:.4f} |")
    for name, a in arms.items():
        done = [r for seed_runs in a["refreshes"] for r in seed_runs]
        if done:
            moved = sum(1 for r in done if r["improvement_found"])
            lines.append(f"{name}: {moved} of {len(done)} stage refreshes published a new mixture "
                         f"(the others kept the previous one: validation found no improvement)")
    lines += ["", "mixtures per stage (seed 0):"]
    for name, a in arms.items():
        for s, w in enumerate(a["mixtures"][0]):
            lines.append(f"  {name} stage {s}: " + ", ".join(f"{d}={v:.3f}" for d, v in w.items()))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stages", type=int, default=3)
    parser.add_argument("--steps", type=int, default=30, help="training steps per stage")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="training draw seeds")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--per-domain", type=int, default=256, help="training pool per domain (whole corpus)")
    parser.add_argument("--test-examples", type=int, default=128)
    parser.add_argument("--average", type=int, default=1, help="also run dynamic with average_checkpoints=N")
    parser.add_argument("--targets", default=None, help="comma list of bundled target names (equal weights)")
    parser.add_argument("--bootstrap", type=int, default=20)
    parser.add_argument("--validation-steps", type=int, default=8)
    parser.add_argument("--num-cpus", type=int, default=2, help="local Ray CPUs")
    parser.add_argument("--cache-dir", default=None, help="model cache (default: a temp dir)")
    parser.add_argument("--override", nargs="*", default=[], help="extra config dotlist overrides")
    parser.add_argument("--json", default=None, help="also write the full report to this file")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    report = run(args)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2, default=float)
    print(summarize(report))


if __name__ == "__main__":
    main()
