#!/usr/bin/env python3
"""Writes pipelines/samples/waze-curated.jsonl: generated Waze curated-file metadata records in the
seed Lambda's payload format (8 string fields), about 10% outside `waze/`, a handful malformed, and
two blank lines. Deterministic: the same file every run.

    python3 scripts/gen-waze-sample.py [COUNT] > pipelines/samples/waze-curated.jsonl
"""
import json
import random
import sys

STATES = ["MI", "OH", "WI", "IN", "IL", "MN", "PA", "NY"]
TABLES = ["alert", "jam", "irregularity"]
BUCKET = "dev-dot-sdc-curated-911061262852-us-east-1"


def record(rng: random.Random, waze: bool) -> dict:
    state, table = rng.choice(STATES), rng.choice(TABLES)
    year, month = rng.choice(["2019", "2020", "2021"]), f"{rng.randint(1, 12):02d}"
    day, hour = f"{rng.randint(1, 28):02d}", f"{rng.randint(0, 23):02d}"
    prefix = "waze" if waze else rng.choice(["cv/thea", "cv/wydot", "tmp"])
    key = (f"{prefix}/content/state={state}/table={table}/projection=redshift/"
           f"year={year}/month={month}/day={day}/hour={hour}/{table}_{rng.getrandbits(48):012x}.csv.gz")
    return {
        "state": state,
        "table-name": table,
        "num-records": str(rng.randint(1, 25000)),
        "is-historical": rng.choice(["true", "false"]),
        "year": year,
        "month": month,
        "bucket-name": BUCKET,
        "s3-key": key,
    }


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 240
    rng = random.Random(20261124)
    lines = [json.dumps(record(rng, waze=rng.random() >= 0.1), separators=(",", ":")) for _ in range(count)]
    no_key = record(rng, True)
    del no_key["s3-key"]
    no_bucket = record(rng, True)
    del no_bucket["bucket-name"]
    malformed = [
        '{"state":"MI","table-name":"alert","num-records":"12"',  # truncated JSON
        '["waze/not-an-object"]',                                   # an array
        '"waze/content/state=MI"',                                  # a string
        json.dumps(no_key, separators=(",", ":")),                  # no s3-key: the filter cannot decide
        json.dumps(no_bucket, separators=(",", ":")),               # no bucket-name: S3Key cannot be built
        "{not json at all}",
    ]
    for i, bad in enumerate(malformed):
        lines.insert(17 + i * 37, bad)
    lines.insert(60, "")
    lines.insert(121, "   ")
    sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
