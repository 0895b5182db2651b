"""Classes of opcodes, for code that sorts requests without decoding them.

Most are read off the bindings (`layouts.py`): which replies hand out a node id
(fuse_entry_out) or a file handle (fuse_open_out), which requests release a handle
(fuse_release_in) or drop lookups (fuse_forget_in, fuse_batch_forget_in). The others are
the kernel's own grouping, written out here with the reason. Every consumer imports these
sets; none keeps its own list (tests/dissectors/test_one_source.py looks for one).
"""

from __future__ import annotations

from .constants import NO_REPLY_OPCODES, Opcode
from .context import DEFAULT_CONTEXT
from .layouts import REPLIES, REQUESTS, reply_plan, request_plan
from .structs import (
    FuseAttrOut,
    FuseBatchForgetIn,
    FuseEntryOut,
    FuseForgetIn,
    FuseOpenOut,
    FuseReadIn,
    FuseReleaseIn,
    FuseStatxOut,
)

O = Opcode


def _requests_with(*layers: type) -> frozenset[Opcode]:
    return frozenset(op for op in REQUESTS if set(layers) & set(
        request_plan(DEFAULT_CONTEXT, op, 0, bytes(4096))[0]))


def _replies_with(*layers: type) -> frozenset[Opcode]:
    return frozenset(op for op in REPLIES if set(layers) & set(
        reply_plan(DEFAULT_CONTEXT.for_reply(op), 0, bytes(4096))[0]))


#: Replies that hand the kernel a node id (and a lookup): fuse_entry_out.
ENTRY_REPLIES = _replies_with(FuseEntryOut)
#: Replies that hand the kernel a file handle: fuse_open_out (CREATE's and TMPFILE's after
#: their fuse_entry_out).
OPEN_REPLIES = _replies_with(FuseOpenOut)
#: Replies that give the attributes of the request's own node (fuse_attr_out, fuse_statx_out).
ATTR_REPLIES = _replies_with(FuseAttrOut, FuseStatxOut)
#: Requests that end a file handle.
RELEASES = _requests_with(FuseReleaseIn)
#: Requests that drop lookups of node ids.
FORGETS = _requests_with(FuseForgetIn, FuseBatchForgetIn)
#: Requests on a directory handle (the kernel's fuse_dir_operations): their `fh` comes
#: from an OPENDIR reply, not from OPEN or CREATE.
DIR_HANDLE_OPS = frozenset({O.OPENDIR, O.READDIR, O.READDIRPLUS, O.RELEASEDIR, O.FSYNCDIR})
#: Directory reads: fuse_read_in on a directory handle, whose `offset` is a dirent's `off`.
DIR_READS = _requests_with(FuseReadIn) & DIR_HANDLE_OPS
#: Opens of a file (not a directory): the replies that may carry a backing id.
FILE_OPENS = OPEN_REPLIES - DIR_HANDLE_OPS
#: Requests on an open file's data through its handle: with passthrough the kernel makes
#: them on the backing file and the server never sees them.
FILE_IO = frozenset({O.READ, O.WRITE, O.LSEEK, O.FALLOCATE, O.COPY_FILE_RANGE,
                     O.COPY_FILE_RANGE_64})
#: Renames (RENAME2 carries flags): they hold the directories involved until answered.
RENAMES = frozenset({O.RENAME, O.RENAME2})
#: Requests whose header node is a directory (the kernel sends them from a directory's
#: inode_operations / file_operations only).
DIR_NODE_OPCODES = frozenset({
    O.LOOKUP, O.MKNOD, O.MKDIR, O.SYMLINK, O.LINK, O.RENAME, O.RENAME2, O.UNLINK, O.RMDIR,
    O.CREATE, O.TMPFILE, O.OPENDIR, O.READDIR, O.READDIRPLUS, O.RELEASEDIR, O.FSYNCDIR})
#: Removals of a name: the VFS looks the name up (and checks its type) before sending them.
REMOVES = frozenset({O.UNLINK, O.RMDIR})
#: Requests that change the filesystem when they succeed.
CHANGES = frozenset({
    O.CREATE, O.MKNOD, O.MKDIR, O.SYMLINK, O.LINK, O.UNLINK, O.RMDIR, O.RENAME, O.RENAME2,
    O.SETATTR, O.WRITE, O.SETXATTR, O.REMOVEXATTR, O.FALLOCATE, O.COPY_FILE_RANGE,
    O.COPY_FILE_RANGE_64, O.TMPFILE,
})
#: Requests the kernel sends only when nothing else is in flight on what they end (the
#: last fput of a file, an inode's eviction, the session's end): never overlapped, never
#: interrupted.
ENDINGS = FORGETS | RELEASES | frozenset({O.INTERRUPT, O.DESTROY})
#: Requests about other messages, not the filesystem: INTERRUPT names a request,
#: NOTIFY_REPLY answers a server's RETRIEVE notification.
ABOUT_MESSAGES = frozenset({O.INTERRUPT, O.NOTIFY_REPLY})
#: The requests that start a connection: their header names no node.
INITS = frozenset({O.INIT, O.CUSE_INIT})
#: Requests about the connection itself, not the filesystem.
CONNECTION = frozenset({O.INIT, O.DESTROY})
#: Requests whose own `unique` no reply is waited for: those the kernel expects no reply to,
#: and INTERRUPT, whose target's reply answers it (a reply of its own, EAGAIN, is rare).
UNPAIRED = NO_REPLY_OPCODES | {O.INTERRUPT}
