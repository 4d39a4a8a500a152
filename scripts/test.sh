#!/usr/bin/env bash
# The project's test command (README, CI): installs the system tools the integration tests
# need, then runs formatting, lints and every test target against the real binary.
#
#   bash scripts/test.sh            # from anywhere inside the repo
#   VOXGATE_TEST_THREADS=2 bash scripts/test.sh
#
# Tests run in release mode so media pacing is realistic. The integration tests start one
# gateway per test and call it with SIPp; they mostly wait on wall-clock time, so 4 threads on
# a 2-core machine keep total time down without starving the 20 ms RTP clocks.
set -euo pipefail
cd "$(dirname "$0")/.."

# --- system packages (Debian): sipp (sip-tester), espeak-ng (TTS prompts, test speech), sox
# (audio), python3-aiosmtpd (SMTP server for the mail tests), libpocketsphinx3 +
# pocketsphinx-en-us (speech recognition, loaded at run time) --------------------------------
# chromium + nodejs/npm: the web console's browser test (tests/console.rs, Playwright).
missing=()
# The build itself: a C compiler (ring, bundled SQLite) and make (jemalloc, the allocator).
command -v cc >/dev/null 2>&1 || missing+=(gcc)
command -v make >/dev/null 2>&1 || missing+=(make)
command -v sipp >/dev/null 2>&1 || missing+=(sip-tester)
command -v espeak-ng >/dev/null 2>&1 || missing+=(espeak-ng)
command -v sox >/dev/null 2>&1 || missing+=(sox)
# Speech recognition (tests/speech.rs): the gateway loads libpocketsphinx.so.3 at run time
# (no -dev package, nothing linked at build time) and its US English model.
/sbin/ldconfig -p 2>/dev/null | grep -q 'libpocketsphinx\.so\.3 ' || missing+=(libpocketsphinx3)
[[ -d /usr/share/pocketsphinx/model/en-us/en-us ]] || missing+=(pocketsphinx-en-us)
# Security tests: nftables (SIP loss in network namespaces), iproute2 (ip netns), mount (tmpfs).
command -v nft >/dev/null 2>&1 || missing+=(nftables)
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
[[ -x /usr/bin/chromium ]] || missing+=(chromium)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
# The tests signal the gateway with /bin/kill (procps), not the shell builtin.
[[ -x /bin/kill || -x /usr/bin/kill ]] || missing+=(procps)
# The integration-step tests (tests/integrations.rs) run a real SMTP server: Debian's aiosmtpd,
# for Debian's own python3 (/usr/bin/python3, whatever python3 is first on PATH).
/usr/bin/python3 -c 'import aiosmtpd' >/dev/null 2>&1 || missing+=(python3-aiosmtpd)
# Scale-out test (tests/scale_out.rs): Kamailio in front, PostgreSQL behind (initdb/pg_ctl
# under /usr/lib/postgresql/<version>/bin, run as the postgres user via runuser).
command -v kamailio >/dev/null 2>&1 || missing+=(kamailio)
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || missing+=(postgresql)
command -v runuser >/dev/null 2>&1 || missing+=(util-linux)
# The Twilio tests run a pipecat bot (tests/ecosystem) from a venv made below.
command -v python3 >/dev/null 2>&1 || missing+=(python3)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
if ((${#missing[@]})); then
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
        echo "==> installing ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q
        apt-get install -y -q "${missing[@]}"
    else
        echo "error: missing ${missing[*]}; install as root: apt-get install ${missing[*]}" >&2
        exit 1
    fi
fi
# --- node packages for the browser test: playwright-core, pinned by the lockfile -------------
# (Playwright never downloads a browser here: it drives Debian's /usr/bin/chromium.)
# Re-installed whenever the installed version is not the lockfile's (a bumped pin, a stale or
# half-finished node_modules).
pw_version() {
    node -e 'try { console.log(require(process.argv[1]).version) } catch (e) { console.log("none") }' "$1"
}
pw_pin=$(node -p "require('./tests/console/package-lock.json').packages['node_modules/playwright-core'].version")
if [[ $(pw_version ./tests/console/node_modules/playwright-core/package.json) != "$pw_pin" ]]; then
    echo "==> npm ci (tests/console: playwright-core $pw_pin)"
    (cd tests/console && npm ci --no-audit --no-fund)
fi
if [[ $(pw_version ./tests/console/node_modules/playwright-core/package.json) != "$pw_pin" ]]; then
    echo "error: playwright-core $pw_pin did not install into tests/console/node_modules" >&2
    exit 1
fi
if [[ $(id -u) -ne 0 ]]; then
    # SIPp's play_pcap_audio (RFC 4733 DTMF in the scenarios) opens a raw socket.
    echo "warning: not root; SIPp scenarios that replay DTMF pcaps will fail" >&2
fi

# --- Python packages for the ecosystem test: pipecat, pinned, in target/ecosystem-venv ------
eco_venv=target/ecosystem-venv
eco_check='import pipecat.serializers.twilio, fastapi, uvicorn'
if ! "$eco_venv/bin/python" -c "$eco_check" >/dev/null 2>&1 \
    || ! cmp -s tests/ecosystem/requirements.txt "$eco_venv/requirements.txt"; then
    echo "==> installing pipecat into $eco_venv (tests/ecosystem/requirements.txt)"
    rm -rf "$eco_venv"
    python3 -m venv "$eco_venv"
    "$eco_venv/bin/pip" install -q --disable-pip-version-check --no-deps \
        -r tests/ecosystem/requirements.txt
    "$eco_venv/bin/python" -c "$eco_check" >/dev/null
    cp tests/ecosystem/requirements.txt "$eco_venv/requirements.txt"
fi

# --- versions -------------------------------------------------------------------------------
# First line of a tool's version output; never fails on SIGPIPE or odd exit codes
# (`sipp -v` exits 99).
first_line() { { "$@" 2>&1 || true; } | head -n1; }
echo "==> versions"
rustc --version
cargo --version
cargo fmt --version
cargo clippy --version
sipp_banner=$({ sipp -v 2>&1 || true; } | grep -m1 'SIPp v' || true)
if [[ -z $sipp_banner ]]; then
    echo "error: \`sipp -v\` printed no SIPp banner" >&2
    exit 1
fi
echo "${sipp_banner# }"
first_line espeak-ng --version
first_line sox --version
first_line /usr/bin/chromium --version
echo "node $(node --version), playwright-core $(node -p "require('./tests/console/node_modules/playwright-core/package.json').version")"
/usr/bin/python3 -c 'import aiosmtpd; print("aiosmtpd", aiosmtpd.__version__)'
first_line kamailio -v
first_line "$(compgen -G "/usr/lib/postgresql/*/bin/postgres" | sort -V | tail -n1)" --version
first_line python3 --version
{ "$eco_venv/bin/pip" show pipecat-ai 2>/dev/null || true; } | sed -n 's/^Version: /pipecat-ai /p'

# --- checks ---------------------------------------------------------------------------------
echo "==> cargo fmt --check"
cargo fmt --all -- --check

echo "==> cargo clippy"
cargo clippy --all-targets -- -D warnings

echo "==> cargo test (release)"
cargo test --release --all-targets --no-fail-fast -- --test-threads="${VOXGATE_TEST_THREADS:-4}"

echo "==> load benchmark smoke (a few calls; figures are not checked here)"
bench_out=$(mktemp -d)
# Not -B: `cargo test --all-targets` builds the loadgen example only as a test harness, so
# bench-load builds the plain binaries it runs (incremental: seconds).
bash scripts/bench-load --smoke -o "$bench_out"
rm -rf "$bench_out"

# The fuzz corpus (tests/fuzz/corpus) is replayed through every parser by `cargo test`
# (tests/fuzz_corpus.rs). Here, a short coverage-guided run of each target keeps the fuzz
# build working and tries new inputs; the 10-million-execution runs are manual
# (docs/security.md). New inputs go to a temp dir, not the committed corpus; a crash fails
# the run and leaves its input in tests/fuzz/artifacts/<target>/.
echo "==> fuzz smoke: libFuzzer, ${VOXGATE_FUZZ_SECONDS:-10} s per target"
if ! command -v cargo-fuzz >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked --version 0.13.2
fi
fuzz_work=$(mktemp -d)
for t in sip_guard sdp rtp_session bodies; do
    mkdir -p "$fuzz_work/$t"
    if ! cargo fuzz run --fuzz-dir tests/fuzz -s none -O "$t" "$fuzz_work/$t" "tests/fuzz/corpus/$t" \
        -- -max_total_time="${VOXGATE_FUZZ_SECONDS:-10}" -print_final_stats=1 >"$fuzz_work/$t.log" 2>&1; then
        tail -n 60 "$fuzz_work/$t.log" >&2
        echo "error: fuzz target $t failed (input kept in tests/fuzz/artifacts/$t/)" >&2
        exit 1
    fi
    echo "$t: $(grep -m1 -o 'number_of_executed_units: *[0-9]*' "$fuzz_work/$t.log" | tr -s ' ') in ${VOXGATE_FUZZ_SECONDS:-10} s"
done
rm -rf "$fuzz_work"

echo "==> all checks passed"
