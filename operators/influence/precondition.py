"""Preconditioners for projected gradients (numpy float64; statistics are additive across shards).

* :class:`GaussNewtonPreconditioner`: H = ΦᵀΦ/n + λI in projected space (TRAK / LogIX "raw").
* :class:`KFACPreconditioner`: per layer (S_b ⊗ S_f + λI)⁻¹ from projected K-FAC factors (LogIX "kfac").
* :class:`IdentityPreconditioner`: H = I (TracIn / LESS).

``solve(x)`` returns the rows of ``x`` multiplied by H⁻¹ (H is symmetric).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from operators.errors import ConfigError, CorpusError


def _as_f64(a: Any) -> np.ndarray:
    """numpy float64 view of an array or (CPU/GPU) torch tensor."""
    if hasattr(a, "detach"):
        a = a.detach().cpu().double().numpy()
    return np.asarray(a, dtype=np.float64)


def _rows(x: Any, dim: int, what: str) -> np.ndarray:
    arr = _as_f64(x)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] != dim:
        raise ConfigError(f"{what}: expected features of shape (m, {dim}), got {arr.shape}")
    return arr


def _relative_lambda(mean_eig: float, relative_damping: float, damping: float | None) -> float:
    """Absolute λ: ``damping`` if given, else ``relative_damping × mean eigenvalue`` (1.0 if H = 0)."""
    if damping is not None:
        if damping < 0:
            raise ConfigError(f"precondition: `damping` must be >= 0, got {damping}")
        return float(damping)
    if relative_damping <= 0:
        raise ConfigError(f"precondition: `relative_damping` must be > 0, got {relative_damping}")
    lam = relative_damping * mean_eig
    return float(lam) if lam > 0 else 1.0


class IdentityPreconditioner:
    """H = I: ``solve`` returns the features unchanged (float64)."""

    def update(self, *_: Any, **__: Any) -> None:
        """No statistics to accumulate."""

    def merge(self, other: IdentityPreconditioner) -> None:
        """Nothing to merge."""

    def to_state(self) -> dict[str, np.ndarray]:
        return {}

    @classmethod
    def from_state(cls, state: Mapping[str, np.ndarray]) -> IdentityPreconditioner:
        return cls()

    def solve(self, x: Any, damping: float | None = None, relative_damping: float = 0.1) -> np.ndarray:
        arr = _as_f64(x)
        return arr.copy() if arr is x else arr


class GaussNewtonPreconditioner:
    """Streaming ΦᵀΦ and n; solves x (ΦᵀΦ/n + λI)⁻¹ via a cached eigendecomposition."""

    def __init__(self, dim: int) -> None:
        if dim <= 0:
            raise ConfigError(f"GaussNewtonPreconditioner: `dim` must be > 0, got {dim}")
        self.dim = int(dim)
        self.gram = np.zeros((self.dim, self.dim), dtype=np.float64)
        self.n = 0
        self._eig: tuple[np.ndarray, np.ndarray] | None = None

    def update(self, features: Any) -> None:
        """Add a batch of feature rows (m, dim)."""
        phi = _rows(features, self.dim, "GaussNewtonPreconditioner.update")
        self.gram += phi.T @ phi
        self.n += phi.shape[0]
        self._eig = None

    def merge(self, other: GaussNewtonPreconditioner) -> None:
        """Add another shard's statistics."""
        if other.dim != self.dim:
            raise ConfigError(f"GaussNewtonPreconditioner.merge: dim {other.dim} != {self.dim}")
        self.gram += other.gram
        self.n += other.n
        self._eig = None

    def to_state(self) -> dict[str, np.ndarray]:
        return {"gram": self.gram.copy(), "n": np.asarray(self.n, dtype=np.int64)}

    @classmethod
    def from_state(cls, state: Mapping[str, np.ndarray]) -> GaussNewtonPreconditioner:
        try:
            gram, n = _as_f64(state["gram"]), int(np.asarray(state["n"]))
        except KeyError as err:
            raise ConfigError(f"GaussNewtonPreconditioner.from_state: missing key {err}") from err
        if gram.ndim != 2 or gram.shape[0] != gram.shape[1]:
            raise ConfigError(f"GaussNewtonPreconditioner.from_state: `gram` not square: {gram.shape}")
        out = cls(gram.shape[0])
        out.gram, out.n = gram.copy(), n
        return out

    def hessian(self) -> np.ndarray:
        """ΦᵀΦ / n."""
        if self.n == 0:
            raise CorpusError("GaussNewtonPreconditioner: no features accumulated (n = 0)")
        return self.gram / self.n

    def _eigh(self) -> tuple[np.ndarray, np.ndarray]:
        if self._eig is None:
            s, u = np.linalg.eigh(self.hessian())
            self._eig = (np.clip(s, 0.0, None), u)
        return self._eig

    def damping(self, damping: float | None = None, relative_damping: float = 0.1) -> float:
        """The absolute λ that :meth:`solve` would use."""
        return _relative_lambda(float(np.trace(self.hessian())) / self.dim, relative_damping, damping)

    def solve(self, x: Any, damping: float | None = None, relative_damping: float = 0.1) -> np.ndarray:
        """x (ΦᵀΦ/n + λI)⁻¹; λ = ``damping`` if given else ``relative_damping`` × trace/dim."""
        arr = _rows(x, self.dim, "GaussNewtonPreconditioner.solve")
        lam = self.damping(damping, relative_damping)
        s, u = self._eigh()
        return ((arr @ u) / (s + lam)) @ u.T


