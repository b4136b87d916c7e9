"""A worker that may wander: `wander.py OUTPUT_ROOT [ACTION…]` writes OUTPUT_ROOT/made.txt, then
does each ACTION in order — `write:PATH` (creates PATH holding one line), `read:PATH` (prints its
first line), `connect:HOST:PORT` (opens a TCP connection and sends "hello") — with $VARIABLES in
PATH expanded from its environment. Exit 0 when all succeed; 1 with one line naming the first
that fails and why."""

import os
import socket
import sys

out, *actions = sys.argv[1:]
with open(os.path.join(out, "made.txt"), "w") as f:
    f.write("made\n")
for action in actions:
    kind, _, arg = action.partition(":")
    arg = os.path.expandvars(arg)
    try:
        if kind == "write":
            with open(arg, "w") as f:
                f.write("wandered\n")
        elif kind == "read":
            with open(arg) as f:
                print(f.readline().strip())
        elif kind == "connect":
            host, port = arg.rsplit(":", 1)
            with socket.create_connection((host, int(port)), timeout=10) as s:
                s.sendall(b"hello")
        else:
            print(f"wander.py: unknown action {action}", file=sys.stderr)
            sys.exit(2)
    except OSError as e:
        print(f"wander.py: {kind} {arg}: {e.strerror or e}", file=sys.stderr)
        sys.exit(1)
