"""Score one corpus shard with the trained data influence model (runs on a Ray actor)."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel

from operators.io import storage
from operators.selection.influence_model import load_influence_model
from operators.model.loading import ModelSource
from workflows.jobs.examples import ExampleSource, read_task_rows, tokenize_table
from workflows.run.plan import ShardTask


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


@dataclass(frozen=True)
class ScoreJob:
    """What a scoring worker needs: the examples, the checkpoint (its tokenizer), the trained data
    influence model, the scoring context length and the run root it writes under."""

    examples: ExampleSource
    model: ModelSource
    dim_uri: str
    max_length: int
    root: str


class ShardScorer:
    """Holds the tokenizer and the data influence model; writes one score file per shard."""

    def __init__(self, job: ScoreJob, device: str, worker: str) -> None:
        self.job = job
        self.storage = job.examples.storage
        self.worker = worker
        self.root = job.root
        self.tokenizer = job.model.tokenizer()
        data = storage.read_bytes(job.dim_uri, self.storage)
        self.model = load_influence_model(data, device, storage=self.storage, cache_dir=job.model.cache_dir)
        self.fingerprint = f"dim:{hashlib.sha256(data).hexdigest()[:16]}"

    def describe(self) -> dict:
        return {"worker": self.worker, "fingerprint": self.fingerprint}

    def process(self, task: ShardTask, attempt: int = 1, on_batch=None) -> ScoreRecord:
        done = score_done_uri(self.root, task.shard_id)
        if storage.exists(done, self.storage):
            return ScoreRecord.model_validate(storage.read_json(done, self.storage))
        started = time.time()
        table = read_task_rows(self.job.examples, task)
        input_ids, mask, keep = tokenize_table(self.tokenizer, table, self.job.max_length)
        scores = self.model.predict(input_ids, mask) if len(input_ids) else np.zeros(0)
        kept = table.filter(pa.array(keep))
        out = pa.table({"id": kept.column("id"), "domain": kept.column("domain"),
                        "score": pa.array(scores.astype(np.float32))})
        sink = pa.BufferOutputStream()
        pq.write_table(out, sink)
        uri = scores_uri(self.root, task.shard_id)
        storage.write_bytes_atomic(uri, sink.getvalue().to_pybytes(), self.storage)
        if on_batch is not None:
            on_batch("mates", kept.column("domain").to_pylist(), mask.sum(dim=1).numpy())
        record = ScoreRecord(shard_id=task.shard_id, n_examples=kept.num_rows, output_uri=uri,
                             worker=self.worker, attempt=attempt, duration_s=round(time.time() - started, 4))
        storage.write_json_atomic(done, record.model_dump(), self.storage)
        return record


class ScorerFactory:
    """Picklable factory each actor calls once to build its :class:`ShardScorer`."""

    def __init__(self, job: ScoreJob) -> None:
        self.job = job

    def __call__(self, worker: str, device: str) -> ShardScorer:
        return ShardScorer(self.job, device, worker)
