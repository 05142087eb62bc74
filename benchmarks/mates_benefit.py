"""Does MATES selection help? Train the checkpoint on MATES-selected vs random subsets within the same quotas.

    python benchmarks/mates_benefit.py [--config default] [--steps 40] [--seeds 0 1 2 3 4] [--set k=v ...]

Runs a refresh with MATES on (validation off, to save time), then for every seed trains the checkpoint
for ``--steps`` steps on batches drawn by the published mixture from (a) the MATES selection of each
domain and (b) a fresh random subset of the same size of the same scored pool, and measures the change
of the MATES reference target's loss on its TEST split (never used by the refresh). Prints the DIM's
CV Spearman, its label noise and ``usable`` flag, ΔL per arm and the difference in seed-std units.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from operators.io import storage
from operators.manifest.schema import parse_manifest
from operators.model.loading import checkpoint_adam_state, load_causal_lm
from operators.training.probing import ProbeSpec, probe_mixture
from operators.model.tiny_lm import small_model_threads
from operators.model.tokenize import prepare_tokenizer
from workflows.config import load_config
from workflows.jobs.examples import ExampleSource, read_task_rows, reference_set, tokenize_table
from workflows.mixture_refresh import resolve_model_uri, run_mixture_refresh
from workflows.run.plan import build_plan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="default")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--reference-examples", type=int, default=128)
    parser.add_argument("--set", nargs="*", default=[], help="extra config overrides (k=v)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    out = tempfile.mkdtemp(prefix="influmix-mates-")
    cfg = load_config(args.config, [f"output_uri={out}", "influence.bootstrap=20", "cluster.num_workers=2",
                                    "mixture.validation.enabled=false", "mates.enabled=true", *args.set])
    t0 = time.perf_counter()
    result = run_mixture_refresh(cfg)
    refresh_s = time.perf_counter() - t0
    manifest = parse_manifest(storage.read_bytes(result.manifest_uri, cfg.storage))
    params, mates = manifest.selection.params, result.report["mates"]
    mm, noise = params["model_metrics"], params["label_noise"]
    print(f"refresh {refresh_s:.0f}s; {params['oracle_probes']} oracle probes on {params['reference_target']} "
          f"({params['reference_examples']} reference examples)")
    print(f"oracle label noise: split-half Spearman {noise['split_half_spearman']:.3f}, reliability "
          f"{noise['reliability']:.3f} (max attainable Spearman {noise['max_attainable_spearman']:.3f})")
    print(f"DIM {mm['model']}: CV Spearman {mm['cv_spearman']:.3f} (one-sided p {mm['cv_spearman_p']:.2g}) "
          f"-> usable={params['usable']}; selection: {mates.get('selection')}")

    plan = build_plan(cfg)
    selected = {d: set(storage.read_text(e.uri, cfg.storage).split())
                for d, e in manifest.selection.domains.items()}
    weights = {d.name: d.weight for d in manifest.domains if d.weight > 0 and selected.get(d.name)}
    loaded = load_causal_lm(resolve_model_uri(cfg), device="cpu", dtype="float32", storage=cfg.storage,
                            cache_dir=cfg.model.cache_dir)
    tok = prepare_tokenizer(loaded.tokenizer)
    table = pa.concat_tables([read_task_rows(ExampleSource.of(cfg), t) for t in plan.corpus_tasks()])
    ref = reference_set(ExampleSource.of(cfg), plan, tok, args.reference_examples, seed=1, target=params["reference_target"],
                        split="test")
    spec, adam = ProbeSpec(lr=1e-3, reference_batch_size=64), checkpoint_adam_state(loaded)

    def pools_of(ids_by_domain: dict[str, list[str]]) -> dict:
        pools = {}
        for d, ids in ids_by_domain.items():
            sub = table.filter(pc.is_in(table.column("id"), pa.array(sorted(ids))))
            i, m, _ = tokenize_table(tok, sub, cfg.featurize.max_length)
            pools[d] = (i, m)
        return pools

    domain_ids = {d: table.filter(pc.equal(table.column("domain"), d)).column("id").to_pylist() for d in weights}
    mates_pools = pools_of({d: list(selected[d]) for d in weights})
    rows: dict[str, list[float]] = {"mates": [], "random": []}
    t0 = time.perf_counter()
    with small_model_threads(loaded.model):
        for seed in args.seeds:
            rng = np.random.default_rng(10_000 + seed)
            rand = {d: rng.choice(domain_ids[d], size=len(selected[d]), replace=False).tolist() for d in weights}
            for name, pools in (("mates", mates_pools), ("random", pools_of(rand))):
                rows[name].append(probe_mixture(loaded.model, pools, weights, args.steps, args.batch_size, ref[0],
                                                ref[1], spec, seed, optimizer_state=adam))
    a, b = np.array(rows["mates"]), np.array(rows["random"])
    std = math.sqrt((a.var(ddof=1) + b.var(ddof=1)) / 2)
    diff = b - a  # loss saved by MATES per seed
    print(f"test split, {args.steps} steps x {len(args.seeds)} seeds ({time.perf_counter() - t0:.0f}s):")
    print(f"  MATES  ΔL {a.mean():+.4f} ± {a.std(ddof=1):.4f}")
    print(f"  random ΔL {b.mean():+.4f} ± {b.std(ddof=1):.4f}")
    print(f"  MATES saves {diff.mean():+.4f} nats = {diff.mean() / std:+.2f} seed std "
          f"(paired: {diff.mean() / (diff.std(ddof=1) / math.sqrt(diff.size)):+.2f} standard errors)")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"params": params, "mates": rows["mates"], "random": rows["random"]}, f, indent=1,
                      default=float)


if __name__ == "__main__":
    main()
