#!/bin/sh
# A worker reading a folder per input: $1/<name>/image.<ext>, $1/<name>/parent.png and
# $1/<name>/meta.json naming that parent; writes $2/folders.csv (file, key, value): the
# folder's image path without extension, "parent_bytes", the parent's size. Exits 2 when a
# folder lacks one of the three.
set -eu
in=$1
out=$2
printf 'file,key,value\n' > "$out/folders.csv"
for d in "$in"/*/; do
    name=$(basename "$d")
    set -- "$d"image.*
    [ -f "$1" ] || { echo "$name: no image" >&2; exit 2; }
    [ -f "$d/parent.png" ] || { echo "$name: no parent.png" >&2; exit 2; }
    grep -q "\"$name/parent.png\"" "$d/meta.json" || { echo "$name: meta.json does not name its parent" >&2; exit 2; }
    printf '%s/image,parent_bytes,%s\n' "$name" "$(wc -c < "$d/parent.png" | tr -d ' ')" >> "$out/folders.csv"
done
