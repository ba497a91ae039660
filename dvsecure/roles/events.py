"""Structured logs of the long-running roles: one JSON object per line on stderr
(time, role, event, fields), so an operator's log shipper can parse them."""
from __future__ import annotations

import json
import sys
from datetime import datetime, timezone


def event(role: str, name: str, **fields) -> None:
    record = {"time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"), "role": role, "event": name,
              **fields}
    print(json.dumps(record, default=str), file=sys.stderr, flush=True)
