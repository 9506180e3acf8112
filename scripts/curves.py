"""Cost curves of the Waze job's daemon: records/s, CPU per record and peak RSS against the
stream's shard count and the records' size, on moto (kinesis-local took seconds per PutRecords of
500 records here); the sink is switched off (PERSIST_RECORDS=0), so each row measures sluice
reading, decoding and enriching, not the emulator's DynamoDB (scripts/bench measures the writes).

    python scripts/curves.py shards|sizes|backlog BINARY

Run by scripts/bench-curves, which starts the emulators. Each row is one whole `sluice run
--until-caught-up` process on a fresh stream: start-up, leases and checkpoints included.
"""

import json
import os
import subprocess
import sys
import tempfile

import boto3


def client(service: str, endpoint: str):
    return boto3.client(service, endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing")


def payloads(count: int, size: int) -> list[bytes]:
    """`count` Waze records from the sample generator, padded to about `size` bytes each."""
    lines = subprocess.run([sys.executable, "scripts/gen-waze-sample.py", str(count)], check=True,
                           capture_output=True, text=True).stdout.splitlines()
    out = []
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # the generator's malformed lines: not part of a cost curve
        if not isinstance(record, dict):
            continue
        pad = size - len(line)
        if pad > 20:
            record["padding"] = "x" * (pad - 16)
        out.append(json.dumps(record).encode())
        if len(out) == count:
            break
    return out


def stage(shards: int, records: list[bytes]) -> dict:
    """A fresh stream of `shards` shards holding `records`: the environment the job runs in."""
    moto = os.environ["SLUICE_TEST_MOTO"]
    world = subprocess.run([sys.executable, "scripts/waze-on-moto.py", moto, "--shards", str(shards)],
                           check=True, capture_output=True, text=True).stdout
    env = dict(os.environ)
    for line in world.splitlines():
        if line.startswith("export "):
            name, value = line[len("export "):].split("=", 1)
            env[name] = json.loads(value)
    kinesis = client("kinesis", moto)
    chunk, size = [], 0
    for i, data in enumerate(records):
        chunk.append({"Data": data, "PartitionKey": f"pk-{i}"})
        size += len(data)
        if len(chunk) == 500 or size > 4_000_000 or i == len(records) - 1:
            kinesis.put_records(StreamName=env["KINESIS_STREAM"], Records=chunk)
            chunk, size = [], 0
    env.update(AWS_ENDPOINT_URL=moto, AWS_REGION="us-east-1",
               AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", PERSIST_RECORDS="0")
    return env


def measure(binary: str, env: dict, expected: int, pipeline: str = "pipelines/waze-persist.toml") -> dict:
    """One whole `sluice run --until-caught-up` of `pipeline` from the stream's start."""
    dynamodb = client("dynamodb", env["SLUICE_TEST_MOTO"])
    try:  # the job's lease table holds one stream's leases, and a run starts from none
        dynamodb.delete_table(TableName="waze-persist-checkpoints")
    except dynamodb.exceptions.ResourceNotFoundException:
        pass
    with tempfile.NamedTemporaryFile() as timing:
        out = subprocess.run(["/usr/bin/time", "-f", '{"wall": %e, "user": %U, "system": %S, "rss_kb": %M}',
                              "-o", timing.name, binary, "run", pipeline,
                              "--until-caught-up", "--summary", "json", "--no-progress"],
                             env=env, check=True, capture_output=True, text=True)
        t = json.load(open(timing.name))
    summary = json.loads(out.stdout)
    n = summary["counts"]["records"]
    assert n == expected, f"read {n} of {expected}: {summary}"
    return {"records": n, "per_s": n / t["wall"], "cpu_us": (t["user"] + t["system"]) * 1e6 / n,
            "rss_mb": t["rss_kb"] / 1024}


def run(binary: str, shards: int, records: list[bytes]) -> dict:
    return measure(binary, stage(shards, records), len(records))


def print_row(label: str, r: dict) -> None:
    print(f"{label:<36} {r['records']:>8} {r['per_s']:>10,.0f} {r['cpu_us']:>8.1f} us {r['rss_mb']:>6.1f} MB",
          flush=True)


def backlog(binary: str) -> None:
    """64 shards with a backlog of 2,500 records each (160,000 in all), read with `limit = 10000`:
    every shard's first GetRecords can answer all of its backlog. Read once with the default
    budget (`max_records_in_flight = 20000`) and once with the budget out of the way."""
    records = payloads(160_000, 400)
    env = stage(64, records)
    with open("pipelines/waze-persist.toml") as f:
        text = f.read()
    unbounded = text.replace('stream = "${KINESIS_STREAM}"',
                             'stream = "${KINESIS_STREAM}"\nmax_records_in_flight = 1000000', 1)
    assert unbounded != text, "the [source] table of pipelines/waze-persist.toml moved"
    # Beside the original, so the schema and any relative path resolve as for it.
    path = "pipelines/.curves-unbounded.toml"
    with open(path, "w") as f:
        f.write(unbounded)
    try:
        print_row("64 shards backlog, budget 20,000", measure(binary, env, len(records)))
        print_row("64 shards backlog, budget 1,000,000", measure(binary, env, len(records), path))
    finally:
        os.remove(path)


def main() -> None:
    curve, binary = sys.argv[1], sys.argv[2]
    if curve == "shards":
        records = payloads(32_000, 400)
        rows = [(f"{s} shards, 400 B", s, records) for s in (1, 8, 64)]
    elif curve == "sizes":
        rows = [(f"8 shards, {label}", 8, payloads(count, size))
                for label, count, size in (("400 B", 10_000, 400), ("4 KB", 10_000, 4_000),
                                           ("100 KB", 1_000, 100_000))]
    elif curve != "backlog":
        sys.exit("curve: shards, sizes or backlog")
    print(f"{'row':<36} {'records':>8} {'records/s':>10} {'CPU/record':>11} {'peak RSS':>9}")
    if curve == "backlog":
        backlog(binary)
        return
    for label, shards, records in rows:
        print_row(label, run(binary, shards, records))


if __name__ == "__main__":
    main()
