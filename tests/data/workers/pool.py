"""A worker that hashes its inputs in a process pool (Python's multiprocessing: its locks and
queues are POSIX semaphores in /dev/shm): `pool.py INPUT_ROOT OUTPUT_ROOT` writes
OUTPUT_ROOT/sizes.csv (file, size) for every file below INPUT_ROOT, sorted."""

import multiprocessing
import os
import sys


def size(path: str) -> int:
    with open(path, "rb") as f:
        return len(f.read())


if __name__ == "__main__":
    inp, out = sys.argv[1], sys.argv[2]
    files = sorted(os.path.join(d, f) for d, _, names in os.walk(inp) for f in names)
    with multiprocessing.Pool(2) as pool:
        sizes = pool.map(size, files)
    with open(os.path.join(out, "sizes.csv"), "w") as f:
        f.write("file,size\n")
        for path, n in zip(files, sizes, strict=True):
            f.write(f"{os.path.relpath(path, inp)},{n}\n")
