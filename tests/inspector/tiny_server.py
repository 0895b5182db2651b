"""A FUSE server of a few lines on the raw protocol, for the live target's tests: it
answers INIT, a LOOKUP of anything with node 2, GETATTR with attributes, and ENOSYS to
the rest; `--on OPCODE=ACTION` makes it fail on that opcode in one chosen way.

    python tiny_server.py [--on OPCODE=ACTION ...] MOUNTPOINT   (MOUNTPOINT: /dev/fd/N)

ACTION: abort (SIGABRT), exit3 (exit status 3), hang (never reply), slow (reply after
1.5 s), errno (error +5, which the kernel refuses), short (GETATTR's body 8 bytes short),
badlen (a len field 4 more than the message), once-abort (abort only when the file
named by $TINY_ONCE does not exist yet; it is created first: a failure that does not
reproduce).

It stands for somebody else's server, so it spells the few structs it needs itself, and
it starts fast (no Scapy): the tests restart it hundreds of times.
"""

from __future__ import annotations

import argparse
import os
import struct
import sys
import time

IN_HEADER = struct.Struct("<IIQQIIIHH")
OUT_HEADER = struct.Struct("<IiQ")
INIT, LOOKUP, GETATTR, FORGET, INTERRUPT, BATCH_FORGET = 26, 1, 3, 2, 36, 42
OPCODES = {"INIT": INIT, "LOOKUP": LOOKUP, "GETATTR": GETATTR}
ATTR_OUT = bytes(104)  # fuse_attr_out
INIT_OUT = struct.pack("<IIIIHHIIHHI", 7, 45, 0, 0, 0, 0, 1 << 16, 0, 0, 0, 0) + bytes(28)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--on", action="append", default=[])
    parser.add_argument("mountpoint")
    args = parser.parse_args()
    actions = {int(op) if op.isdigit() else OPCODES[op]: act
               for op, act in (o.split("=") for o in args.on)}
    fd = int(args.mountpoint.rsplit("/", 1)[1])
    while True:
        try:
            msg = os.read(fd, 1 << 20)
        except OSError:
            return
        if not msg:
            return
        _, opcode, unique, *_ = IN_HEADER.unpack_from(msg)
        act = actions.get(opcode)
        if act == "abort" or (act == "once-abort" and not os.path.exists(os.environ["TINY_ONCE"])):
            if act == "once-abort":
                open(os.environ["TINY_ONCE"], "w").close()
            os.abort()
        if act == "exit3":
            sys.exit(3)
        if act == "hang" or opcode in (FORGET, BATCH_FORGET, INTERRUPT):
            continue
        if act == "slow":
            time.sleep(1.5)
        if opcode == INIT:
            body = INIT_OUT
        elif opcode == LOOKUP:
            body = struct.pack("<Q", 2) + bytes(120)  # fuse_entry_out, node 2
        elif opcode == GETATTR:
            body = ATTR_OUT[:-8] if act == "short" else ATTR_OUT
        else:
            os.write(fd, OUT_HEADER.pack(16, -38, unique))
            continue
        error = 5 if act == "errno" else 0
        reply = OUT_HEADER.pack(16 + (0 if error else len(body)), error, unique)
        reply += b"" if error else body
        if act == "badlen":
            reply = (len(reply) + 4).to_bytes(4, "little") + reply[4:]
        os.write(fd, reply)


if __name__ == "__main__":
    main()
