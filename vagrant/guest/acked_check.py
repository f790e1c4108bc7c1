#!/usr/bin/env python3
"""Reads `interceptor audit export --format jsonl` on stdin and the numbers
acked_load.py printed (ACKED file): exits 1 naming any answered request
that has no audit record.

    acked_check.py ACKED
"""
import json
import sys
from urllib.parse import parse_qs, urlsplit

acked = {int(l) for l in open(sys.argv[1]) if l.strip().isdigit()}
audited = set()
for line in sys.stdin:
    r = json.loads(line)
    if r.get("kind") != "request":
        continue
    q = parse_qs(urlsplit(r["data"].get("path") or "").query)
    for n in q.get("pc", []):
        if n.isdigit():
            audited.add(int(n))
missing = sorted(acked - audited)
print(f"{len(acked)} answered before the cut, {len(audited)} audited, "
      f"{len(audited - acked)} audited but not seen answered, {len(missing)} answered without a record")
if missing:
    print("answered without an audit record:", missing[:20])
sys.exit(1 if missing or not acked else 0)
