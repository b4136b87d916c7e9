"""`python tests/nolandlock.py ENOSYS|EOPNOTSUPP -- COMMAND …`: run COMMAND on a kernel that,
for it and every process it starts, answers Landlock's calls as a kernel without Landlock does
— ENOSYS (built without it) or EOPNOTSUPP (built with it, not enabled at boot). A seccomp
filter does it (inherited across fork and exec, like the real absence): only the three
Landlock system calls are refused, everything else runs as usual.

Exit 97 with one line when this kernel cannot install a seccomp filter (the tests then skip
through `tests.helpers.missing`, which fails under CI)."""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import sys

UNSUPPORTED = 97
_PR_SET_NO_NEW_PRIVS, _PR_SET_SECCOMP, _SECCOMP_MODE_FILTER = 38, 22, 2
_RET_ALLOW, _RET_ERRNO = 0x7FFF0000, 0x00050000
_LD_W_ABS, _JEQ_K, _RET_K = 0x20, 0x15, 0x06
#: seccomp_data.arch for the architectures hoardfs runs on
_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
_LANDLOCK = (444, 445, 446)  # landlock_create_ruleset, landlock_add_rule, landlock_restrict_self


class _Insn(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]


class _Prog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_Insn))]


def _program(arch: int, err: int) -> list[tuple[int, int, int, int]]:
    """Another architecture's call (x32, i386 compat): allowed; a Landlock call: `err`."""
    n = len(_LANDLOCK)
    prog = [(_LD_W_ABS, 0, 0, 4), (_JEQ_K, 0, n + 1, arch), (_LD_W_ABS, 0, 0, 0)]
    for i, nr in enumerate(_LANDLOCK):  # equal: jump to the ERRNO return after the remaining checks and ALLOW
        prog.append((_JEQ_K, n - i, 0, nr))
    return prog + [(_RET_K, 0, 0, _RET_ALLOW), (_RET_K, 0, 0, _RET_ERRNO | err)]


def main(argv: list[str]) -> int:
    name, sep, *cmd = argv
    if sep != "--" or not cmd or name not in ("ENOSYS", "EOPNOTSUPP"):
        print("usage: nolandlock.py ENOSYS|EOPNOTSUPP -- COMMAND …", file=sys.stderr)
        return 2
    arch = _ARCH.get(platform.machine())
    if arch is None:
        print(f"nolandlock: no seccomp architecture number known for {platform.machine()}", file=sys.stderr)
        return UNSUPPORTED
    code = _program(arch, getattr(errno, name))
    insns = (_Insn * len(code))(*[_Insn(*i) for i in code])
    prog = _Prog(len(code), insns)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 or \
            libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0) != 0:
        print(f"nolandlock: cannot install a seccomp filter: {os.strerror(ctypes.get_errno())}", file=sys.stderr)
        return UNSUPPORTED
    os.execvp(cmd[0], cmd)
    return 127  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
