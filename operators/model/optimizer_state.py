"""The optimizer state a checkpoint carries (``optimizer.pt``), read as Adam moments per parameter name.

Two layouts are read:

* **influmix**: ``{name: {exp_avg, exp_avg_sq}, betas, eps, step, lr, weight_decay}`` (what
  :func:`operators.model.tiny_lm.save_checkpoint` writes).
* **torch**: ``torch.save(optimizer.state_dict())`` of a torch Adam/AdamW, as the Hugging Face Trainer
  and most training loops write it: ``state`` keyed by parameter index and ``param_groups`` listing the
  indices with their ``lr``, ``betas``, ``eps`` and ``weight_decay``. The indices carry no names; they
  are mapped the way the Trainer builds its groups (the model's trainable parameters in
  ``named_parameters()`` order; with two groups, the weight-decayed parameters first, then the others)
  and every moment's shape is checked against its parameter. A mapping that does not fit, or that
  more than one grouping rule fits differently, raises :class:`OptimizerStateError`.

The current learning rate of a torch state is taken from ``scheduler.pt`` (``_last_lr``), else the last
``learning_rate`` logged in ``trainer_state.json``, else the groups' own ``lr``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from operators.errors import ModelError
from operators.model.quiet import hf_quiet

log = logging.getLogger(__name__)

OPTIMIZER_FILE = "optimizer.pt"
SCHEDULER_FILE = "scheduler.pt"
TRAINER_STATE_FILE = "trainer_state.json"
#: ``model.optimizer_state``: auto = use the moments when they map, else warn and start fresh;
#: require = a checkpoint whose moments cannot be used is an error; ignore = always start fresh.
OptimizerStateMode = Literal["auto", "require", "ignore"]
SOURCE_CHECKPOINT = "checkpoint optimizer.pt"
SOURCE_CONFIG = "config"

__all__ = ["OptimizerStateError", "CheckpointOptimizer", "read_optimizer_state", "trainable_parameters",
           "meta_model", "OPTIMIZER_FILE", "SOURCE_CHECKPOINT", "SOURCE_CONFIG"]


class OptimizerStateError(ModelError):
    """``optimizer.pt`` exists but cannot be read or mapped onto the model's parameters."""


@dataclass
class CheckpointOptimizer:
    """Adam moments by parameter name plus the groups they were trained with.

    ``groups``: one entry per optimizer group, ``{"names": [...], "lr", "betas", "eps", "weight_decay"}``
    in the checkpoint's group order; ``format`` is ``influmix`` or ``torch``; ``lr_source`` says where
    the groups' current learning rate came from.
    """

    moments: dict[str, tuple[torch.Tensor, torch.Tensor]]
    step: int
    groups: list[dict[str, Any]]
    format: Literal["influmix", "torch"]
    path: str
    lr_source: str = "optimizer.pt"
    notes: list[str] = field(default_factory=list)

    @property
    def betas(self) -> tuple[float, float]:
        return tuple(self.groups[0]["betas"])  # type: ignore[return-value]

    @property
    def eps(self) -> float:
        return float(self.groups[0]["eps"])

    def describe(self) -> dict[str, Any]:
        """JSON-able summary for reports."""
        return {"path": self.path, "format": self.format, "step": self.step, "parameters": len(self.moments),
                "groups": [{"parameters": len(g["names"]), "lr": g["lr"], "betas": list(g["betas"]),
                            "eps": g["eps"], "weight_decay": g["weight_decay"]} for g in self.groups],
                "lr_source": self.lr_source, **({"notes": list(self.notes)} if self.notes else {})}

    def torch_state_dict(self, model: nn.Module, hyperparameters_from_checkpoint: bool) -> dict[str, Any]:
        """A torch AdamW ``state_dict`` over ``model``'s trainable parameters (indices = their position in
        ``named_parameters()``), one param group per checkpoint group. With
        ``hyperparameters_from_checkpoint`` the state is marked so that probes keep the groups' lr, betas,
        eps and weight decay (:func:`operators.training.probing.train_on_mixture`)."""
        params = trainable_parameters(model)
        index = {name: i for i, (name, _) in enumerate(params)}
        state: dict[int, dict[str, Any]] = {}
        for name, param in params:
            entry = self.moments.get(name)
            if entry is None:
                continue
            exp_avg, exp_avg_sq = entry
            if tuple(exp_avg.shape) != tuple(param.shape):
                raise OptimizerStateError(f"{self.path}: moments for {name} have shape {tuple(exp_avg.shape)}, "
                                          f"the parameter has {tuple(param.shape)}")
            state[index[name]] = {"step": torch.tensor(float(self.step)),
                                  "exp_avg": exp_avg.to(param.device, torch.float32).clone(),
                                  "exp_avg_sq": exp_avg_sq.to(param.device, torch.float32).clone()}
        groups = []
        seen: set[str] = set()
        for g in self.groups:
            names = [n for n in g["names"] if n in index]
            seen.update(names)
            groups.append(_torch_group([index[n] for n in names], g))
        rest = [i for n, i in index.items() if n not in seen]
        if rest:  # parameters no group listed (influmix layout lists every trained one): first group's settings
            groups[0]["params"] = sorted(groups[0]["params"] + rest)
        out: dict[str, Any] = {"state": state, "param_groups": [g for g in groups if g["params"]]}
        if hyperparameters_from_checkpoint:
            out["hyperparameters_from"] = SOURCE_CHECKPOINT
        return out


