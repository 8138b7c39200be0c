#!/bin/sh
# bench/parser/run.sh: callgrind instructions per parse of the HTTP/1.1 head parser (gcc -O2).
# Usage: bench/parser/run.sh [N]   (from anywhere; needs gcc and valgrind)
set -e
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
n=${1:-10000}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
gcc -std=c17 -D_GNU_SOURCE -O2 -I"$root/include" -o "$tmp/bench" "$here/bench.c" \
    "$root/lib/http/h1-parse.c"
ir() {
    valgrind --tool=callgrind --callgrind-out-file="$tmp/cg.out" "$tmp/bench" "$1" "$2" \
        >/dev/null 2>"$tmp/log"
    sed -n 's/^summary: //p' "$tmp/cg.out"
}
for kind in req resp; do
    "$tmp/bench" 1 "$kind"
    a=$(ir 0 "$kind")
    b=$(ir "$n" "$kind")
    echo "$kind: $(( (b - a) / n )) instructions per parse"
done
