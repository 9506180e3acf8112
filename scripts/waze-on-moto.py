"""The AWS world of pipelines/waze-persist.toml on local emulators: the one place it is defined.

Creates a Kinesis stream, the DynamoDB table keyed by CurationRecordId, the SSM parameter with the
batch id and the SQS dead-letter queue, optionally puts the lines of a JSON-lines file into the
stream, and prints the pipeline's variables as shell exports (the test suite reads the same lines).
Used by scripts/demo-aws, scripts/bench, scripts/bench-cold-start and tests/it/aws_job.

    python scripts/waze-on-moto.py ENDPOINT [--input FILE.jsonl] [--shards N]
                                   [--kinesis-endpoint URL] [--batch-id ID]
"""

import argparse
import json
import sys
import uuid

import boto3


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_argument("endpoint", help="moto's endpoint, for every service but (optionally) Kinesis")
    cli.add_argument("--input", help="a JSON-lines file whose lines are put into the stream")
    cli.add_argument("--shards", type=int, default=2)
    cli.add_argument("--kinesis-endpoint", help="another endpoint for Kinesis (kinesis-local)")
    cli.add_argument("--batch-id", help="the parameter's value (default: batch-<run id>)")
    args = cli.parse_args()

    def client(service, endpoint=args.endpoint):
        return boto3.client(service, endpoint_url=endpoint, region_name="us-east-1",
                            aws_access_key_id="testing", aws_secret_access_key="testing")

    run = uuid.uuid4().hex[:8]
    stream, table = f"waze-curated-{run}", f"curated-records-{run}"
    parameter, queue = f"/sdc/waze/latest-batch-id-{run}", f"waze-dlq-{run}"

    kinesis = client("kinesis", args.kinesis_endpoint or args.endpoint)
    kinesis.create_stream(StreamName=stream, ShardCount=args.shards)
    kinesis.get_waiter("stream_exists").wait(StreamName=stream, WaiterConfig={"Delay": 0.2})
    client("dynamodb").create_table(
        TableName=table, BillingMode="PAY_PER_REQUEST",
        KeySchema=[{"AttributeName": "CurationRecordId", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "CurationRecordId", "AttributeType": "S"}])
    client("ssm").put_parameter(Name=parameter, Value=args.batch_id or f"batch-{run}", Type="String")
    queue_url = client("sqs").create_queue(QueueName=queue)["QueueUrl"]

    lines = []
    if args.input:
        with open(args.input, "rb") as f:
            lines = [line.rstrip(b"\n") for line in f if line.strip()]
    for start in range(0, len(lines), 500):
        chunk = lines[start:start + 500]
        kinesis.put_records(StreamName=stream, Records=[
            {"Data": data, "PartitionKey": uuid.uuid4().hex} for data in chunk])

    exports = {
        "KINESIS_STREAM": stream,
        "LATEST_BATCH_ID": parameter,
        "DDB_CURATED_RECORDS_TABLE_ARN": f"arn:aws:dynamodb:us-east-1:123456789012:table/{table}",
        "DLQ_QUEUE_URL": queue_url,
    }
    for name, value in exports.items():
        print(f"export {name}={json.dumps(value)}")
    print(f"# {len(lines)} records put into {stream} ({args.shards} shards)", file=sys.stderr)


if __name__ == "__main__":
    main()
