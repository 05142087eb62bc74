"""A valid manifest payload (numpy values included) shared by the schema and format tests."""

from __future__ import annotations

from typing import Any

import numpy as np

from operators.manifest.schema import SCHEMA_VERSION


def manifest_data(
    weights: tuple[float, ...] = (0.5, 0.25, 0.25), names: tuple[str, ...] = ("web", "code", "books")
) -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION,
        "name": "pile-mix",
        "domains": [
            {
                "name": n,
                "weight": w,
                "previous_weight": 1 / len(names),
                "influence_score": 0.1 * i - 0.05,
                "score_ci": (0.1 * i - 0.2, 0.1 * i + 0.1),
                "weight_ci": (max(w - 0.05, 0.0), w + 0.05),
                "n_examples": 100 + i,
                "n_tokens": 12_800 + i,
                "tokens_available": 10**9,
                "data_prefix": f"/data/{n}_text_document" if n == "web" else None,
            }
            for i, (n, w) in enumerate(zip(names, weights))
        ],
        "targets": [
            {"name": "val", "weight": 1.0, "n_examples": 64},
            {"name": "code_val", "weight": 2.0, "n_examples": 32},
        ],
        "influence": {
            "gi": [[1e-5 * (i + 1), -2.5e-6 * i] for i in range(len(names))],
            "gi_normalized": [[0.1 * i, -0.3 * i] for i in range(len(names))],
            "domain_order": list(names),
            "target_order": ["val", "code_val"],
            "preconditioner": "gauss_newton",
            "preconditioner_params": {"relative_damping": np.float64(0.1)},
        },
        "solver": {"name": "tikmix_d", "beta": 1.0, "lower": np.zeros(len(names)), "seed": np.int64(7)},
        "selection": {
            "method": "mates",
            "domains": {names[0]: {"uri": "s3://b/run/sel/web.parquet", "count": 10, "pool": 50}},
        },
        "provenance": {
            "model_path": "/models/tiny",
            "model_fingerprint": "sha256:abc",
            "checkpoint_step": 1000,
            "config_hash": "1e5",
            "run_id": "pile-mix-0001",
            "created_at": "2025-01-02T03:04:05+00:00",
            "influmix_version": "0.1.0",
            "projector": {"kind": "gaussian", "dim": 512, "seed": 0},
            "git_commit": None,
            "previous_manifest_uri": "s3://b/pile-mix/latest/manifest.json",
        },
    }
