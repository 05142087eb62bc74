"""GPU checks (run where CUDA exists; deselected on CPU CI with -m "not gpu")."""

from __future__ import annotations

import pytest
import torch

from operators.features.featurize import FeaturizeSpec, GradientFeaturizer
from operators.features.projectors import ProjectionSpec
from operators.model.tiny_lm import TinyLMSpec, build_tiny_lm

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.mark.parametrize("kind", ["kronecker", "dense"])
def test_cuda_features_match_cpu(kind):
    spec = TinyLMSpec()
    model = build_tiny_lm(spec, vocab_size=512, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 512, (8, 64), generator=g)
    mask = torch.ones_like(ids)
    mask[4:, 40:] = 0
    fspec = FeaturizeSpec(projection=ProjectionSpec(kind=kind, rank=8, dim=512, seed=3))
    cpu = GradientFeaturizer(model, fspec, device="cpu").featurize(ids, mask).features
    gpu_model = build_tiny_lm(spec, vocab_size=512, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    gpu = GradientFeaturizer(gpu_model, fspec, device="cuda").featurize(ids.cuda(), mask.cuda()).features
    rel = (gpu - cpu).norm() / cpu.norm()
    assert rel < 1e-3, f"GPU features differ from CPU by {rel:.2e}"


def test_actor_pool_uses_cuda():
    import ray

    from cluster.actor_pool import ShardPool
    from cluster.runtime import WorkerLayout
    from workflows.config import ClusterSpec

    class Probe:
        def __init__(self, worker, device):
            self.device = device

        def describe(self):
            return {"fingerprint": "x"}

        def process(self, task, attempt, on_batch=None):  # pragma: no cover - not called
            raise NotImplementedError

    started = not ray.is_initialized()
    if started:
        ray.init(num_gpus=torch.cuda.device_count())
    try:
        pool = ShardPool(Probe, WorkerLayout(1, 1.0, 1.0), ClusterSpec(), "gpu-test", name="gpu")
        info = pool.start()
        pool.shutdown()
    finally:
        if started:
            ray.shutdown()
    assert info[0]["device"] == "cuda" and info[0]["gpu_ids"]
