#!/usr/bin/env bash
# Load test: SIPp calls into a release voxgate on loopback, with recording OFF (baseline)
# and ON, and the gateway's CPU cost per call for each. See docs/benchmarks.md.
#
#   bash scripts/load.sh                         # 5 calls/s, <= 50 at once, 100 calls of 10 s
#   bash scripts/load.sh -r 10 -l 100 -m 300 -d 10 -n 2
#
#   -r RATE    new calls per second (SIPp -r)                 default 5
#   -l LIMIT   most calls at once (SIPp -l; also max_calls)    default 50
#   -m CALLS   calls per run (SIPp -m)                         default 100
#   -d HOLD_S  seconds each call lasts before SIPp's BYE      default 10
#   -n PAIRS   off/on pairs to run (alternating)               default 1
#   -B         skip `cargo build --release`
#   -k         keep the work dir (configs, logs, recordings, SIPp traces)
#
# Per run it starts target/release/voxgate with its own temp config (own ports, recordings and
# data in a temp dir, a flow that answers, plays the greeting without waiting and then holds the
# call with a long `delay`; the ON run adds `start_recording` first), drives SIPp's UAC
# tests/sipp/load_call.xml (looped speech with rtp_stream, BYE after HOLD_S), and reads:
#   - the gateway's utime+stime from /proc/<pid>/stat, before the first INVITE and after the
#     last call ended and its recording was final -> CPU ms per call and per call-second;
#   - peak RSS (VmHWM); SIPp's successful / failed calls; recordings with status "complete";
#   - RTP packets per call from the gateway's `call ended ... rtp_tx_packets= rtp_rx_packets=`
#     log lines (expect ~50 per second each way);
#   - SIPp's own CPU (the load generator's cost, same machine).
# Everything is bounded: SIPp has -m and -timeout, every wait has a deadline, and the gateway
# gets SIGTERM at the end of each run. Loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

rate=5 limit=50 calls=100 hold_s=10 pairs=1 build=1 keep=0
while getopts "r:l:m:d:n:Bkh" opt; do
    case $opt in
    r) rate=$OPTARG ;;
    l) limit=$OPTARG ;;
    m) calls=$OPTARG ;;
    d) hold_s=$OPTARG ;;
    n) pairs=$OPTARG ;;
    B) build=0 ;;
    k) keep=1 ;;
    h | *)
        sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'
        [[ $opt == h ]] && exit 0 || exit 2
        ;;
    esac
done
for v in rate limit calls hold_s pairs; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || {
        echo "load.sh: $v must be a positive integer (got '${!v}')" >&2
        exit 2
    }
done
command -v sipp >/dev/null 2>&1 || {
    echo "load.sh: sipp is required (apt-get install sip-tester)" >&2
    exit 1
}

if ((build)); then
    echo "==> cargo build --release --bin voxgate" >&2
    cargo build --release --bin voxgate >&2
fi
gw_bin="$repo/target/release/voxgate"
[[ -x $gw_bin ]] || {
    echo "load.sh: $gw_bin is missing (run without -B)" >&2
    exit 1
}

