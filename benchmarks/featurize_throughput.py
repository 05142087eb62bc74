"""Featurization throughput: ratio to a plain training step, and 1 vs 2 actors on the embedded default.

    python benchmarks/featurize_throughput.py [--rate 0.5] [--gpus auto|never] [--skip-actors]
    python benchmarks/featurize_throughput.py --only-step --hidden 256 --layers 4   # the 3M-weight model
    python benchmarks/featurize_throughput.py --skip-actors --shard-path --kron-ranks --dense-dims
    python benchmarks/featurize_throughput.py --only-step --hidden 768 --layers 12 --intermediate 2048 \
        --dense-dims 4096 --kron-ranks --batch 2 --repeats 1              # ~100M params: memory

Step ratio: examples/s of ``GradientFeaturizer.featurize`` (one forward + backward, no weight
gradients) over examples/s of a plain training step (forward, backward into ``.grad``, AdamW step) on
the same batch, timed interleaved in one process. Goals (docs/SCALING.md): >= 1.3x with Kronecker at k≈4k,
>= 0.5x with dense. Peak memory is the process max RSS (CPU) or the CUDA peak.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from datetime import datetime

import ray
import torch

from cluster.runtime import init_ray
from workflows.config import load_config
from workflows.stages.featurize import run_featurize
from workflows.mixture_refresh import prepare_run
from workflows.run.plan import plan_completions


def measure(workers: int, rate: float, gpus: str, cache: str) -> tuple[float, float, int]:
    out = tempfile.mkdtemp(prefix=f"influmix-bench-{workers}-")
    cfg = load_config("default", [f"output_uri={out}", f"model.cache_dir={cache}", f"sampling.rate={rate}",
                                  f"cluster.num_workers={workers}", f"cluster.use_gpus={gpus}",
                                  "cluster.cpus_per_worker=1"])
    plan, model_uri = prepare_run(cfg)
    init_ray(cfg.cluster)
    try:
        started = time.perf_counter()
        run_featurize(cfg, plan, model_uri)
        elapsed = time.perf_counter() - started
    finally:
        ray.shutdown()
    records = list(plan_completions(plan, cfg.storage).values())
    examples = sum(r.n_examples for r in records)
    busy = max(datetime.fromisoformat(r.finished_at) for r in records) - min(
        datetime.fromisoformat(r.started_at) for r in records)
    return elapsed, busy.total_seconds(), examples


def _model(hidden: int, layers: int, intermediate: int, device: str):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=8192, hidden_size=hidden, num_hidden_layers=layers,
                      num_attention_heads=max(1, hidden // 64), intermediate_size=intermediate,
                      max_position_embeddings=512, tie_word_embeddings=False)
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).to(device)


def _peak_mib(device: str) -> float:
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def step_ratio(args: argparse.Namespace) -> None:
    """Interleaved timing of featurize vs a plain training step on one random-token batch."""
    from operators.features.featurize import FeaturizeSpec, GradientFeaturizer, select_linear_layers
    from operators.features.projectors import ProjectionSpec

    device = "cuda" if torch.cuda.is_available() and args.gpus != "never" else "cpu"
    model = _model(args.hidden, args.layers, args.intermediate, device)
    layers = select_linear_layers(model, ".*", "lm_head")
    weights = sum(m.weight.numel() for m in layers.values())
    params = sum(p.numel() for p in model.parameters())
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 8192, (args.batch, args.seq), generator=gen).to(device)
    mask = torch.ones_like(ids)
    print(f"model: {params / 1e6:.1f}M params, {len(layers)} linear layers, {weights / 1e6:.2f}M featurized "
          f"weights; batch {args.batch} x {args.seq} tokens on {device}")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def train() -> None:
        model.train()
        out = model(input_ids=ids, attention_mask=mask, labels=ids)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        model.eval()

    settings = []
    for rank in args.kron_ranks:
        settings.append(ProjectionSpec(kind="kronecker", rank=rank))
    for dim in args.dense_dims:
        settings.append(ProjectionSpec(kind="dense", dim=dim))
    featurizers = []
    for spec in settings:
        f = GradientFeaturizer(model, FeaturizeSpec(projection=spec, exclude_layers="lm_head"), device)
        featurizers.append((f"{spec.kind} {'rank=' + str(spec.rank) if spec.kind == 'kronecker' else ''}"
                            f"k={f.output_dim}", f))
    if not args.no_train:
        train()  # warm-up (allocates the Adam state)
    times: dict[str, list[float]] = {name: [] for name, _ in featurizers}
    times["train step"] = []
    peaks = {}
    for _ in range(args.repeats):  # interleaved: train, then each featurizer, repeated
        for name, fn in ([] if args.no_train else [("train step", train)]) + [
                (n, (lambda f=f: f.featurize(ids, mask))) for n, f in featurizers]:
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - t0)
            peaks[name] = _peak_mib(device)
    base = min(times["train step"]) if times["train step"] else float("nan")
    for name, _ in featurizers:
        best = min(times[name])
        print(f"{name:<28} {args.batch / best:8.2f} examples/s  ratio to train step {base / best:5.2f}  "
              f"(peak memory so far {peaks[name]:.0f} MiB)")
    if times["train step"]:
        print(f"{'train step':<28} {args.batch / base:8.2f} examples/s")
    print("goals: kronecker k~4k >= 1.3x train step; dense >= 0.5x (3M-weight model)")


def shard_path(args: argparse.Namespace, cache: str) -> None:
    """The per-shard path (read, tokenize, featurize, write parts) with background tokenize/write
    threads vs the same work done serially, interleaved, on the embedded default's corpus shards."""
    import workflows.jobs.featurize_shard as fs
    from workflows.stages.featurize import featurize_job
    from workflows.jobs.featurize_shard import ShardFeaturizer
    from workflows.mixture_refresh import resolve_model_uri
    from workflows.run.plan import build_plan

    serial = lambda items, depth=2: iter(items)  # noqa: E731
    threaded = fs._background
    timings: dict[str, list[float]] = {"threaded": [], "serial": []}
    examples = 0
    for rep in range(args.repeats):
        for mode in ("threaded", "serial"):
            out = tempfile.mkdtemp(prefix=f"influmix-bench-shard-{mode}-")
            cfg = load_config("default", [f"output_uri={out}", f"model.cache_dir={cache}",
                                          f"sampling.rate={args.rate}", f"run_id=bench-{mode}-{rep}"])
            plan = build_plan(cfg)
            tasks = plan.corpus_tasks()[: args.shards]
            worker = ShardFeaturizer(featurize_job(cfg, resolve_model_uri(cfg), plan.root, plan.store), "cpu",
                                     "bench")
            fs._background = threaded if mode == "threaded" else serial
            try:
                t0 = time.perf_counter()
                examples = sum(worker.process(t).n_examples for t in tasks)
                timings[mode].append(time.perf_counter() - t0)
            finally:
                fs._background = threaded
    best = {m: min(v) for m, v in timings.items()}
    print(f"shard path ({args.shards} shards, {examples} examples): threaded {examples / best['threaded']:.1f} "
          f"examples/s, serial {examples / best['serial']:.1f} examples/s, "
          f"speed-up {best['serial'] / best['threaded']:.2f}x")


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=0.5)
    parser.add_argument("--gpus", default="auto", choices=["auto", "never"])
    parser.add_argument("--only-step", action="store_true", help="only the training-step ratio")
    parser.add_argument("--skip-actors", action="store_true", help="skip the 1 vs 2 actor comparison")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--intermediate", type=int, default=512)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--kron-ranks", type=int, nargs="*", default=[12])
    parser.add_argument("--dense-dims", type=int, nargs="*", default=[1024, 4096])
    parser.add_argument("--no-train", action="store_true", help="skip the training step (memory runs)")
    parser.add_argument("--shard-path", action="store_true", help="also time the shard path, threads on/off")
    parser.add_argument("--shards", type=int, default=3, help="corpus shards for --shard-path")
    args = parser.parse_args()
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    step_ratio(args)
    cache = tempfile.mkdtemp(prefix="influmix-bench-cache-")
    if args.shard_path:
        shard_path(args, cache)
    if args.only_step or args.skip_actors:
        return
    steady, total = {}, {}
    for workers in (1, 2):
        elapsed, busy, examples = measure(workers, args.rate, args.gpus, cache)
        steady[workers], total[workers] = examples / busy, examples / elapsed
        print(f"{workers} actor(s): {examples} examples; shard processing {busy:.1f}s -> {steady[workers]:.1f} "
              f"examples/s; stage wall {elapsed:.1f}s (with actor start-up) -> {total[workers]:.1f} examples/s")
    print(f"throughput ratio 2 actors / 1 actor: {steady[2] / steady[1]:.2f} (shard processing), "
          f"{total[2] / total[1]:.2f} (stage wall time)")


if __name__ == "__main__":
    main()
