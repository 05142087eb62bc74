"""Featurize one shard: stream → sample → tokenize → projected per-example gradients → feature parts.

Runs inside a Ray actor (cluster/actor_pool.py) or in-process; no Ray imports here. Outputs are
written to deterministic keys (feature shard, optional K-FAC factors, then the completion record),
so a retried or re-run shard overwrites identical objects and never duplicates examples.
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TypeVar

import numpy as np
import pyarrow.compute as pc
import torch

from operators.features import datastore
from operators.features.featurize import AdamState, FeatureBatch, FeaturizeSpec, GradientFeaturizer
from operators.model.loading import LoadedModel, ModelSource, load_adam_moments
from operators.model.tokenize import TokenBatch, iter_token_batches, prepare_tokenizer, tokenize_texts
from workflows.jobs.examples import ExampleSource, iter_task_rows
from workflows.run.plan import ShardTask, feature_root

log = logging.getLogger(__name__)

BatchCallback = Callable[[str, list[str], np.ndarray], None]  # (role, domains, n_tokens)
FAULT_ENV = "INFLUMIX_FAULT_INJECT"
_T = TypeVar("_T")


@dataclass(frozen=True)
class FeaturizeJob:
    """What a featurizing worker needs (no run config travels to Ray): the examples, the checkpoint,
    the featurizer settings, whether to collect K-FAC sums, and the feature root it writes under."""

    examples: ExampleSource
    model: ModelSource
    featurize: FeaturizeSpec
    collect_kfac: bool
    root: str
    store: str = ""  # the featurizer's datastore folder; each task's features go under its shard key


def adam_state_for(loaded: LoadedModel, featurizer: GradientFeaturizer) -> AdamState:
    """LESS Adam-aware features need the checkpoint's Adam moments for every featurized layer."""
    from operators.errors import ModelError

    moments = load_adam_moments(loaded.local_dir, loaded.model)
    if moments is None:
        raise ModelError(f"featurize.adam_aware=true but {loaded.local_dir} has no optimizer.pt")
    exp_avg, exp_avg_sq = {}, {}
    for name in featurizer.layer_names:
        entry = moments.get(f"{name}.weight")
        if entry is None:
            raise ModelError(f"{loaded.local_dir}/optimizer.pt has no Adam moments for {name}.weight")
        exp_avg[name] = torch.as_tensor(entry["exp_avg"], dtype=torch.float32)
        exp_avg_sq[name] = torch.as_tensor(entry["exp_avg_sq"], dtype=torch.float32)
    beta1, beta2 = moments["betas"]  # load_adam_moments guarantees betas/eps/step (first param group's)
    return AdamState(exp_avg, exp_avg_sq, float(beta1), float(beta2), float(moments["eps"]))


