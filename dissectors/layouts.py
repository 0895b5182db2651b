"""Which layers a message body holds: the bindings of `structs.py`.

A *plan* is the list of layer classes a body is made of, chosen from the opcode (for a
reply: the opcode of the request it answers), the negotiated minor and INIT flags.
`request_plan`, `reply_plan` and `notify_plan` are plain functions of those values, so
the Scapy decoder and the struct-only fast path (`quick.py`) share them.

A plan that cannot hold the body (too short for its fixed structs, unknown opcode,
reply to an unknown request, a reply to a request that gets none) comes back empty with
a reason; the caller shows the body as a raw layer with that reason.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Callable

from scapy.packet import Packet

from .constants import (
    FUSE_IOCTL_RETRY,
    FUSE_SETXATTR_EXT,
    NO_REPLY_OPCODES,
    NotifyCode,
    Opcode,
)
from .context import DEFAULT_CONTEXT, Dialect, FuseContext
from .structs import (
    CuseInitIn,
    CuseInitInfo,
    CuseInitOut,
    FuseAccessIn,
    FuseAttrOut,
    FuseAttrOutCompat,
    FuseBatchForgetIn,
    FuseBmapIn,
    FuseBmapOut,
    FuseCopyFileRangeIn,
    FuseCopyFileRangeOut,
    FuseCreateIn,
    FuseCreateInCompat,
    FuseData,
    FuseDirentList,
    FuseDirentplusList,
    FuseEntryOut,
    FuseEntryOutCompat,
    FuseExtensionList,
    FuseFallocateIn,
    FuseFlushIn,
    FuseForgetIn,
    FuseForgetList,
    FuseFsyncIn,
    FuseGetattrIn,
    FuseGetxattrIn,
    FuseGetxattrOut,
    FuseHeader,
    FuseInHeader,
    FuseInitIn,
    FuseInitInCompat,
    FuseInitOut,
    FuseInitOutCompat,
    FuseInitOutCompat22,
    FuseInterruptIn,
    FuseIoctlIn,
    FuseIoctlIovecList,
    FuseIoctlOut,
    FuseLinkIn,
    FuseLkIn,
    FuseLkOut,
    FuseLseekIn,
    FuseLseekOut,
    FuseMkdirIn,
    FuseMknodIn,
    FuseMknodInCompat,
    FuseName,
    FuseNames,
    FuseNodeidList,
    FuseNotifyDeleteOut,
    FuseNotifyInvalEntryOut,
    FuseNotifyInvalInodeOut,
    FuseNotifyPollWakeupOut,
    FuseNotifyPruneOut,
    FuseNotifyRetrieveIn,
    FuseNotifyRetrieveOut,
    FuseNotifyStoreOut,
    FuseOpenIn,
    FuseOpenOut,
    FuseOpenOutAndroid,
    FuseOutHeader,
    FusePollIn,
    FusePollOut,
    FuseReadIn,
    FuseReadInCompat,
    FuseReleaseIn,
    FuseRemovemappingIn,
    FuseRemovemappingList,
    FuseRename2In,
    FuseRenameIn,
    FuseSetattrIn,
    FuseSetupmappingIn,
    FuseSetxattrIn,
    FuseSetxattrInCompat,
    FuseStatfsOut,
    FuseStatfsOutCompat,
    FuseStatxIn,
    FuseStatxOut,
    FuseStruct,
    FuseSyncfsIn,
    FuseWriteIn,
    FuseWriteInCompat,
    FuseWriteOut,
    struct_name,
)

Plan = list[Any]  # layer classes, or functions (previous layer, rest) -> class or reason
PlanResult = tuple[Plan, str]


@lru_cache(maxsize=None)
def struct_size(cls: type[Packet]) -> int:
    """Wire size of a fixed struct (0 for variable-length layers)."""
    return len(bytes(cls())) if issubclass(cls, FuseStruct) else 0


def _by_minor(new: type[Packet], old: type[Packet], since: int) -> Callable[[FuseContext], type[Packet]]:
    return lambda ctx: new if ctx.minor >= since else old


_entry_out = _by_minor(FuseEntryOut, FuseEntryOutCompat, 9)
_attr_out = _by_minor(FuseAttrOut, FuseAttrOutCompat, 9)
_read_in = _by_minor(FuseReadIn, FuseReadInCompat, 9)
_write_in = _by_minor(FuseWriteIn, FuseWriteInCompat, 9)
_mknod_in = _by_minor(FuseMknodIn, FuseMknodInCompat, 12)
_create_in = _by_minor(FuseCreateIn, FuseCreateInCompat, 12)
_statfs_out = _by_minor(FuseStatfsOut, FuseStatfsOutCompat, 4)


def _open_out(ctx: FuseContext) -> type[Packet]:
    return FuseOpenOutAndroid if ctx.dialect is Dialect.ANDROID else FuseOpenOut


def _setxattr_in(ctx: FuseContext) -> type[Packet]:
    return FuseSetxattrIn if ctx.flags & FUSE_SETXATTR_EXT else FuseSetxattrInCompat


def _getattr(ctx: FuseContext, body: bytes) -> Plan:
    return [FuseGetattrIn] if ctx.minor >= 9 else []


def _by_length(sizes: dict[int, type[Packet]], what: str) -> Callable[[FuseContext, bytes], PlanResult]:
    """INIT structs are read by length: each side sends the size of its own minor."""

    def plan(ctx: FuseContext, body: bytes) -> PlanResult:
        fitting = [size for size in sizes if len(body) >= size]
        if not fitting:
            return [], f"{what} needs at least {min(sizes)} bytes, got {len(body)}"
        return [sizes[max(fitting)]], ""

    return plan


_init_in = _by_length({16: FuseInitInCompat, 64: FuseInitIn}, "fuse_init_in")
_init_out = _by_length({8: FuseInitOutCompat, 24: FuseInitOutCompat22, 64: FuseInitOut},
                       "fuse_init_out")


def _ioctl_tail(prev: Packet, rest: bytes) -> type[Packet]:
    return FuseIoctlIovecList if prev.flags & FUSE_IOCTL_RETRY else FuseData


def _xattr_reply(ctx: FuseContext, body: bytes) -> Plan:
    """GETXATTR/LISTXATTR with size 0 ask for the size; otherwise the reply is the data."""
    if ctx.request is None:
        return [FuseData]
    return [FuseGetxattrOut] if ctx.request.get("size") == 0 else [FuseData]


O = Opcode
#: Request bodies: a fixed list, or a function of the context giving one.
REQUESTS: dict[int, Any] = {
    O.LOOKUP: [FuseName],
    O.FORGET: [FuseForgetIn],
    O.GETATTR: _getattr,
    O.SETATTR: [FuseSetattrIn],
    O.READLINK: [],
    O.SYMLINK: [FuseNames],
    O.MKNOD: lambda ctx, body: [_mknod_in(ctx), FuseName],
    O.MKDIR: [FuseMkdirIn, FuseName],
    O.UNLINK: [FuseName],
    O.RMDIR: [FuseName],
    O.RENAME: [FuseRenameIn, FuseNames],
    O.LINK: [FuseLinkIn, FuseName],
    O.OPEN: [FuseOpenIn],
    O.READ: lambda ctx, body: [_read_in(ctx)],
    O.WRITE: lambda ctx, body: [_write_in(ctx), FuseData],
    O.STATFS: [],
    O.RELEASE: [FuseReleaseIn],
    O.FSYNC: [FuseFsyncIn],
    O.SETXATTR: lambda ctx, body: [_setxattr_in(ctx), FuseName, FuseData],
    O.GETXATTR: [FuseGetxattrIn, FuseName],
    O.LISTXATTR: [FuseGetxattrIn],
    O.REMOVEXATTR: [FuseName],
    O.FLUSH: [FuseFlushIn],
    O.INIT: _init_in,
    O.OPENDIR: [FuseOpenIn],
    O.READDIR: lambda ctx, body: [_read_in(ctx)],
    O.RELEASEDIR: [FuseReleaseIn],
    O.FSYNCDIR: [FuseFsyncIn],
    O.GETLK: [FuseLkIn],
    O.SETLK: [FuseLkIn],
    O.SETLKW: [FuseLkIn],
    O.ACCESS: [FuseAccessIn],
    O.CREATE: lambda ctx, body: [_create_in(ctx), FuseName],
    O.INTERRUPT: [FuseInterruptIn],
    O.BMAP: [FuseBmapIn],
    O.DESTROY: [],
    O.IOCTL: [FuseIoctlIn, FuseData],
    O.POLL: [FusePollIn],
    O.NOTIFY_REPLY: [FuseNotifyRetrieveIn, FuseData],
    O.BATCH_FORGET: [FuseBatchForgetIn, FuseForgetList],
    O.FALLOCATE: [FuseFallocateIn],
    O.READDIRPLUS: lambda ctx, body: [_read_in(ctx)],
    O.RENAME2: [FuseRename2In, FuseNames],
    O.LSEEK: [FuseLseekIn],
    O.COPY_FILE_RANGE: [FuseCopyFileRangeIn],
    O.SETUPMAPPING: [FuseSetupmappingIn],
    O.REMOVEMAPPING: [FuseRemovemappingIn, FuseRemovemappingList],
    O.SYNCFS: [FuseSyncfsIn],
    O.TMPFILE: lambda ctx, body: [_create_in(ctx), FuseName],
    O.STATX: [FuseStatxIn],
    O.COPY_FILE_RANGE_64: [FuseCopyFileRangeIn],
    O.CUSE_INIT: [CuseInitIn],
}

#: Reply bodies by the opcode of the request answered.
REPLIES: dict[int, Any] = {
    **{op: lambda ctx, body: [_entry_out(ctx)] for op in (O.LOOKUP, O.MKNOD, O.MKDIR, O.SYMLINK, O.LINK)},
    O.GETATTR: lambda ctx, body: [_attr_out(ctx)],
    O.SETATTR: lambda ctx, body: [_attr_out(ctx)],
    O.READLINK: [FuseData],
    O.OPEN: lambda ctx, body: [_open_out(ctx)],
    O.OPENDIR: lambda ctx, body: [_open_out(ctx)],
    O.CREATE: lambda ctx, body: [_entry_out(ctx), _open_out(ctx)],
    O.TMPFILE: lambda ctx, body: [_entry_out(ctx), _open_out(ctx)],
    O.READ: [FuseData],
    O.WRITE: [FuseWriteOut],
    O.COPY_FILE_RANGE: [FuseWriteOut],
    O.STATFS: lambda ctx, body: [_statfs_out(ctx)],
    O.GETXATTR: _xattr_reply,
    O.LISTXATTR: _xattr_reply,
    O.INIT: _init_out,
    O.GETLK: [FuseLkOut],
    O.BMAP: [FuseBmapOut],
    O.IOCTL: [FuseIoctlOut, _ioctl_tail],
    O.POLL: [FusePollOut],
    O.READDIR: [FuseDirentList],
    O.READDIRPLUS: [FuseDirentplusList],
    O.LSEEK: [FuseLseekOut],
    O.COPY_FILE_RANGE_64: [FuseCopyFileRangeOut],
    O.STATX: [FuseStatxOut],
    O.CUSE_INIT: [CuseInitOut, CuseInitInfo],
    **{op: [] for op in (
        O.UNLINK, O.RMDIR, O.RENAME, O.RENAME2, O.RELEASE, O.RELEASEDIR, O.FSYNC, O.FSYNCDIR,
        O.SETXATTR, O.REMOVEXATTR, O.FLUSH, O.SETLK, O.SETLKW, O.ACCESS, O.INTERRUPT,
        O.DESTROY, O.FALLOCATE, O.SETUPMAPPING, O.REMOVEMAPPING, O.SYNCFS)},
}

N = NotifyCode
NOTIFICATIONS: dict[int, Plan] = {
    N.POLL: [FuseNotifyPollWakeupOut],
    N.INVAL_INODE: [FuseNotifyInvalInodeOut],
    N.INVAL_ENTRY: [FuseNotifyInvalEntryOut, FuseName],
    N.STORE: [FuseNotifyStoreOut, FuseData],
    N.RETRIEVE: [FuseNotifyRetrieveOut],
    N.DELETE: [FuseNotifyDeleteOut, FuseName],
    N.RESEND: [],
    N.INC_EPOCH: [],
    N.PRUNE: [FuseNotifyPruneOut, FuseNodeidList],
}


def _resolve(entry: Any, ctx: FuseContext, body: bytes) -> PlanResult:
    if isinstance(entry, list):
        return entry, ""
    result = entry(ctx, body)
    return result if isinstance(result, tuple) else (result, "")


@lru_cache(maxsize=None)
def _fixed_need(plan: tuple[Any, ...]) -> int:
    """Bytes the fixed structs leading a plan take."""
    need = 0
    for entry in plan:
        if not (isinstance(entry, type) and issubclass(entry, FuseStruct)):
            break
        need += struct_size(entry)
    return need


def _check_fixed(plan: Plan, body: bytes, what: Callable[[], str]) -> PlanResult:
    """The fixed structs leading a plan must fit in the body."""
    need = _fixed_need(tuple(plan))
    if len(body) < need:
        names = " + ".join(struct_name(e) for e in plan if isinstance(e, type) and struct_size(e))
        return [], f"short {what()}: {names} needs {need} bytes, got {len(body)}"
    return plan, ""


#: Replies whose layout depends on the request's fields, not only on its opcode.
NEEDS_REQUEST = frozenset({O.GETXATTR, O.LISTXATTR})
#: Plans that depend on more than the opcode and the connection (INIT's sizes, the request's
#: fields); the others are resolved once per context (the list path's hot spot).
BODY_DEPENDENT = NEEDS_REQUEST | {O.INIT}


def plan_for(table: dict[int, Any], direction: str, ctx: FuseContext, opcode: int,
             body: bytes) -> PlanResult:
    """The plan of `opcode` in `table` (REQUESTS or REPLIES), cached in `ctx` unless it
    depends on the body."""
    entry = table[opcode]
    if opcode in BODY_DEPENDENT:
        return _resolve(entry, ctx, body)
    key = (direction, opcode)
    found = ctx.plans.get(key)
    if found is None:
        found = ctx.plans[key] = _resolve(entry, ctx, body)
    return found


def request_plan(ctx: FuseContext, opcode: int, total_extlen: int, body: bytes) -> PlanResult:
    if opcode not in REQUESTS:
        return [], f"unknown opcode {opcode}"
    plan, reason = plan_for(REQUESTS, "request", ctx, opcode, body)
    if reason:
        return [], reason
    if total_extlen:
        plan = [*plan, FuseExtensionList]
    return _check_fixed(plan, body, lambda: f"{_op_name(opcode)} request")


def reply_plan(ctx: FuseContext, error: int, body: bytes) -> PlanResult:
    if error:
        return [], ""  # an error reply is the header alone; extra bytes are flagged
    opcode = ctx.opcode
    if opcode is None:
        return [], "reply to an unknown request: layout depends on its opcode"
    if opcode in NO_REPLY_OPCODES:
        return [], f"the kernel expects no reply to {_op_name(opcode)}"
    if opcode not in REPLIES:
        return [], f"reply to unknown opcode {opcode}"
    plan, reason = plan_for(REPLIES, "reply", ctx, opcode, body)
    if reason:
        return [], reason
    return _check_fixed(plan, body, lambda: f"{_op_name(opcode)} reply")


def notify_plan(code: int, body: bytes) -> PlanResult:
    plan = NOTIFICATIONS.get(code)
    if plan is None:
        return [], f"unknown notify code {code}"
    return _check_fixed(plan, body, lambda: f"{_notify_name(code)} notification")


def request_struct(opcode: int, ctx: FuseContext = DEFAULT_CONTEXT) -> type[Packet] | None:
    """The fixed struct a request's body starts with (fuse_open_in, fuse_read_in …), or
    None when it starts with a name or nothing."""
    plan, _ = request_plan(ctx, opcode, 0, bytes(4096))
    first = plan[0] if plan else None
    return first if isinstance(first, type) and issubclass(first, FuseStruct) else None


def fixed_size_before(layer: type[Packet], direction: str, key: int,
                      ctx: FuseContext = DEFAULT_CONTEXT) -> int:
    """Bytes of the fixed structs a body holds before `layer` (e.g. where a WRITE's data
    starts after fuse_write_in): `direction` is "request", "reply" or "notify", `key` the
    opcode or notify code."""
    if direction == "notify":
        plan = NOTIFICATIONS[key]
    elif direction == "request":
        plan, _ = request_plan(ctx, key, 0, bytes(4096))
    else:
        plan, _ = reply_plan(ctx.for_reply(key), 0, bytes(4096))
    if layer not in plan:
        raise ValueError(f"{struct_name(layer)} is not in the {direction} plan of {key}")
    return sum(struct_size(entry) for entry in plan[:plan.index(layer)])


def _op_name(opcode: int) -> str:
    try:
        return Opcode(opcode).name
    except ValueError:
        return str(opcode)


def _notify_name(code: int) -> str:
    try:
        return f"NOTIFY_{NotifyCode(code).name}"
    except ValueError:
        return f"notify {code}"


def _plan_request(hdr: FuseHeader, body: bytes) -> PlanResult:
    return request_plan(hdr.ctx or DEFAULT_CONTEXT, hdr.opcode, hdr.total_extlen, body)


def _plan_reply(hdr: FuseHeader, body: bytes) -> PlanResult:
    if hdr.unique == 0:
        return notify_plan(hdr.error, body)
    return reply_plan(hdr.ctx or DEFAULT_CONTEXT, hdr.error, body)


FuseInHeader.planner = staticmethod(_plan_request)
FuseOutHeader.planner = staticmethod(_plan_reply)
