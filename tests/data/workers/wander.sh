#!/bin/sh
# A worker that may wander: `wander.sh OUTPUT_ROOT [PATH…]` writes OUTPUT_ROOT/made.txt, then
# writes one line into each PATH in order (a PATH starting with $TMPDIR/ is taken below its
# TMPDIR). Exit 0 when all are written; 1 with one line naming the first that is not and the
# shell's reason.
out=$1
shift
echo made > "$out/made.txt" || exit 1
for p in "$@"; do
    case $p in
        '$TMPDIR'/*) p="$TMPDIR/${p#\$TMPDIR/}" ;;
    esac
    if ! err=$( (echo wandered > "$p") 2>&1 ); then
        echo "wander.sh: $err" >&2
        exit 1
    fi
done
