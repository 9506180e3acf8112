"""Sets up the AWS resources of pipelines/waze-persist.toml on a local emulator and fills the stream.

Used by scripts/demo-aws (and scripts/bench): creates a Kinesis stream, the DynamoDB table keyed by
CurationRecordId, the SSM parameter with the batch id and the SQS dead-letter queue, puts the lines
of a JSON-lines file into the stream, and prints the seed's environment variables as shell exports.

    python scripts/waze-on-moto.py ENDPOINT INPUT.jsonl [SHARDS]
"""

import json
import sys
import uuid

import boto3


def main() -> None:
    endpoint, path = sys.argv[1], sys.argv[2]
    shards = int(sys.argv[3]) if len(sys.argv) > 3 else 2
    args = dict(endpoint_url=endpoint, region_name="us-east-1",
                aws_access_key_id="testing", aws_secret_access_key="testing")
    run = uuid.uuid4().hex[:8]
    stream, table = f"waze-curated-{run}", f"curated-records-{run}"
    parameter, queue = f"/sdc/waze/latest-batch-id-{run}", f"waze-dlq-{run}"

    kinesis = boto3.client("kinesis", **args)
    kinesis.create_stream(StreamName=stream, ShardCount=shards)
    kinesis.get_waiter("stream_exists").wait(StreamName=stream, WaiterConfig={"Delay": 0.2})
    boto3.client("dynamodb", **args).create_table(
        TableName=table, BillingMode="PAY_PER_REQUEST",
        KeySchema=[{"AttributeName": "CurationRecordId", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "CurationRecordId", "AttributeType": "S"}])
    boto3.client("ssm", **args).put_parameter(Name=parameter, Value=f"batch-{run}", Type="String")
    queue_url = boto3.client("sqs", **args).create_queue(QueueName=queue)["QueueUrl"]

    with open(path, "rb") as f:
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
    print(f"# {len(lines)} records put into {stream} ({shards} shards)", file=sys.stderr)


if __name__ == "__main__":
    main()
