import json
import math
from typing import Any

import numpy as np
import pytest
import yaml
from pydantic import ValidationError

from operators.errors import ConfigError
from operators.manifest.schema import (
    SCHEMA_VERSION,
    Manifest,
    domain_weights_yaml,
    hf_interleave,
    megatron_blend,
    parse_manifest,
    render_all,
    render_json,
    render_yaml,
    weights_of,
)


def _data(
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


def test_json_and_yaml_roundtrip_exactly() -> None:
    m = Manifest.model_validate(_data())
    assert m.solver["lower"] == [0.0, 0.0, 0.0] and type(m.solver["seed"]) is int  # numpy made plain
    for text in (render_json(m), render_yaml(m)):
        back = parse_manifest(text)
        assert back == m
        assert parse_manifest(text.encode()) == m
    assert render_json(parse_manifest(render_yaml(m))) == render_json(m)
    assert json.loads(render_json(m))["provenance"]["config_hash"] == "1e5"  # stays a string
    assert yaml.safe_load(render_yaml(m))["schema_version"] == "1.0"
    assert weights_of(m) == {"web": 0.5, "code": 0.25, "books": 0.25}


def test_weight_validation() -> None:
    with pytest.raises(ValidationError, match="sum to 1"):
        Manifest.model_validate(_data((0.5, 0.25, 0.2)))
    Manifest.model_validate(_data((0.5, 0.25, 0.25 + 5e-7)))  # within tolerance
    for weights in ((1.5, -0.25, -0.25), (float("nan"), 0.5, 0.5), (float("inf"), 0.0, 0.0)):
        with pytest.raises(ValidationError):
            Manifest.model_validate(_data(weights))
    with pytest.raises(ValidationError, match="unique"):
        Manifest.model_validate(_data(names=("web", "web", "books")))
    bad_ci = _data()
    bad_ci["domains"][0]["score_ci"] = (1.0, 0.0)
    with pytest.raises(ValidationError, match="score_ci"):
        Manifest.model_validate(bad_ci)
    bad_shape = _data()
    bad_shape["influence"]["gi"] = [[0.0, 0.0]]
    with pytest.raises(ValidationError, match="3x2"):
        Manifest.model_validate(bad_shape)
    nan_gi = _data()
    nan_gi["influence"]["gi"][0][0] = float("nan")
    with pytest.raises(ValidationError, match=r"influence\.gi\.0\.0"):
        Manifest.model_validate(nan_gi)
    bad_solver = _data()
    bad_solver["solver"]["fn"] = object()
    with pytest.raises(ValidationError, match=r"solver\n.*value at \.fn is a object"):
        Manifest.model_validate(bad_solver)


def test_parse_rejects_bad_versions_and_names_fields() -> None:
    text = render_json(Manifest.model_validate(_data()))
    obj = json.loads(text)
    for version, match in (("2.0", "unsupported schema_version '2.0'"), (None, "schema_version is missing")):
        changed = {k: v for k, v in obj.items() if k != "schema_version"}
        if version:
            changed["schema_version"] = version
        with pytest.raises(ConfigError, match=match):
            parse_manifest(json.dumps(changed))
    obj["domains"][1]["n_examples"] = -3
    with pytest.raises(ConfigError, match=r"domains\.1\.n_examples"):
        parse_manifest(json.dumps(obj))
    obj["domains"][1]["n_examples"] = 3
    obj["domains"][1]["colour"] = "red"
    with pytest.raises(ConfigError, match=r"domains\.1\.colour"):
        parse_manifest(yaml.safe_dump(obj))
    with pytest.raises(ConfigError, match="mapping"):
        parse_manifest("- a\n- b\n")
    with pytest.raises(ConfigError, match="UTF-8"):
        parse_manifest(b"\xff\xfe")


def test_megatron_blend_exact_string() -> None:
    m = Manifest.model_validate(_data((0.5, 0.25, 0.25)))
    assert megatron_blend(m) == "0.5 /data/web_text_document 0.25 code 0.25 books"
    expected = "0.5 /data/web_text_document 0.25 /data/code_doc 0.25 books"
    assert megatron_blend(m, {"code": "/data/code_doc"}) == expected
    zero = Manifest.model_validate(_data((0.75, 0.0, 0.25)))
    assert megatron_blend(zero) == "0.75 /data/web_text_document 0.25 books"
    with pytest.raises(ConfigError, match="whitespace"):
        megatron_blend(m, {"code": "/data/my code"})
    with pytest.raises(ConfigError, match="unknown domains"):
        megatron_blend(m, {"cod": "/x"})


def test_hf_interleave_exact_and_sums_to_one() -> None:
    m = Manifest.model_validate(_data((0.5, 0.25, 0.25)))
    assert hf_interleave(m) == {
        "datasets": ["web", "code", "books"],
        "probabilities": [0.5, 0.25, 0.25],
        "stopping_strategy": "all_exhausted",
        "seed": 7,
    }
    assert hf_interleave(Manifest.model_validate(_data((0.75, 0.0, 0.25))))["datasets"] == ["web", "books"]
    rng = np.random.default_rng(0)
    random_cases = [tuple(rng.dirichlet(np.ones(9) * 0.3)) for _ in range(20)]
    cases = [(1 / 3, 1 / 3, 1 / 3), (0.1, 0.2, 0.7), *random_cases]
    for weights in cases:
        names = tuple(f"d{i}" for i in range(len(weights)))
        p = hf_interleave(Manifest.model_validate(_data(weights, names)))["probabilities"]
        kept = [w for w in weights if w > 0]
        assert sum(p) == 1.0 and sum(reversed(p)) == 1.0 and math.fsum(p) == 1.0 and float(np.sum(p)) == 1.0
        np.testing.assert_allclose(p, np.array(kept) / sum(kept), rtol=0, atol=1e-15)


def test_domain_weights_yaml_and_render_all() -> None:
    m = Manifest.model_validate(_data((0.5, 0.25, 0.25)))
    assert domain_weights_yaml(m) == "train:\n  books: 0.25\n  code: 0.25\n  web: 0.5\n"
    files = render_all(m)
    assert sorted(files) == [
        "domain_weights.yaml",
        "hf_interleave.json",
        "manifest.json",
        "manifest.yaml",
        "megatron_blend.txt",
    ]
    assert all(isinstance(v, bytes) for v in files.values())
    assert parse_manifest(files["manifest.json"]) == parse_manifest(files["manifest.yaml"]) == m
    assert files["megatron_blend.txt"] == b"0.5 /data/web_text_document 0.25 code 0.25 books\n"
    assert json.loads(files["hf_interleave.json"])["probabilities"] == [0.5, 0.25, 0.25]
    assert yaml.safe_load(files["domain_weights.yaml"]) == {"train": weights_of(m)}
    assert render_all(m) == files  # deterministic bytes
