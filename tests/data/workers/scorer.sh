#!/bin/sh
# A team's worker that cannot change, in shell: scores.csv with name,score for every staged
# input, score = the file's size modulo 100 (a whole number).
#     scorer.sh INPUT_ROOT OUTPUT_ROOT
set -eu
in=$1
out=$2
printf 'name,score\n' > "$out/scores.csv"
find "$in" -type f | LC_ALL=C sort | while read -r f; do
    size=$(wc -c < "$f")
    printf '%s,%s\n' "$(basename "$f")" "$((size % 100))" >> "$out/scores.csv"
done
