"""Cold start of the sluice binary as a Lambda function: the time from process start to its first
`GET /2018-06-01/runtime/invocation/next` (the pipeline built: config loaded, AWS clients made,
DescribeTable, GetQueueAttributes and GetParameter answered), and its peak RSS at that moment.

    python scripts/cold_start_probe.py BINARY RUNS

Run by scripts/bench-cold-start, which starts the emulator and exports the pipeline's variables.
"""

import http.server
import os
import statistics
import subprocess
import sys
import threading
import time

first_next = threading.Event()
state = {}


class RuntimeApi(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (the standard library's name)
        if self.path.endswith("/runtime/invocation/next") and not first_next.is_set():
            state["at"] = time.monotonic()
            with open(f"/proc/{state['pid']}/status") as f:
                status = dict(line.split(":", 1) for line in f if ":" in line)
            state["hwm_kb"] = int(status["VmHWM"].split()[0])
            first_next.set()
        # Hold the request: no invocation is handed out.
        time.sleep(30)

    def log_message(self, *args):
        pass


def lambda_env(port: int) -> dict:
    """The environment Lambda gives the function, with the Runtime API at `port` on loopback."""
    return dict(os.environ, AWS_LAMBDA_RUNTIME_API=f"127.0.0.1:{port}",
                AWS_LAMBDA_FUNCTION_NAME="sluice-bench", AWS_LAMBDA_FUNCTION_MEMORY_SIZE="256",
                AWS_LAMBDA_FUNCTION_VERSION="$LATEST", SLUICE_PIPELINE="pipelines/waze-persist.toml",
                SLUICE_LOG="warn")


def main() -> None:
    binary, runs = sys.argv[1], int(sys.argv[2])
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), RuntimeApi)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = lambda_env(server.server_address[1])
    times, peaks = [], []
    for _ in range(runs):
        first_next.clear()
        started = time.monotonic()
        proc = subprocess.Popen([binary], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        state["pid"] = proc.pid
        if not first_next.wait(timeout=30):
            proc.kill()
            sys.exit(f"no /next request within 30 s: {proc.stderr.read().decode()[-2000:]}")
        times.append((state["at"] - started) * 1000)
        peaks.append(state["hwm_kb"] / 1024)
        proc.kill()
        proc.wait()
    size = os.path.getsize(binary) / 1e6
    print(f"binary            {binary} ({size:.1f} MB)")
    print(f"cold start        median {statistics.median(times):.1f} ms, "
          f"min {min(times):.1f}, max {max(times):.1f} ({runs} runs, to the first /next)")
    print(f"peak RSS          median {statistics.median(peaks):.1f} MB, max {max(peaks):.1f} MB")


if __name__ == "__main__":
    main()