def _torch_group(indices: list[int], g: dict[str, Any]) -> dict[str, Any]:
    return {"params": indices, "lr": float(g["lr"]), "betas": tuple(float(b) for b in g["betas"]),
            "eps": float(g["eps"]), "weight_decay": float(g["weight_decay"]), "amsgrad": False,
            "maximize": False, "foreach": None, "capturable": False, "differentiable": False, "fused": None,
            "decoupled_weight_decay": True}


def trainable_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """``(name, parameter)`` of every trainable parameter, in ``named_parameters()`` order."""
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def meta_model(local_dir: str | os.PathLike[str]) -> nn.Module:
    """The checkpoint's architecture on the ``meta`` device (names and shapes, no memory, no weights)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(str(local_dir), local_files_only=True)
        with torch.device("meta"), hf_quiet():
            return AutoModelForCausalLM.from_config(config)
    except Exception as exc:  # transformers raises OSError/ValueError/KeyError on a bad config
        raise ModelError(f"cannot build the model of {local_dir}/config.json: {type(exc).__name__}: {exc}") from exc


def _load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        try:  # mmap needs the zipfile format; older pickles load without it
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise OptimizerStateError(f"could not read {path}: {type(exc).__name__}: {exc}") from exc


def read_optimizer_state(local_dir: str | os.PathLike[str], model: nn.Module) -> CheckpointOptimizer | None:
    """The checkpoint's optimizer state mapped onto ``model`` (a real or :func:`meta_model`); None when the
    checkpoint has no ``optimizer.pt``. :class:`OptimizerStateError` when it cannot be read or mapped."""
    root = Path(local_dir)
    path = root / OPTIMIZER_FILE
    if not path.is_file():
        return None
    raw = _load(path)
    if not isinstance(raw, dict):
        raise OptimizerStateError(f"{path} holds a {type(raw).__name__}, not an optimizer state dict")
    if "state" in raw and "param_groups" in raw:
        opt = _from_torch(raw, path, trainable_parameters(model), model)
        _current_lr(opt, root)
        return opt
    if {"betas", "eps", "step"} <= set(raw):
        return _from_influmix(raw, path, trainable_parameters(model))
    raise OptimizerStateError(f"{path} is neither a torch optimizer state_dict (state + param_groups) nor an "
                              f"influmix optimizer state (betas/eps/step); keys: {sorted(map(str, raw))[:8]}")


def _from_influmix(raw: dict[str, Any], path: Path, params: list[tuple[str, nn.Parameter]]) -> CheckpointOptimizer:
    moments: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for name, param in params:
        entry = raw.get(name)
        if entry is None:
            raise OptimizerStateError(f"{path} has no Adam moments for parameter {name}")
        if tuple(entry["exp_avg"].shape) != tuple(param.shape):
            raise OptimizerStateError(f"{path}: moments for {name} have shape {tuple(entry['exp_avg'].shape)}, "
                                      f"the parameter has {tuple(param.shape)}")
        moments[name] = (entry["exp_avg"], entry["exp_avg_sq"])
    group = {"names": [n for n, _ in params], "lr": float(raw.get("lr", 1e-3)),
             "betas": tuple(float(b) for b in raw["betas"]), "eps": float(raw["eps"]),
             "weight_decay": float(raw.get("weight_decay", 0.0))}
    return CheckpointOptimizer(moments, int(raw["step"]), [group], "influmix", str(path))


# -------------------------------------------------------------------------------- torch state_dicts


def _decay_rules() -> list[tuple[str, Callable[[nn.Module, list[tuple[str, nn.Parameter]]], set[str]]]]:
    """How training stacks split parameters into a weight-decayed group and the rest."""
    from transformers.trainer_pt_utils import get_parameter_names

    patterns = [r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)"]

    def trainer(model: nn.Module, _params) -> set[str]:  # Trainer.get_decay_parameter_names (transformers 4.4x+)
        return set(get_parameter_names(model, [nn.LayerNorm], patterns))

    def trainer_legacy(model: nn.Module, _params) -> set[str]:  # older Trainers: LayerNorm modules and biases
        return {n for n in get_parameter_names(model, [nn.LayerNorm]) if "bias" not in n}

    def matrices(_model: nn.Module, params) -> set[str]:  # nanoGPT / Megatron style: decay 2-D weights only
        return {n for n, p in params if p.dim() >= 2}

    return [("trainer", trainer), ("trainer_legacy", trainer_legacy), ("matrices", matrices)]


def _candidate_orders(raw_groups: list[dict], params: list[tuple[str, nn.Parameter]],
                      model: nn.Module | None) -> list[tuple[str, list[list[str]]]]:
    names = [n for n, _ in params]
    sizes = [len(g.get("params", [])) for g in raw_groups]
    if all("param_names" in g for g in raw_groups):  # torch >= 2.6 optimizers built from named_parameters
        return [("param_names", [list(g["param_names"]) for g in raw_groups])]
    if len(raw_groups) == 1:
        return [("one group", [names])]
    if len(raw_groups) != 2 or model is None:
        return []
    found = []
    for rule, decay_of in _decay_rules():
        decay = decay_of(model, params)
        groups = [[n for n in names if n in decay], [n for n in names if n not in decay]]
        if [len(g) for g in groups] == sizes:
            found.append((f"two groups, {rule} weight-decay rule", groups))
    return found


def _from_torch(raw: dict[str, Any], path: Path, params: list[tuple[str, nn.Parameter]],
                model: nn.Module | None = None) -> CheckpointOptimizer:
    raw_groups = raw["param_groups"]
    state = raw["state"]
    if not isinstance(raw_groups, list) or not raw_groups or not isinstance(state, dict):
        raise OptimizerStateError(f"{path}: param_groups must be a non-empty list and state a dict")
    for g in raw_groups:
        if not {"params", "lr"} <= set(g) or "betas" not in g:
            raise OptimizerStateError(f"{path}: a param group lacks params/lr/betas: not an Adam/AdamW state "
                                      f"(group keys {sorted(g)})")
    sizes = [len(g["params"]) for g in raw_groups]
    if sum(sizes) != len(params):
        raise OptimizerStateError(f"{path} lists {sum(sizes)} parameters in {len(sizes)} group(s) {sizes}; the "
                                  f"model has {len(params)} trainable parameters")
    shapes = dict(params)
    candidates = _candidate_orders(raw_groups, params, model)
    fitting: list[tuple[str, list[list[str]]]] = []
    for rule, groups in candidates:
        if _fits(raw_groups, groups, state, shapes):
            fitting.append((rule, groups))
    distinct = {tuple(tuple(g) for g in groups) for _, groups in fitting}
    if not fitting:
        tried = ", ".join(r for r, _ in candidates) or "none applies to this group layout"
        raise OptimizerStateError(f"{path}: cannot map its {len(sizes)} param group(s) {sizes} onto the model's "
                                  f"parameters with matching shapes (tried: {tried})")
    if len(distinct) > 1:
        raise OptimizerStateError(f"{path}: the parameter order is ambiguous ({', '.join(r for r, _ in fitting)} "
                                  f"all fit with different orders); refusing to guess")
    rule, groups = fitting[0]
    moments: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    step = 0
    out_groups = []
    for g, names in zip(raw_groups, groups):
        for idx, name in zip(g["params"], names):
            entry = state.get(idx)
            if not entry:
                continue
            moments[name] = (entry["exp_avg"], entry["exp_avg_sq"])
            step = max(step, int(float(entry.get("step", 0))))
        out_groups.append({"names": list(names), "lr": float(g["lr"]),
                           "betas": tuple(float(b) for b in g["betas"]), "eps": float(g.get("eps", 1e-8)),
                           "weight_decay": float(g.get("weight_decay", 0.0)),
                           "initial_lr": float(g["initial_lr"]) if "initial_lr" in g else None})
    if not moments:
        raise OptimizerStateError(f"{path} holds no Adam moments (the optimizer never stepped)")
    return CheckpointOptimizer(moments, step, out_groups, "torch", str(path), notes=[f"order: {rule}"])


def _fits(raw_groups: list[dict], groups: list[list[str]], state: dict, shapes: dict[str, nn.Parameter]) -> bool:
    for g, names in zip(raw_groups, groups):
        if len(names) != len(g["params"]):
            return False
        for idx, name in zip(g["params"], names):
            if name not in shapes:
                return False
            entry = state.get(idx)
            if not entry:
                continue
            if not isinstance(entry, dict) or "exp_avg" not in entry or "exp_avg_sq" not in entry:
                return False
            shape = tuple(shapes[name].shape)
            if tuple(entry["exp_avg"].shape) != shape or tuple(entry["exp_avg_sq"].shape) != shape:
                return False
    return True


def _current_lr(opt: CheckpointOptimizer, root: Path) -> None:
    """Set each group's lr to the schedule's current value (scheduler.pt, else trainer_state.json)."""
    lrs: list[float] | None = None
    sched = root / SCHEDULER_FILE
    if sched.is_file():
        try:
            data = torch.load(sched, map_location="cpu", weights_only=True)
            last = data.get("_last_lr") if isinstance(data, dict) else None
            if isinstance(last, list) and len(last) == len(opt.groups):
                lrs, opt.lr_source = [float(x) for x in last], SCHEDULER_FILE
        except Exception as exc:  # an unreadable scheduler is not fatal: the groups carry an lr too
            opt.notes.append(f"{SCHEDULER_FILE} unreadable ({type(exc).__name__}); lr from optimizer.pt")
    state = root / TRAINER_STATE_FILE
    if lrs is None and state.is_file():
        try:
            history = json.loads(state.read_text(encoding="utf-8")).get("log_history", [])
            logged = [h["learning_rate"] for h in history if isinstance(h, dict) and "learning_rate" in h]
            if logged:
                lrs, opt.lr_source = [float(logged[-1])] * len(opt.groups), TRAINER_STATE_FILE
        except (OSError, ValueError, TypeError, AttributeError):
            opt.notes.append(f"{TRAINER_STATE_FILE} unreadable; lr from optimizer.pt")
    for g, lr in zip(opt.groups, lrs or [g["lr"] for g in opt.groups]):
        g["lr"] = lr
    for g in opt.groups:
        if g["lr"] <= 0 and g.get("initial_lr"):  # a finished schedule decays to 0: probes need a step size
            opt.notes.append(f"current lr is {g['lr']:g} (schedule ended); using the initial lr {g['initial_lr']:g}")
            g["lr"] = float(g["initial_lr"])


def grouped_params(params: list[nn.Parameter], state: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Optimizer param groups shaped like ``state``'s (its groups list indices into ``params``), so that
    ``optimizer.load_state_dict(state)`` maps every saved moment to its parameter; one group without a
    state."""
    if not state or len(state.get("param_groups", [])) <= 1:
        return [{"params": list(params)}]
    groups = [{"params": [params[i] for i in g["params"]]} for g in state["param_groups"]]
    listed = {i for g in state["param_groups"] for i in g["params"]}
    if len(listed) != len(params):
        raise OptimizerStateError(f"optimizer state groups list {len(listed)} parameters, the model has "
                                  f"{len(params)} trainable ones")
    return groups


def plain_state_dict(state: dict[str, Any]) -> dict[str, Any]:
    """Only what ``torch.optim.Optimizer.load_state_dict`` reads (drops influmix markers)."""
    return {"state": state["state"], "param_groups": state["param_groups"]}
