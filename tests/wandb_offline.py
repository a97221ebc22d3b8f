"""Read a W&B offline run (`run-<id>.wandb`) back for tests, with the pinned wandb's protobufs.

wandb 0.31 has no Python reader and no `wandb sync --view`. The file is a 7-byte header
(":W&B", magic 0xBEE1, version 0) followed by LevelDB-log framing: 32 KiB blocks of chunks,
each chunk a 7-byte header (crc32, length: uint16 LE, type: 1 full, 2 first, 3 middle, 4 last)
and its payload; a whole payload is one serialized `wandb_internal_pb2.Record`.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HEADER = 7
BLOCK = 32 * 1024
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def payloads(data: bytes) -> list[bytes]:
    """The framed payloads of a .wandb file, in order (a torn tail is dropped)."""
    if data[:4] != b":W&B":
        raise ValueError("not a W&B transaction log (no :W&B header)")
    out, pending, pos = [], b"", HEADER
    while pos + HEADER <= len(data):
        left_in_block = BLOCK - pos % BLOCK
        if left_in_block < HEADER:  # block trailer padding
            pos += left_in_block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        if kind == 0 and length == 0:  # zero padding at the end of a block
            pos += left_in_block
            continue
        chunk = data[pos + HEADER : pos + HEADER + length]
        if len(chunk) < length:
            break
        pos += HEADER + length
        if kind == FULL:
            out.append(chunk)
        elif kind == FIRST:
            pending = chunk
        elif kind == MIDDLE:
            pending += chunk
        elif kind == LAST:
            out.append(pending + chunk)
            pending = b""
    return out


@dataclass
class OfflineRun:
    group: str = ""
    job_type: str = ""
    tags: list[str] = field(default_factory=list)
    history_steps: list[int] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, str] = field(default_factory=dict)  # define_metric name -> summary kinds
    exited: bool = False


def read_offline_run(path: Path) -> OfflineRun:
    """Parse one `run-<id>.wandb` file into what the tests check."""
    from wandb.proto import wandb_internal_pb2 as pb

    run = OfflineRun()
    for payload in payloads(Path(path).read_bytes()):
        record = pb.Record()
        record.ParseFromString(payload)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run.group, run.job_type = record.run.run_group, record.run.job_type
            run.tags = list(record.run.tags)
        elif kind == "history":
            step = record.history.step.num
            run.history_steps.append(int(step))
        elif kind == "summary":
            for item in record.summary.update:
                key = item.key or "/".join(item.nested_key)
                run.summary[key] = json.loads(item.value_json)
        elif kind == "metric":
            name = record.metric.name or record.metric.glob_name
            run.metrics[name] = str(record.metric.summary).strip()
        elif kind == "exit":
            run.exited = True
    return run
