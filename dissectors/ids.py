"""The one table of the protocol's ids: which field of which message carries a node id, a
file handle, a backing id, a lock owner, a poll handle or a directory offset, and when.

Several fields are ids only under a condition: GETATTR's and STATX's `fh` only with
FUSE_GETATTR_FH in `getattr_flags` (otherwise the kernel leaves it 0, or whatever it
was), SETATTR's only with FATTR_FH in `valid`, READ's and WRITE's `lock_owner` only with
their LOCKOWNER flag, fuse_open_out's `backing_id` only with FOPEN_PASSTHROUGH, and
fuse_read_in's `offset` is a directory offset only in READDIR and READDIRPLUS. Every
consumer reads this table, never its own list: the replay's translation
(`inspector.replay.views`), the lifecycle pass's wire offsets (`inspector.lifecycles.wire`)
and serve's request keys (`inspector.serve.keys`).

Values in lists (BATCH_FORGET's fuse_forget_one, NOTIFY_PRUNE's node ids, READDIR and
READDIRPLUS entries) are named by their element struct: `fuse_forget_one.nodeid`,
`fuse_dirent.off`, and `fuse_entry_out.nodeid` inside each fuse_direntplus.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from functools import lru_cache
from typing import Mapping

from .constants import (
    FATTR_FH,
    FATTR_FLAGS,
    FOPEN_PASSTHROUGH,
    GETATTR_FLAGS,
    READ_FLAGS,
    RELEASE_FLAGS,
    WRITE_FLAGS,
    Opcode,
)
from .offsets import field_offsets
from .opcodes import DIR_READS
from .structs import (
    FuseCopyFileRangeIn,
    FuseDirent,
    FuseEntryOut,
    FuseEntryOutCompat,
    FuseFallocateIn,
    FuseFlushIn,
    FuseForgetOne,
    FuseFsyncIn,
    FuseGetattrIn,
    FuseInHeader,
    FuseIoctlIn,
    FuseLinkIn,
    FuseLkIn,
    FuseLseekIn,
    FuseNotifyDeleteOut,
    FuseNotifyInvalEntryOut,
    FuseNotifyInvalInodeOut,
    FuseNotifyRetrieveOut,
    FuseNotifyStoreOut,
    FuseOpenOut,
    FuseOpenOutAndroid,
    FusePollIn,
    FuseReadIn,
    FuseReadInCompat,
    FuseReleaseIn,
    FuseRename2In,
    FuseRenameIn,
    FuseSetattrIn,
    FuseSetupmappingIn,
    FuseStatxIn,
    FuseWriteIn,
    FuseWriteInCompat,
)


class Id(enum.Enum):
    """What an id field holds, and who chose it."""

    NODE = "node id"  # the server's (entry replies), named in later requests
    FH = "file handle"  # the server's (open replies)
    BACKING = "backing id"  # the kernel's, from BACKING_OPEN, named in open replies
    DIROFF = "directory offset"  # the server's (dirent.off), named in later READDIRs
    LOCK_OWNER = "lock owner"  # the kernel's: a pointer, different every run
    POLL_HANDLE = "poll handle"  # the kernel's (POLL's kh)
    LOCK_PID = "lock pid"  # the kernel's: the locking process


#: Chosen by the server: a replay translates these between the recording and the replay.
SERVER_CHOSEN = frozenset({Id.NODE, Id.FH, Id.DIROFF})
#: Chosen by the kernel for this run only: two runs of one workload differ in them.
KERNEL_CHOSEN = frozenset({Id.LOCK_OWNER, Id.POLL_HANDLE, Id.LOCK_PID})


def _bit(table: Mapping[int, str], name: str) -> int:
    return next(bit for bit, n in table.items() if n == name)


FUSE_GETATTR_FH = _bit(GETATTR_FLAGS, "FH")
FATTR_LOCKOWNER = _bit(FATTR_FLAGS, "LOCKOWNER")
FUSE_READ_LOCKOWNER = _bit(READ_FLAGS, "LOCKOWNER")
FUSE_WRITE_LOCKOWNER = _bit(WRITE_FLAGS, "LOCKOWNER")
FUSE_RELEASE_FLOCK_UNLOCK = _bit(RELEASE_FLAGS, "FLOCK_UNLOCK")

#: Every request names its node in the header, except INIT's (always 0).
_NOT_INIT = frozenset(int(op) for op in Opcode) - {Opcode.INIT, Opcode.CUSE_INIT}


@dataclass(frozen=True)
class IdField:
    """One field that carries an id, and the condition under which it does."""

    struct: type
    field: str  # flattened name, as `dissectors.flat.compiled(struct).names` has it
    kind: Id
    when: tuple[str, int] | None = None  # (a field of the same struct, bit): only if set
    opcodes: frozenset[int] | None = None  # only in messages of these opcodes

    def applies(self, opcode: int | None, values: Mapping[str, int]) -> bool:
        """Whether the field holds the id in this message (`values`: its struct's fields
        by name; only the `when` field is read)."""
        if self.opcodes is not None and opcode not in self.opcodes:
            return False
        return self.when is None or bool(values.get(self.when[0], 0) & self.when[1])


def _fh(*structs: type) -> tuple[IdField, ...]:
    return tuple(IdField(s, "fh", Id.FH) for s in structs)


#: The table. Request structs first, then replies and notifications, then list elements.
ID_FIELDS: tuple[IdField, ...] = (
    IdField(FuseInHeader, "nodeid", Id.NODE, opcodes=_NOT_INIT),
    *_fh(FuseReadIn, FuseReadInCompat, FuseWriteIn, FuseWriteInCompat, FuseReleaseIn,
         FuseFlushIn, FuseFsyncIn, FuseLkIn, FuseIoctlIn, FusePollIn, FuseFallocateIn,
         FuseLseekIn, FuseSetupmappingIn),
    IdField(FuseGetattrIn, "fh", Id.FH, when=("getattr_flags", FUSE_GETATTR_FH)),
    IdField(FuseStatxIn, "fh", Id.FH, when=("getattr_flags", FUSE_GETATTR_FH)),
    IdField(FuseSetattrIn, "fh", Id.FH, when=("valid", FATTR_FH)),
    IdField(FuseCopyFileRangeIn, "fh_in", Id.FH),
    IdField(FuseCopyFileRangeIn, "fh_out", Id.FH),
    IdField(FuseCopyFileRangeIn, "nodeid_out", Id.NODE),
    IdField(FuseRenameIn, "newdir", Id.NODE),
    IdField(FuseRename2In, "newdir", Id.NODE),
    IdField(FuseLinkIn, "oldnodeid", Id.NODE),
    IdField(FuseReadIn, "offset", Id.DIROFF, opcodes=DIR_READS),
    IdField(FuseReadInCompat, "offset", Id.DIROFF, opcodes=DIR_READS),
    IdField(FuseReadIn, "lock_owner", Id.LOCK_OWNER, when=("read_flags", FUSE_READ_LOCKOWNER)),
    IdField(FuseWriteIn, "lock_owner", Id.LOCK_OWNER, when=("write_flags", FUSE_WRITE_LOCKOWNER)),
    IdField(FuseReleaseIn, "lock_owner", Id.LOCK_OWNER,
            when=("release_flags", FUSE_RELEASE_FLOCK_UNLOCK)),
    IdField(FuseFlushIn, "lock_owner", Id.LOCK_OWNER),
    IdField(FuseSetattrIn, "lock_owner", Id.LOCK_OWNER, when=("valid", FATTR_LOCKOWNER)),
    IdField(FuseLkIn, "owner", Id.LOCK_OWNER),
    IdField(FuseLkIn, "lk.pid", Id.LOCK_PID),
    IdField(FusePollIn, "kh", Id.POLL_HANDLE),
    # replies and notifications
    IdField(FuseEntryOut, "nodeid", Id.NODE),
    IdField(FuseEntryOutCompat, "nodeid", Id.NODE),
    IdField(FuseOpenOut, "fh", Id.FH),
    IdField(FuseOpenOut, "backing_id", Id.BACKING, when=("open_flags", FOPEN_PASSTHROUGH)),
    IdField(FuseOpenOutAndroid, "fh", Id.FH),
    IdField(FuseOpenOutAndroid, "passthrough_fh", Id.BACKING),
    IdField(FuseNotifyInvalInodeOut, "ino", Id.NODE),
    IdField(FuseNotifyInvalEntryOut, "parent", Id.NODE),
    IdField(FuseNotifyDeleteOut, "parent", Id.NODE),
    IdField(FuseNotifyDeleteOut, "child", Id.NODE),
    IdField(FuseNotifyStoreOut, "nodeid", Id.NODE),
    IdField(FuseNotifyRetrieveOut, "nodeid", Id.NODE),
    # list elements
    IdField(FuseForgetOne, "nodeid", Id.NODE),
    IdField(FuseDirent, "off", Id.DIROFF),
)


@lru_cache(maxsize=None)
def id_fields(struct: type) -> tuple[IdField, ...]:
    """The id fields of one struct class, in table order."""
    return tuple(f for f in ID_FIELDS if f.struct is struct)


def ids_in(struct: type, opcode: int | None, values: Mapping[str, int]) -> dict[str, Id]:
    """field name → kind of the ids one message's struct carries."""
    return {f.field: f.kind for f in id_fields(struct) if f.applies(opcode, values)}


__all__ = ["ID_FIELDS", "KERNEL_CHOSEN", "SERVER_CHOSEN", "Id", "IdField", "field_offsets",
           "id_fields", "ids_in"]
