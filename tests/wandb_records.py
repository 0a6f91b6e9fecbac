"""Read a W&B offline run file (`run-<id>.wandb`) back, for tests: no W&B service, no network.

The file is a LevelDB-style log: a 7-byte header (":W&B", magic 0xBEE1, version), then
32 KiB blocks of chunks, each with a 7-byte header (crc32, length, type: full, first,
middle, last). Each reassembled record is a `wandb.proto.wandb_internal_pb2.Record`.
"""
from __future__ import annotations

import json
import struct
import time
import zlib
from pathlib import Path

from wandb.proto import wandb_internal_pb2 as pb

BLOCK, HEADER = 32768, 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path) -> list[pb.Record]:
    data = Path(path).read_bytes()
    ident, magic, _version = struct.unpack("<4sHB", data[:HEADER])
    assert ident == b":W&B" and magic == 0xBEE1, f"{path} is not a W&B run file"
    out, pending, pos = [], b"", HEADER
    while pos + HEADER <= len(data):
        if BLOCK - pos % BLOCK < HEADER:            # block tail too short for a chunk header: padding
            pos += BLOCK - pos % BLOCK
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        chunk = data[pos + HEADER:pos + HEADER + length]
        if (kind == 0 and length == 0) or pos + HEADER + length > len(data):   # end, or a chunk still being written
            break
        assert crc == zlib.crc32(chunk, zlib.crc32(bytes([kind]))) & 0xFFFFFFFF, f"bad checksum at {pos}"
        pos += HEADER + length
        pending = chunk if kind in (FULL, FIRST) else pending + chunk
        if kind in (FULL, LAST):
            record = pb.Record()
            record.ParseFromString(pending)
            out.append(record)
            pending = b""
    return out


def _update(target: dict, items) -> dict:
    """Items with a nested_key (a logged Table's fields, nested summaries) become nested dicts."""
    for item in items:
        keys = list(item.nested_key) or [item.key]
        node = target
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = json.loads(item.value_json)
    return target


class OfflineRun:
    """What one offline run recorded: run fields, config, history rows, summary, artifacts, metrics."""

    def __init__(self, run_dir):
        self.dir = Path(run_dir)
        self.file = next(self.dir.glob("run-*.wandb"))
        self.records = records(self.file)
        # W&B's service writes the file behind the run: on a busy machine, a run that has
        # finished can still lack its records for a moment
        deadline = time.monotonic() + 30
        while not any(r.WhichOneof("record_type") == "run" for r in self.records) and time.monotonic() < deadline:
            time.sleep(0.25)
            self.records = records(self.file)
        self.run, self.config, self.history, self.summary = None, {}, [], {}
        self.artifacts, self.metrics, self.use_artifacts = [], [], []
        for r in self.records:
            kind = r.WhichOneof("record_type")
            if kind == "run":
                self.run = r.run
                _update(self.config, r.run.config.update)
            elif kind == "config":
                _update(self.config, r.config.update)
            elif kind == "history":
                self.history.append(_update({}, r.history.item))
            elif kind == "summary":
                _update(self.summary, r.summary.update)
            elif kind == "artifact":
                self.artifacts.append(r.artifact)
            elif kind == "use_artifact":
                self.use_artifacts.append(r.use_artifact)
            elif kind == "metric":
                self.metrics.append(r.metric)

    def table(self, key: str) -> dict:
        """A logged wandb.Table, read from the run's media folder: {"columns": [...], "data": [[...]]}."""
        for row in self.history:
            if key in row:
                return json.loads((self.dir / "files" / row[key]["path"]).read_text())
        raise KeyError(key)


def offline_runs(root) -> list[OfflineRun]:
    return [OfflineRun(d) for d in sorted(Path(root).rglob("offline-run-*")) if d.is_dir()]
