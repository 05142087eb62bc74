"""Score one corpus shard with the trained data influence model (runs on a Ray actor)."""

from __future__ import annotations

import hashlib
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel

from operators.io import storage
from operators.selection.influence_model import load_influence_model
from operators.model.loading import load_tokenizer
from operators.model.tokenize import prepare_tokenizer
from workflows.config import RunConfig
from workflows.jobs.examples import read_task_rows, tokenize_table
from workflows.run.plan import ShardTask, run_root


def scores_uri(root: str, shard_id: str) -> str:
    return storage.join(root, "mates", "scores", f"{shard_id}.parquet")


def score_done_uri(root: str, shard_id: str) -> str:
    return storage.join(root, "mates", "_done", f"{shard_id}.json")


class ScoreRecord(BaseModel):
    shard_id: str
    n_examples: int
    output_uri: str
    worker: str
    attempt: int
    duration_s: float


class ShardScorer:
    """Holds the tokenizer and the data influence model; writes one score file per shard."""

    def __init__(self, cfg: RunConfig, model_uri: str, dim_uri: str, device: str, worker: str) -> None:
        self.cfg = cfg
        self.worker = worker
        self.root = run_root(cfg)
        self.tokenizer = prepare_tokenizer(load_tokenizer(model_uri, storage=cfg.storage,
                                                          cache_dir=cfg.model.cache_dir))
        data = storage.read_bytes(dim_uri, cfg.storage)
        self.model = load_influence_model(data, device, storage=cfg.storage, cache_dir=cfg.model.cache_dir)
        self.fingerprint = f"dim:{hashlib.sha256(data).hexdigest()[:16]}"

    def describe(self) -> dict:
        return {"worker": self.worker, "fingerprint": self.fingerprint}

    def process(self, task: ShardTask, attempt: int = 1, on_batch=None) -> ScoreRecord:
        done = score_done_uri(self.root, task.shard_id)
        if storage.exists(done, self.cfg.storage):
            return ScoreRecord.model_validate(storage.read_json(done, self.cfg.storage))
        started = time.time()
        table = read_task_rows(self.cfg, task)
        input_ids, mask, keep = tokenize_table(self.tokenizer, table, self.cfg.mates.model.max_length)
        scores = self.model.predict(input_ids, mask) if len(input_ids) else np.zeros(0)
        kept = table.filter(pa.array(keep))
        out = pa.table({"id": kept.column("id"), "domain": kept.column("domain"),
                        "score": pa.array(scores.astype(np.float32))})
        sink = pa.BufferOutputStream()
        pq.write_table(out, sink)
        uri = scores_uri(self.root, task.shard_id)
        storage.write_bytes_atomic(uri, sink.getvalue().to_pybytes(), self.cfg.storage)
        if on_batch is not None:
            on_batch("mates", kept.column("domain").to_pylist(), mask.sum(dim=1).numpy())
        record = ScoreRecord(shard_id=task.shard_id, n_examples=kept.num_rows, output_uri=uri,
                             worker=self.worker, attempt=attempt, duration_s=round(time.time() - started, 4))
        storage.write_json_atomic(done, record.model_dump(), self.cfg.storage)
        return record


class ScorerFactory:
    def __init__(self, cfg: RunConfig, model_uri: str, dim_uri: str) -> None:
        self.cfg_data = cfg.model_dump(mode="json")
        self.model_uri = model_uri
        self.dim_uri = dim_uri

    def __call__(self, worker: str, device: str) -> ShardScorer:
        return ShardScorer(RunConfig.model_validate(self.cfg_data), self.model_uri, self.dim_uri, device, worker)