class KFACPreconditioner:
    """Per-layer K-FAC in projected space from Σx̃x̃ᵀ, Σδ̃δ̃ᵀ and token counts."""

    def __init__(
        self, layer_slices: Mapping[str, slice], layer_shapes: Mapping[str, tuple[int, int]]
    ) -> None:
        if set(layer_slices) != set(layer_shapes) or not layer_slices:
            raise ConfigError(
                "KFACPreconditioner: layer_slices and layer_shapes must name the same, non-empty layers"
            )
        self.layer_slices = {n: layer_slices[n] for n in sorted(layer_slices)}
        self.layer_shapes = {n: (int(layer_shapes[n][0]), int(layer_shapes[n][1])) for n in self.layer_slices}
        for name, sl in self.layer_slices.items():
            r_out, r_in = self.layer_shapes[name]
            if sl.stop - sl.start != r_out * r_in:
                raise ConfigError(f"KFACPreconditioner: slice of layer {name!r} has length != {r_out}*{r_in}")
        self.dim = max(sl.stop for sl in self.layer_slices.values())
        self.fwd = {n: np.zeros((s[1], s[1])) for n, s in self.layer_shapes.items()}
        self.bwd = {n: np.zeros((s[0], s[0])) for n, s in self.layer_shapes.items()}
        self.count = {n: 0 for n in self.layer_shapes}
        self._eig: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = {}

    def update(self, kfac: Mapping[str, tuple[Any, Any, int]]) -> None:
        """Add ``FeatureBatch.kfac``: {layer: (Σx̃x̃ᵀ, Σδ̃δ̃ᵀ, token count)}."""
        unknown = set(kfac) - set(self.layer_shapes)
        if unknown:
            raise ConfigError(f"KFACPreconditioner.update: unknown layers {sorted(unknown)}")
        for name, (a, b, n) in kfac.items():
            a, b = _as_f64(a), _as_f64(b)
            if a.shape != self.fwd[name].shape or b.shape != self.bwd[name].shape:
                raise ConfigError(
                    f"KFACPreconditioner.update: layer {name!r} factors {a.shape}, {b.shape} "
                    f"!= {self.fwd[name].shape}, {self.bwd[name].shape}"
                )
            self.fwd[name] += a
            self.bwd[name] += b
            self.count[name] += int(n)
        self._eig = {}

    def merge(self, other: KFACPreconditioner) -> None:
        """Add another shard's factor sums."""
        if other.layer_shapes != self.layer_shapes:
            raise ConfigError("KFACPreconditioner.merge: layer shapes differ")
        self.update({n: (other.fwd[n], other.bwd[n], other.count[n]) for n in self.layer_shapes})

    def to_state(self) -> dict[str, np.ndarray]:
        """Flat {key: array} with keys ``fwd::L``, ``bwd::L``, ``count::L``, ``slice::L``, ``shape::L``."""
        state: dict[str, np.ndarray] = {}
        for n, sl in self.layer_slices.items():
            state[f"fwd::{n}"] = self.fwd[n].copy()
            state[f"bwd::{n}"] = self.bwd[n].copy()
            state[f"count::{n}"] = np.asarray(self.count[n], dtype=np.int64)
            state[f"slice::{n}"] = np.asarray([sl.start, sl.stop], dtype=np.int64)
            state[f"shape::{n}"] = np.asarray(self.layer_shapes[n], dtype=np.int64)
        return state

    @classmethod
    def from_state(cls, state: Mapping[str, np.ndarray]) -> KFACPreconditioner:
        names = [k.split("::", 1)[1] for k in state if k.startswith("slice::")]
        try:
            slices = {n: slice(*(int(v) for v in state[f"slice::{n}"])) for n in names}
            shapes = {n: tuple(int(v) for v in state[f"shape::{n}"]) for n in names}
            out = cls(slices, shapes)  # type: ignore[arg-type]
            out.update(
                {n: (state[f"fwd::{n}"], state[f"bwd::{n}"], int(state[f"count::{n}"])) for n in names}
            )
        except KeyError as err:
            raise ConfigError(f"KFACPreconditioner.from_state: missing key {err}") from err
        return out

    def _layer_eig(self, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        if name not in self._eig:
            n = self.count[name]
            if n == 0:
                raise CorpusError(f"KFACPreconditioner: no tokens accumulated for layer {name!r}")
            s_f, u_f = np.linalg.eigh(self.fwd[name] / n)
            s_b, u_b = np.linalg.eigh(self.bwd[name] / n)
            self._eig[name] = (np.clip(s_b, 0, None), u_b, np.clip(s_f, 0, None), u_f)
        return self._eig[name]

    def solve(self, x: Any, relative_damping: float = 0.1, damping: float | None = None) -> np.ndarray:
        """Per layer block X (r_out, r_in): U_b [(U_bᵀ X U_f) / (s_b s_fᵀ + λ)] U_fᵀ.

        λ = ``damping`` if given, else ``relative_damping`` × mean(s_b s_fᵀ).
        """
        arr = _rows(x, self.dim, "KFACPreconditioner.solve")
        out = arr.copy()
        for name, sl in self.layer_slices.items():
            r_out, r_in = self.layer_shapes[name]
            s_b, u_b, s_f, u_f = self._layer_eig(name)
            eig = np.outer(s_b, s_f)
            lam = _relative_lambda(float(eig.mean()), relative_damping, damping)
            blk = arr[:, sl].reshape(-1, r_out, r_in)
            rot = np.einsum("ao,mab,bi->moi", u_b, blk, u_f) / (eig + lam)
            out[:, sl] = np.einsum("oa,mab,ib->moi", u_b, rot, u_f).reshape(arr.shape[0], -1)
        return out
