"""The shipped KubeRay manifests parse and start every Ray cluster with token authentication."""

from __future__ import annotations

from pathlib import Path

import yaml

K8S = Path(__file__).resolve().parents[2] / "cluster" / "k8s"


def _cluster_specs(node: object):
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "rayClusterSpec":
                yield value
            else:
                yield from _cluster_specs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _cluster_specs(item)


def test_every_ray_cluster_in_the_manifests_uses_token_auth() -> None:
    specs = []
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            specs += [(path.name, s) for s in _cluster_specs(doc)]
    assert {name for name, _ in specs} == {"rayjob.yaml", "cronjob.yaml"}
    for name, spec in specs:
        assert spec.get("authOptions") == {"mode": "token"}, name
        major, minor = (int(x) for x in str(spec["rayVersion"]).split(".")[:2])
        assert (major, minor) >= (2, 52), f"{name}: token auth needs Ray >= 2.52"
