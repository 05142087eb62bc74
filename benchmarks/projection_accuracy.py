"""Accuracy of projected per-example gradients on the embedded default tiny LM (docs/ALGORITHMS.md §1.4).

    python benchmarks/projection_accuracy.py [--examples 64] [--seed 0]

Exact per-example weight gradients of every selected linear layer (lm_head excluded, as in the default
config) vs the features of the production featurizer (one forward + backward, hooks + projection) for
dense JL (SRHT; k = 256, 1024, 4096) and Kronecker (rank 4, 8, 16). Over all pairs of examples it prints
the RMSE of the projected cosine against the exact cosine c, the JL bound sqrt(mean((1 − c²)²)) / √k
(k = the feature dimension), their ratio (≈ 1 for dense JL) and k_eff = k·(bound/RMSE)², the dense JL
dimension with the same error. Per-example LM gradients Σ_t δ_t x_tᵀ have low effective rank, so the
Kronecker projection is noticeably worse than its k suggests (ratio well above 1).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import pyarrow.parquet as pq
import torch

from operators.features.featurize import (
    FeaturizeSpec,
    GradientFeaturizer,
    per_example_linear_grads,
    select_linear_layers,
)
from operators.model.loading import load_causal_lm
from operators.features.projectors import ProjectionSpec
from operators.model.tokenize import prepare_tokenizer, tokenize_texts
from workflows.assets import default_corpus_dir, ensure_default_checkpoint

EXCLUDE = "lm_head|embed_out"
SETTINGS = [("dense", 256), ("dense", 1024), ("dense", 4096), ("kronecker", 4), ("kronecker", 8),
            ("kronecker", 16)]


def corpus_batch(tokenizer, per_domain: int, max_length: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The first ``per_domain`` rows of each domain's first shard, tokenized (rows < 2 tokens dropped)."""
    texts: list[str] = []
    shards = sorted(Path(default_corpus_dir()).glob("*-0000.parquet"))
    for shard in shards:
        texts.extend(pq.read_table(shard, columns=["text"]).column("text").to_pylist()[:per_domain])
    tok = tokenize_texts(tokenizer, texts, max_length)
    seen: set[tuple[int, ...]] = set()
    keep = []
    for i in range(len(tok)):  # drop rows under 2 tokens and exact duplicates after truncation
        row = tuple(tok.input_ids[i, : int(tok.lengths[i])].tolist())
        if bool(tok.valid[i]) and row not in seen:
            seen.add(row)
            keep.append(i)
    index = torch.tensor(keep, dtype=torch.long)
    return tok.input_ids[index], tok.attention_mask[index], len(shards)


def pair_cosines(x: torch.Tensor) -> torch.Tensor:
    """Cosines of all pairs i < j of the rows of ``x`` (float64)."""
    x = x.double()
    x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-300)
    i, j = torch.triu_indices(x.shape[0], x.shape[0], offset=1)
    return (x @ x.T)[i, j]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=64, help="examples in total (spread over domains)")
    parser.add_argument("--seed", type=int, default=0, help="projection seed")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--cache-dir", default=None, help="model cache (default: the usual cache dir)")
    args = parser.parse_args()
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))

    started = time.perf_counter()
    loaded = load_causal_lm(ensure_default_checkpoint(args.cache_dir))
    model = loaded.model
    tokenizer = prepare_tokenizer(loaded.tokenizer)
    n_domains = len(sorted(Path(default_corpus_dir()).glob("*-0000.parquet")))
    ids, mask, _ = corpus_batch(tokenizer, math.ceil(args.examples / max(1, n_domains)), args.max_length)
    layers = select_linear_layers(model, ".*", EXCLUDE)
    exact = per_example_linear_grads(model, ids, mask, layers, "mean")
    flat = torch.cat([exact[name].flatten(1) for name in sorted(exact)], dim=1)
    c = pair_cosines(flat)
    print(f"model {loaded.local_dir}: {len(layers)} linear layers, {flat.shape[1]} gradient coordinates; "
          f"{ids.shape[0]} examples -> {c.numel()} pairs; exact cosines: mean {c.mean():.3f}, "
          f"mean |c| {c.abs().mean():.3f}, max |c| {c.abs().max():.3f}")
    print(f"{'projection':<18}{'k':>6}{'RMSE':>9}{'bound':>9}{'ratio':>7}{'k_eff':>7}"
          f"{'feat vs proj(exact)':>21}{'time s':>8}")
    for kind, size in SETTINGS:
        t0 = time.perf_counter()
        size_arg = {"dim": size} if kind == "dense" else {"rank": size}
        proj = ProjectionSpec(kind=kind, seed=args.seed, **size_arg)
        featurizer = GradientFeaturizer(model, FeaturizeSpec(projection=proj, exclude_layers=EXCLUDE))
        feats = featurizer.featurize(ids, mask).features
        reference = featurizer.projector.project(exact)
        consistency = float((feats - reference).norm() / reference.norm())
        k = featurizer.output_dim
        rmse = float(((pair_cosines(feats) - c) ** 2).mean().sqrt())
        bound = float(((1 - c**2) ** 2).mean().sqrt()) / math.sqrt(k)
        label = f"{kind} {'dim' if kind == 'dense' else 'rank'}={size}"
        k_eff = k * (bound / rmse) ** 2  # the JL dimension with this error
        print(f"{label:<18}{k:>6}{rmse:>9.4f}{bound:>9.4f}{rmse / bound:>7.2f}{k_eff:>7.0f}"
              f"{consistency:>21.1e}{time.perf_counter() - t0:>8.1f}")
        del featurizer, feats, reference
    print(f"total {time.perf_counter() - started:.1f}s; feat vs proj(exact) = relative difference of the "
          "featurizer's output and the projector applied to the exact gradients")


if __name__ == "__main__":
    main()
