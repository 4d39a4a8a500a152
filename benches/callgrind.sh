#!/usr/bin/env bash
# Instruction counts for the media bench cases (benches/media.rs), with valgrind's callgrind.
#
# Timings on a shared VM drift; instruction counts do not. For every case this runs the bench
# binary twice under callgrind, `--count CASE N1` and `--count CASE N2`, and reports
# (Ir(N2) - Ir(N1)) / (N2 - N1): the set-up cost cancels out, what is left is one op. The
# memcpy baseline of the same size is counted the same way, so the ratio column is comparable
# with the timed table of `cargo bench --bench media`.
#
#   bash benches/callgrind.sh                # every case
#   bash benches/callgrind.sh rtp sdp        # cases whose name contains a filter
#   N1=500 N2=1500 bash benches/callgrind.sh
#
# Needs valgrind (apt-get install valgrind). Takes about a minute on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."

N1="${N1:-1000}"
N2="${N2:-3000}"
command -v valgrind >/dev/null 2>&1 || {
    echo "callgrind.sh: valgrind is required (apt-get install valgrind)" >&2
    exit 1
}
if ((N2 <= N1)); then
    echo "callgrind.sh: N2 ($N2) must be greater than N1 ($N1)" >&2
    exit 1
fi

bin=$(cargo bench --bench media --no-run 2>&1 | sed -n 's/.*Executable .*(\(.*\)).*/\1/p' | tail -n1)
if [[ -z $bin || ! -x $bin ]]; then
    echo "callgrind.sh: could not find the media bench executable" >&2
    exit 1
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# ir NAME N: instructions executed by `bin --count NAME N` (whole process).
ir() {
    local log="$work/log"
    valgrind --tool=callgrind --callgrind-out-file="$work/cg.out" "$bin" --count "$1" "$2" \
        >/dev/null 2>"$log" || {
        echo "callgrind.sh: valgrind run of $1 failed:" >&2
        cat "$log" >&2
        exit 1
    }
    sed -n 's/.*Collected : \([0-9]*\).*/\1/p' "$log" | tail -n1
}

# per_op NAME: instructions per op, from the two runs.
per_op() {
    local a b
    a=$(ir "$1" "$N1")
    b=$(ir "$1" "$N2")
    echo $(((b - a) / (N2 - N1)))
}

declare -A base_cache=()
echo "# voxgate media bench, callgrind instruction counts (Ir per op; N1=$N1, N2=$N2)"
echo
echo "| case | Ir/op | memcpy baseline | baseline Ir/op | ratio |"
echo "|---|---:|---:|---:|---:|"
while read -r name bytes; do
    if (($# > 0)); then
        keep=0
        for f in "$@"; do [[ $name == *"$f"* ]] && keep=1; done
        ((keep)) || continue
    fi
    case_ir=$(per_op "$name")
    if [[ -z ${base_cache[$bytes]:-} ]]; then
        base_cache[$bytes]=$(per_op "memcpy/$bytes")
    fi
    base_ir=${base_cache[$bytes]}
    ratio=$(awk -v c="$case_ir" -v b="$base_ir" 'BEGIN { if (b > 0) printf "%.1f", c / b; else print "n/a" }')
    echo "| $name | $case_ir | $bytes B | $base_ir | $ratio |"
done < <("$bin" --list)