work=$(mktemp -d /tmp/voxgate-load.XXXXXX)
gw_pid="" perf_pid=""
cleanup() {
    if [[ -n $perf_pid ]] && kill -0 "$perf_pid" 2>/dev/null; then kill -INT "$perf_pid" 2>/dev/null || true; fi
    if [[ -n $gw_pid ]] && kill -0 "$gw_pid" 2>/dev/null; then kill -KILL "$gw_pid" 2>/dev/null || true; fi
    if ((keep)); then echo "load.sh: work dir kept: $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT

clk_tck=$(getconf CLK_TCK)
# perf's software counters (no hardware PMU needed) give context switches and a ns-precise
# task-clock; optional.
use_perf=0
if command -v perf >/dev/null 2>&1 && perf stat -e task-clock,context-switches true >/dev/null 2>&1; then
    use_perf=1
fi

# --- ports ----------------------------------------------------------------------------------
# Ports in use now (UDP and TCP, any address).
used_ports() { ss -Htuan | awk '{ n = split($5, a, ":"); print a[n] }' | sort -un; }
# free_block SIZE: the first port of SIZE consecutive free ports (even), in 30000-59999.
free_block() {
    local size=$1 used base p ok
    used=$(used_ports)
    for _ in $(seq 200); do
        base=$(((RANDOM % 15000) * 2 + 30000))
        ((base + size < 60000)) || continue
        ok=1
        for ((p = base; p < base + size; p++)); do
            if grep -qx "$p" <<<"$used"; then ok=0 && break; fi
        done
        ((ok)) && echo "$base" && return 0
    done
    echo "load.sh: no block of $size free ports found" >&2
    return 1
}
# One block: SIP, HTTP, SIPp signalling, SIPp control, SIPp media (+2), then the gateway's
# RTP range.
rtp_ports=$((limit * 2 + 40))
base=$(free_block $((8 + rtp_ports)))
sip_port=$base http_port=$((base + 1)) sipp_port=$((base + 2)) sipp_ctrl=$((base + 3))
sipp_media=$((base + 4))
rtp_lo=$((base + 8)) rtp_hi=$((base + 8 + rtp_ports - 1))

# --- one run --------------------------------------------------------------------------------
# utime + stime (fields 14 and 15), counted after the ")" closing the command name.
cpu_ticks() { sed 's/.*) //' "/proc/$1/stat" | awk '{ print $12 + $13 }'; }

# wait_for SECONDS COMMAND...: polls COMMAND every 0.2 s until it succeeds or time runs out.
wait_for() {
    local deadline=$((SECONDS + $1))
    shift
    until "$@"; do
        ((SECONDS < deadline)) || return 1
        sleep 0.2
    done
}

no_part_files() { ! compgen -G "$1/*.wav.part" >/dev/null; }

# run_one MODE(off|on) TAG: appends one result line (key=value ...) to $results. Runs in the
# main shell (not in $(...)), so the cleanup trap sees the gateway's pid.
run_one() {
    local mode=$1 tag=$2 dir="$work/$2"
    mkdir -p "$dir/rec" "$dir/data"
    local start_rec=""
    [[ $mode == on ]] && start_rec="    - start_recording"
    cat >"$dir/flow.yaml" <<EOF
# Load-test flow ($mode): answer, play the greeting without waiting, hold the call.
name: load_$mode
start: answer
inactivity_s: 0
prompts_dir: $repo/sip-config/prompts
dialogs:
  answer:
$start_rec
    - message: {file: greeting.wav, wait: false}
    - delay: {ms: 600000}
EOF
    cat >"$dir/gateway.toml" <<EOF
shutdown_grace_s = 5
data_dir = "$dir/data"

[sip]
listen = "127.0.0.1:$sip_port"
max_calls = $((limit + 10))

[rtp]
ports = "$rtp_lo-$rtp_hi"
inactivity_timeout_s = 30

[http]
listen = "127.0.0.1:$http_port"
token = "load-test"

[recordings]
dir = "$dir/rec"

[flow]
file = "$dir/flow.yaml"
EOF
    RUST_LOG="info,rsipstack=warn" "$gw_bin" --config "$dir/gateway.toml" \
        >/dev/null 2>"$dir/gateway.log" &
    gw_pid=$!
    if ! wait_for 15 grep -qs 'voxgate ready' "$dir/gateway.log"; then
        echo "load.sh: gateway did not start; its log:" >&2
        tail -n 20 "$dir/gateway.log" >&2
        return 1
    fi
    # Idle cost over 2 s, then the run.
    local idle0 idle1 cpu0 cpu1
    idle0=$(cpu_ticks "$gw_pid")
    sleep 2
    idle1=$(cpu_ticks "$gw_pid")
    cpu0=$idle1
    if ((use_perf)); then
        perf stat -e task-clock,context-switches -x, -o "$dir/perf.csv" -p "$gw_pid" &
        perf_pid=$!
    fi

    local sipp_timeout=$((calls / rate + hold_s + 60)) t_start t_end
    t_start=$(date +%s.%N)
    # In the foreground, so Ctrl-C reaches SIPp too; `timeout` bounds it in any case.
    (
        cd "$repo/tests/sipp"
        timeout $((sipp_timeout + 15)) sipp "127.0.0.1:$sip_port" -sf load_call.xml -s bot \
            -i 127.0.0.1 -mi 127.0.0.1 -p "$sipp_port" -cp "$sipp_ctrl" -mp "$sipp_media" \
            -r "$rate" -l "$limit" -m "$calls" -d $((hold_s * 1000)) \
            -nostdin -timeout "${sipp_timeout}s" \
            -trace_stat -stf "$dir/sipp_stat.csv" -fd 1 \
            -trace_err -error_file "$dir/sipp_err.log" >"$dir/sipp.out" 2>&1 || true
        times >"$dir/sipp_times"
    )
    t_end=$(date +%s.%N)
    if ! kill -0 "$gw_pid" 2>/dev/null; then
        echo "load.sh: the gateway exited during the run; its log:" >&2
        tail -n 20 "$dir/gateway.log" >&2
        return 1
    fi

    # Every call ended on the gateway and every recording finalized (or give up after 30 s).
    wait_for 30 bash -c "[[ \$(grep -c ' call ended reason=' '$dir/gateway.log') -ge $calls ]]" || true
    wait_for 30 no_part_files "$dir/rec" || true
    sleep 0.5
    cpu1=$(cpu_ticks "$gw_pid")
    if [[ -n $perf_pid ]]; then
        kill -INT "$perf_pid" 2>/dev/null || true
        wait "$perf_pid" 2>/dev/null || true
        perf_pid=""
    fi
    # perf -x, lines: value,unit,event,... (task-clock in msec).
    local perf_ms perf_cs
    perf_ms=$(awk -F, '$3 == "task-clock" { printf "%.0f", $1 }' "$dir/perf.csv" 2>/dev/null || true)
    perf_cs=$(awk -F, '$3 == "context-switches" { print $1 }' "$dir/perf.csv" 2>/dev/null || true)
    local hwm
    hwm=$(awk '/^VmHWM/ { print $2 }' "/proc/$gw_pid/status")
    kill -TERM "$gw_pid"
    wait_for 20 bash -c "! kill -0 $gw_pid 2>/dev/null" || kill -KILL "$gw_pid" 2>/dev/null || true
    wait "$gw_pid" 2>/dev/null || true
    gw_pid=""

    # SIPp's counts: last row of its stat CSV, columns found by name.
    local ok failed
    read -r ok failed < <(awk -F';' '
        NR == 1 { for (i = 1; i <= NF; i++) { if ($i == "SuccessfulCall(C)") s = i; if ($i == "FailedCall(C)") f = i } next }
        { last_s = $s; last_f = $f }
        END { print (last_s == "" ? 0 : last_s), (last_f == "" ? 0 : last_f) }' "$dir/sipp_stat.csv" 2>/dev/null || echo "0 0")
    # SIPp's CPU: `times` second line = children's user and system time (e.g. 0m1.230s 0m0.410s).
    local sipp_cpu_s
    sipp_cpu_s=$(awk 'NR == 2 { t = 0; for (i = 1; i <= 2; i++) { split($i, a, "m"); sub("s", "", a[2]); t += a[1] * 60 + a[2] } print t }' "$dir/sipp_times")
    local recs_complete recs_total
    recs_total=$(find "$dir/rec" -name '*.json' | wc -l)
    recs_complete=$({ find "$dir/rec" -name '*.json' -exec grep -l '"status": *"complete"' {} + || true; } | wc -l)

    # Audio the recorder lost (writer queue full) or dropped (ticks ahead of wall time).
    local rec_lost
    rec_lost=$(find "$dir/rec" -name '*.json' -exec cat {} + |
        awk -F'[:,]' '/"(overflow|dropped)_frames"/ { n += $2 } END { print n + 0 }')
    local warns errors
    warns=$(grep -c ' WARN ' "$dir/gateway.log" || true)
    errors=$(grep -c ' ERROR ' "$dir/gateway.log" || true)

    # Per-call RTP counts and media time from the `call ended` lines.
    local rtp
    rtp=$(awk '/ call ended reason=/ {
            n++
            for (i = 1; i <= NF; i++) {
                split($i, kv, "=")
                if (kv[1] == "rtp_tx_packets") tx += kv[2]
                if (kv[1] == "rtp_rx_packets") rx += kv[2]
                if (kv[1] == "media_ms") ms += kv[2]
                if (kv[1] == "reason" && kv[2] != "caller_hangup") other++
            }
        }
        END { printf "ended=%d not_caller_bye=%d tx=%d rx=%d media_ms=%d", n, other, tx, rx, ms }' "$dir/gateway.log")

    local line
    line="mode=$mode tag=$tag $rtp ok=$ok failed=$failed cpu_ticks=$((cpu1 - cpu0)) idle_ticks=$((idle1 - idle0)) perf_ms=${perf_ms:-NA} ctx_switches=${perf_cs:-NA} hwm_kb=$hwm sipp_cpu_s=$sipp_cpu_s recs_complete=$recs_complete recs_total=$recs_total rec_lost_frames=$rec_lost warns=$warns errors=$errors wall_s=$(awk -v a="$t_start" -v b="$t_end" 'BEGIN { printf "%.1f", b - a }')"
    echo "    $line" >&2
    echo "$line" >>"$results"
}

# --- runs -----------------------------------------------------------------------------------
{
    echo "==> voxgate load test: $(nproc) CPU(s), $(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)"
    echo "    SIPp: -r $rate -l $limit -m $calls, calls of ${hold_s} s; ports $base-$rtp_hi; work dir $work"
} >&2
results="$work/results.txt"
: >"$results"
for ((p = 1; p <= pairs; p++)); do
    for mode in off on; do
        echo "==> run $p, recording $mode" >&2
        run_one "$mode" "$mode-$p"
    done
done

# --- report ---------------------------------------------------------------------------------
awk -v tck="$clk_tck" -v rate="$rate" -v limit="$limit" -v calls="$calls" -v hold="$hold_s" '
    function ratio(a, b) { return (b > 0 ? sprintf("%.2f", a / b) : "n/a") }
    {
        delete v
        for (i = 1; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
        m = v["mode"]; runs[m]++
        ended = (v["ended"] > 0 ? v["ended"] : 1)
        call_s = v["media_ms"] / 1000
        cpu_ms = v["cpu_ticks"] * 1000 / tck
        has_perf = (v["perf_ms"] != "NA" && v["perf_ms"] != "")
        perf_call = (has_perf ? sprintf("%.2f", v["perf_ms"] / ended) : "n/a")
        cs_per_cs = (has_perf && call_s > 0 ? sprintf("%.0f", v["ctx_switches"] / call_s) : "n/a")
        cost = cost sprintf("| %s | %.0f | %.2f | %.3f | %s | %s | %.1f | %.2f | %.0f |\n",
            v["tag"], cpu_ms, cpu_ms / ended, (call_s > 0 ? cpu_ms / call_s : 0), perf_call,
            cs_per_cs, v["hwm_kb"] / 1024, v["sipp_cpu_s"] * 1000 / ended,
            v["idle_ticks"] * 1000 / tck / 2)
        check = check sprintf("| %s | %d / %d | %d | %d | %.2f | %.1f / %.1f | %.1f / %.1f | %d / %d | %d | %d / %d | %.1f |\n",
            v["tag"], v["ok"], v["failed"], v["ended"], v["not_caller_bye"], call_s / ended,
            v["tx"] / ended, v["rx"] / ended,
            (call_s > 0 ? v["tx"] / call_s : 0), (call_s > 0 ? v["rx"] / call_s : 0),
            v["recs_complete"], v["recs_total"], v["rec_lost_frames"], v["warns"], v["errors"], v["wall_s"])
        s_call[m] += cpu_ms / ended
        s_cs[m] += (call_s > 0 ? cpu_ms / call_s : 0)
        s_hwm[m] += v["hwm_kb"] / 1024
        if (has_perf) {
            n_perf[m]++
            s_perf[m] += v["perf_ms"] / ended
            s_ctx[m] += (call_s > 0 ? v["ctx_switches"] / call_s : 0)
        }
    }
    END {
        printf "\nSIPp -r %s -l %s -m %s, calls of %s s, loopback. CPU = gateway utime+stime from /proc (%s Hz ticks);\n", rate, limit, calls, hold, tck
        print "perf task-clock and context switches from `perf stat -p` over the same window.\n"
        print "| run | gateway CPU ms | CPU ms / call | CPU ms / call-second | perf task-clock ms / call | context switches / call-second | peak RSS MiB | SIPp CPU ms / call | idle CPU ms/s |"
        print "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
        printf "%s", cost
        print ""
        print "| run | SIPp ok / failed | calls ended | ended not by caller BYE | media s / call | RTP tx / rx per call | RTP tx / rx per s | recordings complete / total | recorder overflow + dropped frames | gateway WARN / ERROR lines | SIPp wall s |"
        print "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        printf "%s", check
        if (runs["off"] > 0 && runs["on"] > 0) {
            print ""
            print "| recording on / off (mean of runs) | off | on | on / off |"
            print "|---|---:|---:|---:|"
            a = s_call["off"] / runs["off"]; b = s_call["on"] / runs["on"]
            printf "| CPU ms / call | %.2f | %.2f | %s |\n", a, b, ratio(b, a)
            a = s_cs["off"] / runs["off"]; b = s_cs["on"] / runs["on"]
            printf "| CPU ms / call-second | %.3f | %.3f | %s |\n", a, b, ratio(b, a)
            if (n_perf["off"] > 0 && n_perf["on"] > 0) {
                a = s_perf["off"] / n_perf["off"]; b = s_perf["on"] / n_perf["on"]
                printf "| perf task-clock ms / call | %.2f | %.2f | %s |\n", a, b, ratio(b, a)
                a = s_ctx["off"] / n_perf["off"]; b = s_ctx["on"] / n_perf["on"]
                printf "| context switches / call-second | %.0f | %.0f | %s |\n", a, b, ratio(b, a)
            }
            a = s_hwm["off"] / runs["off"]; b = s_hwm["on"] / runs["on"]
            printf "| peak RSS MiB | %.1f | %.1f | %s |\n", a, b, ratio(b, a)
        }
    }' "$results"
