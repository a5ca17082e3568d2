#!/usr/bin/env bash
# The project's test command: installs what the tests need, checks format
# and lints, builds, and runs the whole suite. Every broker process a test
# starts is killed by the test itself; the trap below is a last resort.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

fuzz_build=""
cleanup() {
    pkill -f "$ROOT/target/debug/emqx-rs" 2>/dev/null || true
    if [ -n "$fuzz_build" ]; then kill -- "-$fuzz_build" 2>/dev/null || true; fi
}
trap cleanup EXIT

SUDO=""
if [ "$(id -u)" != "0" ] && command -v sudo >/dev/null; then SUDO=sudo; fi

need_apt=()
command -v mosquitto_pub >/dev/null || need_apt+=(mosquitto-clients)
[ -x /usr/sbin/dnsmasq ] || [ -x /usr/bin/dnsmasq ] || need_apt+=(dnsmasq-base)
command -v ss >/dev/null || need_apt+=(iproute2)
[ -x /usr/bin/etcd ] || need_apt+=(etcd-server)
command -v openssl >/dev/null || need_apt+=(openssl)
[ -x /usr/sbin/iptables ] || need_apt+=(iptables)
[ -x /usr/sbin/haproxy ] || need_apt+=(haproxy)
command -v tcpdump >/dev/null || need_apt+=(tcpdump)
command -v curl >/dev/null || need_apt+=(curl)
{ [ -x /usr/bin/prometheus ] && [ -x /usr/bin/promtool ]; } || need_apt+=(prometheus)
command -v systemd-analyze >/dev/null || need_apt+=(systemd)
command -v node >/dev/null || need_apt+=(nodejs)
command -v npm >/dev/null || need_apt+=(npm)
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
command -v kubectl >/dev/null || need_apt+=(kubernetes-client)
if [ ${#need_apt[@]} -gt 0 ]; then
    echo "== installing ${need_apt[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
if ! python3 -c 'import paho.mqtt, websockets, aioquic, bcrypt, jwt, cryptography, openapi_spec_validator, kubernetes_validate, yaml' 2>/dev/null; then
    echo "== installing paho-mqtt, websockets, aioquic, bcrypt, PyJWT, openapi-spec-validator and kubernetes-validate"
    python3 -m pip install -q 'paho-mqtt>=2,<3' 'websockets>=13,<16' 'aioquic>=1.2,<2' 'bcrypt>=4,<6' 'pyjwt[crypto]>=2.8,<3' 'openapi-spec-validator>=0.7,<0.8' 'kubernetes-validate>=1.34,<2' || echo "warning: paho-mqtt, websockets, aioquic, bcrypt, PyJWT, openapi-spec-validator or kubernetes-validate could not be installed; their tests will fail"
fi

if [ ! -d tests/dashboard/node_modules/playwright-core ]; then
    echo "== installing playwright-core (drives Chromium through the dashboard)"
    (cd tests/dashboard && npm ci --no-audit --no-fund --loglevel=error) || echo "warning: playwright-core could not be installed; the dashboard test will fail"
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "== cargo build"
cargo build --workspace --all-targets
echo "== codec benchmark runs once (test mode, debug build)"
cargo test -p emqx-mqtt --bench codec >/dev/null
# The fuzz targets (a release build with coverage instrumentation,
# several minutes of CPU) build while the tests run, which mostly wait on
# sockets and timers: in a session of their own, on one job, at the
# lowest CPU and I/O priority, so the tests keep the processor and the
# disk. Their run below finds them built.
echo "== building the fuzz targets in the background (one job, lowest priority)"
prio=(nice -n 19)
command -v ionice >/dev/null && prio+=(ionice -c 3)
setsid bash -c 'FUZZ_BUILD_ONLY=1 CARGO_BUILD_JOBS=1 "$@" scripts/fuzz.sh >target/fuzz-build.txt 2>&1' _ "${prio[@]}" &
fuzz_build=$!
echo "== tests"
set +e
# The replicated storage's sims: two schedules each here (3 by default;
# DS_SIM_SEEDS=N for more, docs/durability.md).
export DS_SIM_SEEDS="${DS_SIM_SEEDS:-2}"
cargo test --workspace --no-fail-fast -- --test-threads="${TEST_THREADS:-4}" 2>&1 | tee target/test-output.txt
status=${PIPESTATUS[0]}
# The paho-mqtt tests (sockets, one broker at a time) run beside the
# fuzz targets (one process on one core); their output follows.
echo "== paho-mqtt interoperability tests, beside the fuzz targets"
python3 -m unittest discover -s tests/paho -v >target/paho-output.txt 2>&1 &
paho=$!
echo "== fuzz targets, ${FUZZ_SECONDS:-6} s each"
wait "$fuzz_build"
echo "(background build: exit $?, log in target/fuzz-build.txt)"
fuzz_build=""
scripts/fuzz.sh "${FUZZ_SECONDS:-6}" 2>&1 | tee target/fuzz-output.txt
fstatus=${PIPESTATUS[0]}
wait "$paho"
pstatus=$?
echo "== paho-mqtt interoperability tests (their output)"
cat target/paho-output.txt
echo "== fault suite: one short seed (docs/faults.md)"
rm -rf target/faults
python3 scripts/faults.py --nodes 3 --seed "${FAULTS_SEED:-1}" --faults partition,pause,slow \
    --time "${FAULTS_TIME:-40}" --dir target/faults --ds 4/3/1 2>&1 | tee target/faults-output.txt
qstatus=${PIPESTATUS[0]}
echo "== fault suite: 3 cores and a replicant, one short seed"
rm -rf target/faults-replicant
python3 scripts/faults.py --nodes 4 --replicants 1 --seed "${FAULTS_SEED_REPLICANT:-2}" \
    --faults partition,isolate,pause,slow --time "${FAULTS_TIME:-40}" --dir target/faults-replicant --ds 4/3/1 \
    2>&1 | tee -a target/faults-output.txt
[ "${PIPESTATUS[0]}" = 0 ] || qstatus=1
# Counting must not trip pipefail when a pattern has no match.
count() { grep -Eo "$1" "$2" | grep -Eo '[0-9]+' | awk '{s+=$1} END {print s+0}' || true; }
passed=$(grep -Eo '^test result: [A-Za-z]+\. [0-9]+ passed' target/test-output.txt | awk '{s+=$4} END {print s+0}' || true)
# Only the harness's own summary lines: a test's message may say "seed 2 failed".
failed=$(grep -Eo '^test result: [A-Za-z]+\. [0-9]+ passed; [0-9]+ failed' target/test-output.txt | awk '{s+=$6} END {print s+0}' || true)
# A test binary that died prints no summary.
if [ "$status" != 0 ] && [ "${failed:-0}" = 0 ]; then failed=1; fi
pran=$(count '^Ran [0-9]+ test' target/paho-output.txt)
pfail=$(count '^FAILED \((failures|errors)=[0-9]+(, (failures|errors)=[0-9]+)?' target/paho-output.txt)
fpass=$(grep -Ec '^fuzz [a-z_0-9]+: ok' target/fuzz-output.txt || true)
ffail=$(grep -Ec '^fuzz [a-z_0-9]+: FAILED' target/fuzz-output.txt || true)
qpass=$(grep -Ec '^faults: PASS' target/faults-output.txt || true)
qfail=$(grep -Ec '^faults: FAIL' target/faults-output.txt || true)
passed=$(( ${passed:-0} + ${pran:-0} - ${pfail:-0} + ${fpass:-0} + ${qpass:-0} ))
failed=$(( ${failed:-0} + ${pfail:-0} + ${ffail:-0} + ${qfail:-0} ))
if [ "$pstatus" != 0 ] && [ "${pfail:-0}" = 0 ]; then failed=$((failed + 1)); fi
if [ "$fstatus" != 0 ] && [ "${ffail:-0}" = 0 ]; then failed=$((failed + 1)); fi
if [ "$qstatus" != 0 ] && [ "${qfail:-0}" = 0 ]; then failed=$((failed + 1)); fi
echo "$passed passed, $failed failed"
if [ "$status" != 0 ] || [ "$pstatus" != 0 ] || [ "$fstatus" != 0 ] || [ "$qstatus" != 0 ]; then exit 1; fi
exit 0
