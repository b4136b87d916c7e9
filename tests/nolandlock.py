"""`python tests/nolandlock.py ENOSYS|EOPNOTSUPP|NOSECCOMP -- COMMAND …`: run COMMAND on a kernel
that, for it and every process it starts, answers Landlock's calls as a kernel without Landlock
does — ENOSYS (built without it) or EOPNOTSUPP (built with it, not enabled at boot) — or, with
NOSECCOMP, has Landlock but installs no further seccomp filter, as a kernel built without
CONFIG_SECCOMP_FILTER answers (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER) and seccomp(2): EINVAL). A seccomp
filter does it (inherited across fork and exec, like the real absence; the product's own
`hoardfs.base.landlock.refuse_syscalls`): only the three Landlock system calls are refused,
everything else runs as usual.

Exit 97 with one line when this kernel cannot install a seccomp filter here (the tests then
skip through `tests.helpers.missing`, which fails under CI)."""

from __future__ import annotations

import ctypes
import errno
import os
import sys

from hoardfs.base.landlock import refuse_requests, refuse_syscalls

UNSUPPORTED = 97
_PR_SET_NO_NEW_PRIVS = 38
_LANDLOCK = (444, 445, 446)  # landlock_create_ruleset, landlock_add_rule, landlock_restrict_self: every architecture
_PRCTL, _PR_SET_SECCOMP = {"x86_64": 157, "aarch64": 167}, 22
_SECCOMP = {"x86_64": (317,), "aarch64": (277,)}


def main(argv: list[str]) -> int:
    name, sep, *cmd = argv
    if sep != "--" or not cmd or name not in ("ENOSYS", "EOPNOTSUPP", "NOSECCOMP"):
        print("usage: nolandlock.py ENOSYS|EOPNOTSUPP|NOSECCOMP -- COMMAND …", file=sys.stderr)
        return 2
    try:
        if ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
        if name == "NOSECCOMP":  # the filter after this one is the last installed
            ok = refuse_syscalls(_SECCOMP, errno.EINVAL) and refuse_requests(_PRCTL, 0, (_PR_SET_SECCOMP,), errno.EINVAL)
        else:
            ok = refuse_syscalls({m: _LANDLOCK for m in ("x86_64", "aarch64")}, getattr(errno, name))
        if not ok:
            raise OSError(errno.ENOTSUP, f"no seccomp architecture number known for {os.uname().machine}")
    except OSError as e:
        print(f"nolandlock: cannot install a seccomp filter: {e}", file=sys.stderr)
        return UNSUPPORTED
    os.execvp(cmd[0], cmd)
    return 127  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