class ShardFeaturizer:
    """Holds the model and projector for one worker; featurizes shards on request."""

    def __init__(self, job: FeaturizeJob, device: str, worker: str) -> None:
        self.job = job
        self.storage = job.examples.storage
        self.device = device
        self.worker = worker
        self.root = job.root  # the plan's root (a checkpoint's sub-root when averaging)
        # a task's features go to feature_root(job.store, root, task): its datastore folder
        self.max_rows: int | None = None  # learned after a CUDA out-of-memory error
        self.loaded = job.model.load(device)
        self.tokenizer = prepare_tokenizer(self.loaded.tokenizer)
        # targets keep plain SGD gradients (LESS: the Adam transform is for training examples only)
        self.target_featurizer = GradientFeaturizer(self.loaded.model, job.featurize, device=device,
                                                    collect_kfac=job.collect_kfac)
        self.featurizer = self.target_featurizer
        if job.featurize.adam_aware:
            adam = adam_state_for(self.loaded, self.target_featurizer)
            self.featurizer = GradientFeaturizer(self.loaded.model, job.featurize, device=device, adam_state=adam,
                                                 projector=self.target_featurizer.projector,
                                                 collect_kfac=job.collect_kfac)

    @property
    def fingerprint(self) -> str:
        """Model + projector identity; every worker of a run must report the same value.

        ``adam-corpus``: Adam-transformed corpus features, plain target features (older runs that
        also transformed targets recorded ``adam`` and are refused on resume).
        """
        kind = "adam-corpus" if self.job.featurize.adam_aware else "sgd"
        return f"{self.loaded.fingerprint}:{self.featurizer.describe()['fingerprint']}:{kind}"

    def describe(self) -> dict:
        featurizer = dict(self.featurizer.describe())
        layout = self.featurizer.projector.kfac_layout()  # feature blocks for the K-FAC preconditioner
        if layout is not None:
            featurizer["kfac_layout"] = layout
        return {"worker": self.worker, "device": self.device, "fingerprint": self.fingerprint,
                "model": self.loaded.fingerprint, "featurizer": featurizer}

    def featurize_adaptive(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                           featurizer: GradientFeaturizer | None = None) -> list[FeatureBatch]:
        """Featurize a batch; on CUDA out-of-memory halve it (and remember the size that fits).

        Pieces come back in row order; per-example features do not depend on batch composition.
        """
        featurizer = featurizer or self.featurizer
        rows = input_ids.shape[0]
        step = min(rows, self.max_rows or rows)
        pieces: list[FeatureBatch] = []
        for start in range(0, rows, step):
            ids = input_ids[start:start + step]
            mask = attention_mask[start:start + step]
            try:
                pieces.append(featurizer.featurize(ids.to(self.device), mask.to(self.device)))
            except torch.cuda.OutOfMemoryError:
                if ids.shape[0] == 1:
                    raise
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                self.max_rows = max(1, ids.shape[0] // 2)
                log.warning("%s: out of memory at %d rows; retrying with %d", self.worker, ids.shape[0],
                            self.max_rows)
                pieces.extend(self.featurize_adaptive(ids, mask, featurizer))
        return pieces

    def process(self, task: ShardTask, attempt: int = 1,
                on_batch: BatchCallback | None = None) -> datastore.CompletionRecord:
        """Featurize one shard unless its completion record already exists.

        Streams: a background thread reads, samples and tokenizes the next chunk of rows while this
        thread runs forward+backward, and full feature parts are written by the part writer's thread.
        """
        root = feature_root(self.job.store, self.root, task)
        existing = datastore.read_completion(root, task.shard_id, self.storage)
        if existing is not None:
            return existing
        started = time.time()
        featurizer = self.target_featurizer if task.role == "target" else self.featurizer
        dim = featurizer.output_dim
        fp = featurizer.describe()["fingerprint"]
        writer = datastore.FeaturePartWriter(
            root, task.shard_id, dim, fp, datastore.part_rows_for(dim, self.job.featurize.part_rows),
            self.storage)
        stats: dict[str, dict[str, int]] = {}
        counts: dict[str, int] = {}
        tokens: dict[str, int] = {}
        kfac: dict[str, list] = {}
        skipped = 0
        try:
            for i, batch in enumerate(_background(self._token_batches(task, stats))):
                if i == 1:
                    _maybe_inject_fault(task)
                pieces = self.featurize_adaptive(batch.input_ids, batch.attention_mask, featurizer)
                n_tok = np.concatenate([fb.n_tokens.numpy() for fb in pieces])
                losses = np.concatenate([fb.losses.numpy() for fb in pieces])
                feats = np.concatenate([fb.features.numpy() for fb in pieces])
                ids, doms = list(batch.ids), list(batch.domains)
                finite = np.isfinite(feats).all(axis=1) & np.isfinite(losses)
                if not finite.all():  # documented skip (docs/RELIABILITY.md): counted in record and report
                    bad = int((~finite).sum())
                    log.warning("shard %s (%s): skipping %d example(s) with NaN/Inf features or loss, first id %r",
                                task.shard_id, task.uri, bad, ids[int(np.flatnonzero(~finite)[0])])
                    skipped += bad
                    ids = [i for i, ok in zip(ids, finite) if ok]
                    doms = [d for d, ok in zip(doms, finite) if ok]
                    n_tok, losses, feats = n_tok[finite], losses[finite], feats[finite]
                writer.add(ids, doms, n_tok, losses, feats)
                for fb in pieces:
                    if not _accumulate_kfac(kfac, fb.kfac):
                        log.warning("shard %s (%s): K-FAC sums of a %d-example piece are NaN/Inf; left out of "
                                    "the factors", task.shard_id, task.uri, int(fb.features.shape[0]))
                for d, n in zip(doms, n_tok.tolist()):
                    counts[d] = counts.get(d, 0) + 1
                    tokens[d] = tokens.get(d, 0) + int(n)
                if on_batch is not None:
                    on_batch(task.role, doms, n_tok)
            parts = writer.close()
        except BaseException:
            writer.abort()
            raise
        if kfac:
            datastore.write_npz_atomic(datastore.kfac_uri(root, task.shard_id),
                                       _kfac_arrays(kfac), self.storage)
        finished = time.time()
        record = datastore.CompletionRecord(
            shard_id=task.shard_id, source_uri=task.uri, role=task.role, target_name=task.target_name,
            output_uri=datastore.feature_uri(root, task.shard_id), n_examples=sum(counts.values()),
            n_tokens=sum(tokens.values()), domain_counts=counts, domain_tokens=tokens, feature_dim=dim,
            projector_fingerprint=fp, worker=self.worker, attempt=attempt, started_at=_iso(started),
            finished_at=_iso(finished), duration_s=round(finished - started, 4),
            parts=[u for u, _ in parts], part_rows=[n for _, n in parts],
            domain_rows_all=stats.get("rows", {}), domain_bytes_all=stats.get("bytes", {}),
            domain_tokens_untruncated=stats.get("tokens_untruncated", {}),
            domain_bytes_featurized=stats.get("bytes_featurized", {}), skipped_nonfinite=skipped,
            part_bytes=[n for n, _ in writer.digests], part_sha256=[h for _, h in writer.digests],
            source_key=task.key,
        )
        datastore.write_completion(root, record, self.storage)
        return record

    def _token_batches(self, task: ShardTask, stats: dict[str, dict[str, int]]) -> Iterator[TokenBatch]:
        """Model batches of the shard, chunk by chunk (length-sorted within a chunk); fills ``stats``
        with whole-shard rows/bytes and the featurized rows' untruncated tokens and bytes."""
        f = self.job.featurize
        for table in iter_task_rows(self.job.examples, task, stats):
            texts = table.column("text").to_pylist()
            tok = tokenize_texts(self.tokenizer, texts, f.max_length, count_untruncated=True)
            valid = tok.valid.numpy()
            domains = table.column("domain").to_pylist()
            nbytes = pc.binary_length(table.column("text")).to_numpy(zero_copy_only=False)
            full = tok.full_lengths.numpy()
            untrunc = stats.setdefault("tokens_untruncated", {})
            feat_bytes = stats.setdefault("bytes_featurized", {})
            for row in np.flatnonzero(valid).tolist():
                d = domains[row]
                untrunc[d] = untrunc.get(d, 0) + int(full[row])
                feat_bytes[d] = feat_bytes.get(d, 0) + int(nbytes[row])
            for batch in iter_token_batches(table.column("id").to_pylist(), domains, tok, f.batch_size):
                yield batch


def _background(items: Iterator[_T], depth: int = 2) -> Iterator[_T]:
    """Run the producer ``items`` in a thread, ``depth`` items ahead; its errors re-raise here."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def put(entry: tuple) -> bool:
        while not stop.is_set():
            try:
                q.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def run() -> None:
        try:
            for item in items:
                if not put((True, item)):
                    return
            put((True, done))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            put((False, exc))

    thread = threading.Thread(target=run, name="featurize-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            ok, item = q.get()
            if not ok:
                raise item
            if item is done:
                return
            yield item
    finally:
        stop.set()


def _accumulate_kfac(acc: dict[str, list], kfac: dict | None) -> bool:
    """Add one piece's K-FAC sums; a piece with any NaN/Inf sum is left out whole (False), so every
    layer's factors count the same examples."""
    if not kfac:
        return True
    if not all(bool(torch.isfinite(a).all()) and bool(torch.isfinite(b).all()) for a, b, _ in kfac.values()):
        return False
    for name, (a_sum, b_sum, n) in kfac.items():
        if name not in acc:
            acc[name] = [a_sum.double().numpy().copy(), b_sum.double().numpy().copy(), int(n)]
        else:
            acc[name][0] += a_sum.double().numpy()
            acc[name][1] += b_sum.double().numpy()
            acc[name][2] += int(n)
    return True


def _kfac_arrays(acc: dict[str, list]) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    for name, (a_sum, b_sum, n) in acc.items():
        arrays[f"{name}|A"] = a_sum
        arrays[f"{name}|B"] = b_sum
        arrays[f"{name}|N"] = np.array(n, dtype=np.int64)
    return arrays


def kfac_from_arrays(arrays: dict[str, np.ndarray]) -> dict[str, tuple[torch.Tensor, torch.Tensor, int]]:
    """Inverse of the per-shard K-FAC npz layout: layer -> (Σx̃x̃ᵀ, Σδ̃δ̃ᵀ, tokens)."""
    out: dict[str, tuple[torch.Tensor, torch.Tensor, int]] = {}
    for key in arrays:
        name, part = key.rsplit("|", 1)
        if part == "A":
            out[name] = (torch.from_numpy(arrays[f"{name}|A"]), torch.from_numpy(arrays[f"{name}|B"]),
                         int(arrays[f"{name}|N"]))
    return out


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat()


def _maybe_inject_fault(task: ShardTask) -> None:
    """Chaos hook for fault-tolerance tests and drills (`INFLUMIX_FAULT_INJECT`):
    `crash:<shard substring>:<marker file>` kills this worker process mid-shard once (the marker
    records that it happened); `delay:<shard substring or *>:<seconds>` slows matching shards."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    kind, needle, arg = spec.split(":", 2)
    if needle != "*" and needle not in task.shard_id:
        return
    if kind == "delay":
        time.sleep(float(arg))
        return
    if kind != "crash" or os.path.exists(arg):
        return
    with open(arg, "w") as fh:
        fh.write(f"{task.shard_id} {socket.gethostname()} {os.getpid()}\n")
    log.warning("fault injection: killing worker pid %s mid-shard %s", os.getpid(), task.shard_id)
    os._exit(17)
