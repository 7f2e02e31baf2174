"""Runs a program with its own hostname, as a container of a pod sees the pod name.

  python3 uts_exec.py HOSTNAME PROGRAM [ARGS...]

Enters a new UTS namespace (plus a user namespace when not root), sets the hostname and
execs PROGRAM, which keeps this process's PID. A fresh single-threaded process, so the
unshare() is safe (the test process itself runs gRPC threads).
"""
import ctypes
import os
import sys

CLONE_NEWUTS = 0x04000000
CLONE_NEWUSER = 0x10000000


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    libc = ctypes.CDLL(None, use_errno=True)
    flags = CLONE_NEWUTS if os.geteuid() == 0 else CLONE_NEWUTS | CLONE_NEWUSER
    if libc.unshare(flags) != 0:
        sys.exit("uts_exec: unshare: " + os.strerror(ctypes.get_errno()))
    name = sys.argv[1].encode()
    if libc.sethostname(name, len(name)) != 0:
        sys.exit("uts_exec: sethostname: " + os.strerror(ctypes.get_errno()))
    os.execv(sys.argv[2], sys.argv[2:])


if __name__ == "__main__":
    main()
