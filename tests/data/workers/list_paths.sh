#!/bin/sh
# A worker reading a plain list of its inputs: $1/paths.txt, one path (relative to the input
# root $1) a line; writes $2/listed.csv (file, key, value): each path without its extension,
# "listed", its size in bytes. Exits 2 when a listed file is missing.
set -eu
in=$1
out=$2
printf 'file,key,value\n' > "$out/listed.csv"
while IFS= read -r p; do
    [ -f "$in/$p" ] || { echo "$p: listed but not staged" >&2; exit 2; }
    size=$(wc -c < "$in/$p" | tr -d ' ')
    printf '%s,listed,%s\n' "${p%.*}" "$size" >> "$out/listed.csv"
done < "$in/paths.txt"
