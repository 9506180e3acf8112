"""One Lambda invocation of the sluice binary with an N-record Kinesis event of the Waze job: the
event's size, the invocation's duration (from handing the event out to the response), the
process's peak RSS when it answered, and the response's batch item failures.

    python scripts/lambda_invoke_probe.py BINARY RECORDS [RUNS]

Run by scripts/bench-lambda, which starts the emulator and exports the pipeline's variables. The
payloads are scripts/gen-waze-sample.py's, in one shard, as a Kinesis event source mapping
delivers them.
"""

import base64
import http.server
import json
import os
import statistics
import subprocess
import sys
import threading
import time

from cold_start_probe import lambda_env

state = {}
answered = threading.Event()


def event(records: int) -> bytes:
    lines = subprocess.run([sys.executable, "scripts/gen-waze-sample.py", str(records)],
                           check=True, capture_output=True, text=True).stdout.splitlines()
    stream = os.environ["KINESIS_STREAM"]
    now = time.time()
    out = []
    for i, line in enumerate(lines[:records]):
        seq = f"49590338271490256608559692538361571095921575989136{i:08d}"
        out.append({
            "kinesis": {"kinesisSchemaVersion": "1.0", "partitionKey": f"pk-{i}", "sequenceNumber": seq,
                        "data": base64.b64encode(line.encode()).decode(),
                        "approximateArrivalTimestamp": now},
            "eventSource": "aws:kinesis", "eventVersion": "1.0",
            "eventID": f"shardId-000000000000:{seq}", "eventName": "aws:kinesis:record",
            "invokeIdentityArn": "arn:aws:iam::123456789012:role/sluice", "awsRegion": "us-east-1",
            "eventSourceARN": f"arn:aws:kinesis:us-east-1:123456789012:stream/{stream}",
        })
    return json.dumps({"Records": out}).encode()


class RuntimeApi(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):  # noqa: N802 (the standard library's name)
        if state.get("served"):
            time.sleep(60)  # no second invocation
            return
        state["served"] = True
        body = state["event"]
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Lambda-Runtime-Aws-Request-Id", "req-1")
        self.send_header("Lambda-Runtime-Deadline-Ms", str(int((time.time() + 300) * 1000)))
        self.send_header("Lambda-Runtime-Invoked-Function-Arn",
                         "arn:aws:lambda:us-east-1:123456789012:function:sluice-bench")
        self.end_headers()
        state["sent_at"] = time.monotonic()
        self.wfile.write(body)

    def do_POST(self):  # noqa: N802
        length = int(self.headers.get("Content-Length", 0))
        body = self.rfile.read(length)
        if "/response" in self.path:
            state["answered_at"] = time.monotonic()
            with open(f"/proc/{state['pid']}/status") as f:
                status = dict(line.split(":", 1) for line in f if ":" in line)
            state["hwm_kb"] = int(status["VmHWM"].split()[0])
            state["response"] = json.loads(body or b"{}")
            answered.set()
        else:
            state["error"] = body.decode(errors="replace")
            answered.set()
        self.send_response(202)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def main() -> None:
    binary, records = sys.argv[1], int(sys.argv[2])
    runs = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    state["event"] = event(records)
    durations, peaks = [], []
    for _ in range(runs):
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), RuntimeApi)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        env = lambda_env(server.server_address[1])
        answered.clear()
        state.pop("served", None)
        proc = subprocess.Popen([binary], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        state["pid"] = proc.pid
        ok = answered.wait(timeout=300)
        proc.kill()
        proc.wait()
        server.shutdown()
        if not ok or "error" in state:
            sys.exit(f"no response: {state.get('error', '')} {proc.stderr.read().decode()[-2000:]}")
        durations.append((state["answered_at"] - state["sent_at"]) * 1000)
        peaks.append(state["hwm_kb"] / 1024)
    failures = len(state["response"].get("batchItemFailures", []))
    print(f"event             {records} records, {len(state['event']) / 1e6:.2f} MB")
    print(f"invocation        median {statistics.median(durations):.0f} ms "
          f"(min {min(durations):.0f}, max {max(durations):.0f}; {runs} runs, event handed out to response)")
    print(f"peak RSS          median {statistics.median(peaks):.1f} MB, max {max(peaks):.1f} MB")
    print(f"batch failures    {failures}")


if __name__ == "__main__":
    main()
