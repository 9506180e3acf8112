# Local AWS emulators for the tests; sourced by scripts/test (and scripts/bench).
#
#   start_moto    installs moto's server into .venv (once; reused after), starts it on a free
#                 loopback port and exports SLUICE_TEST_MOTO=http://127.0.0.1:PORT; with
#                 MOTO_KEEPALIVE=1, moto's app is served by waitress, which keeps connections
#                 alive as AWS does (scripts/moto-keepalive.py; for benchmarks)
#   start_kinesis_local
#                 installs the npm package kinesis-local (a build of kinesis-mock) into
#                 .venv/npm (once), starts it and exports SLUICE_TEST_KINESIS_LOCAL; it behaves
#                 like Kinesis where moto does not (closed shards end), so resharding tests use it
#   waze_world [ARGS]
#                 creates the Waze job's stream, table, parameter and queue on moto
#                 (scripts/waze-on-moto.py ARGS) and exports the pipeline's variables and the
#                 emulator's endpoint, region and test credentials for sluice
#   stop_emulators
#
# Nothing here needs AWS credentials or a Docker engine.

MOTO_VERSION=5.2.5
KINESIS_LOCAL_VERSION=0.6.2
EMULATOR_PIDS=()

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Waits until URL answers, or fails after about 30 seconds naming LOG.
wait_for() {
    local url=$1 log=$2
    for _ in $(seq 1 300); do
        if curl -fsS -o /dev/null "$url" 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "error: the emulator at $url did not start; its log ($log):" >&2
    tail -20 "$log" >&2
    return 1
}

install_moto() {
    local venv=.venv
    # No `grep -q`: it would stop reading early, and pip's SIGPIPE fail the pipeline.
    if [ -x "$venv/bin/moto_server" ] && "$venv/bin/pip" show moto 2>/dev/null | grep -x "Version: $MOTO_VERSION" > /dev/null; then
        return 0
    fi
    echo "== installing moto[server]==$MOTO_VERSION into $venv (once)"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "moto[server]==$MOTO_VERSION"
}

start_moto() {
    install_moto
    local port log
    port=$(free_port)
    log=target/emulators/moto.log
    mkdir -p target/emulators
    if [ "${MOTO_KEEPALIVE:-0}" = 1 ]; then
        .venv/bin/pip install --quiet --disable-pip-version-check waitress==3.0.2
        .venv/bin/python scripts/moto-keepalive.py "$port" > "$log" 2>&1 &
    else
        .venv/bin/moto_server -H 127.0.0.1 -p "$port" > "$log" 2>&1 &
    fi
    EMULATOR_PIDS+=("$!")
    wait_for "http://127.0.0.1:$port/moto-api/" "$log"
    export SLUICE_TEST_MOTO="http://127.0.0.1:$port"
    echo "== moto $MOTO_VERSION at $SLUICE_TEST_MOTO (log: $log)"
}

start_kinesis_local() {
    local dir=.venv/npm
    local pkg=$dir/node_modules/kinesis-local
    if ! grep -qs "\"version\" : \"$KINESIS_LOCAL_VERSION\"" "$pkg/package.json"; then
        echo "== installing kinesis-local@$KINESIS_LOCAL_VERSION into $dir (once)"
        mkdir -p "$dir"
        (cd "$dir" && npm install --no-audit --no-fund --silent "kinesis-local@$KINESIS_LOCAL_VERSION")
    fi
    local port tls_port log
    port=$(free_port)
    tls_port=$(free_port)
    log=$PWD/target/emulators/kinesis-local.log
    mkdir -p target/emulators
    # It reads server.json from its working directory.
    # SHARD_LIMIT: the account-wide default (50) runs out across many test streams.
    (cd "$pkg" && KINESIS_MOCK_PLAIN_PORT=$port KINESIS_MOCK_TLS_PORT=$tls_port SHARD_LIMIT=2000 \
        exec node main.js > "$log" 2>&1) &
    EMULATOR_PIDS+=("$!")
    wait_for "http://127.0.0.1:$port/healthcheck" "$log"
    export SLUICE_TEST_KINESIS_LOCAL="http://127.0.0.1:$port"
    echo "== kinesis-local $KINESIS_LOCAL_VERSION at $SLUICE_TEST_KINESIS_LOCAL (log: $log)"
}

# A Python package into .venv at a pinned version (once; reused after).
install_into_venv() {
    local package=$1 version=$2
    install_moto
    if ! .venv/bin/pip show "$package" 2>/dev/null | grep -x "Version: $version" > /dev/null; then
        echo "== installing $package==$version into .venv (once)"
        .venv/bin/pip install --quiet --disable-pip-version-check "$package==$version"
    fi
}

# kcl-rs, a KCL implementation with Python bindings, plays a Java KCL worker in the tests.
install_kcl_rs() {
    install_into_venv kcl-rs 0.1.4
    export SLUICE_TEST_KCL_PYTHON=$PWD/.venv/bin/python
}

# aws-kinesis-agg, AWS's KPL aggregation library for Python, makes the tests' aggregated records
# (an encoder independent of sluice's decoder).
install_kpl_aggregation() {
    install_into_venv aws-kinesis-agg 1.2.3
    export SLUICE_TEST_KPL_PYTHON=$PWD/.venv/bin/python
}

# cfn-lint checks deploy/template.yaml and deploy/fleet.yaml in the tests.
install_cfn_lint() {
    install_into_venv cfn-lint 1.58.0
    export SLUICE_TEST_CFN_LINT=$PWD/.venv/bin/cfn-lint
}

waze_world() {
    eval "$(.venv/bin/python scripts/waze-on-moto.py "$SLUICE_TEST_MOTO" "$@")"
    export AWS_ENDPOINT_URL=$SLUICE_TEST_MOTO AWS_REGION=us-east-1
    export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_EC2_METADATA_DISABLED=true
}

stop_emulators() {
    local pid
    for pid in "${EMULATOR_PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${EMULATOR_PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    EMULATOR_PIDS=()
}
