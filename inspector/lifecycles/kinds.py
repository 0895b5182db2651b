"""Every anomaly `fusetrace check` can report: its code, severity and what it means.

The codes are stable (scripts match on them); the sentences in each `Anomaly` carry the
ids, paths and errnos of the case at hand.
"""

from __future__ import annotations

#: code → (severity, what it means and what the kernel does about it)
ANOMALY_KINDS: dict[str, tuple[str, str]] = {
    # backing ids (mainline) and passthrough ids (Android)
    "backing-leak": ("error", "a backing id was never closed (BACKING_CLOSE missing)"),
    "backing-open-failed": ("error", "BACKING_OPEN / PASSTHROUGH_OPEN failed"),
    "backing-eperm-not-offered": (
        "error", "BACKING_OPEN failed with EPERM: the kernel did not offer passthrough in INIT"),
    "backing-eperm-not-negotiated": (
        "error", "BACKING_OPEN failed with EPERM: the server's INIT reply never asked for "
                 "passthrough"),
    "backing-eperm-writeback": (
        "error", "BACKING_OPEN failed with EPERM: the INIT reply asked for FUSE_WRITEBACK_CACHE "
                 "together with FUSE_PASSTHROUGH, and the kernel turned passthrough off"),
    "backing-eperm-stack-depth": (
        "error", "BACKING_OPEN failed with EPERM: the INIT reply's max_stack_depth is invalid "
                 "(must be 1 or 2), so the kernel turned passthrough off"),
    "backing-eperm-no-cap": (
        "error", "BACKING_OPEN failed with EPERM although passthrough was negotiated: the "
                 "process calling it lacks CAP_SYS_ADMIN"),
    "backing-unsupported": (
        "error", "BACKING_OPEN failed with ENOTTY or EOPNOTSUPP: this kernel has no passthrough "
                 "(older than 6.9, or built without CONFIG_FUSE_PASSTHROUGH)"),
    "recorder-failed": (
        "error", "a passthrough ioctl was not made because fusetrace's own machinery failed "
                 "(pidfd_getfd refused by Yama or an LSM, credentials it could not take): "
                 "the errno the server got is fusetrace's, not the kernel's"),
    "backing-unknown-id": ("error", "an open reply carries a backing id that was never opened "
                                    "(the open fails with EIO)"),
    "backing-used-after-close": ("error", "an open reply carries a backing id already closed "
                                          "(the open fails with EIO)"),
    "backing-close-unknown": ("error", "BACKING_CLOSE of an id that was never opened"),
    "backing-close-twice": ("error", "BACKING_CLOSE of an id already closed"),
    "backing-close-in-flight": (
        "warning", "BACKING_CLOSE right after an open reply carrying the id, before the kernel "
                   "was seen using that file handle: the opener may not have taken its "
                   "reference yet, and then its open fails with EIO"),
    "passthrough-not-negotiated": (
        "error", "an open reply asks for passthrough on a connection that did not negotiate it"),
    "passthrough-zero-id": ("error", "FOPEN_PASSTHROUGH with backing id 0"),
    "passthrough-id-without-flag": (
        "warning", "a backing id in an open reply without FOPEN_PASSTHROUGH: the kernel ignores "
                   "it and the file is not passthrough"),
    "passthrough-direct-io": (
        "warning", "FOPEN_DIRECT_IO together with FOPEN_PASSTHROUGH: direct I/O wins, reads "
                   "and writes still reach the server"),
    "passthrough-conflicting-ids": (
        "error", "two different backing ids for concurrent opens of one inode: the kernel "
                 "fails the second open with EIO"),
    # requests and replies
    "reply-rejected": ("error", "the kernel rejected a reply (the write to /dev/fuse failed)"),
    "reply-unknown-unique": ("error", "a reply to a unique the kernel never sent"),
    "reply-duplicate": ("error", "a second reply to one request"),
    "request-unanswered": ("error", "a request never answered before the session ended"),
    # file handles and nodes
    "fh-never-released": ("error", "a file handle never released before the session ended"),
    "fh-unknown": ("warning", "a request uses a file handle no open reply returned"),
    "node-over-forgotten": ("error", "a node id forgotten more times than it was looked up"),
    # INIT
    "init-failed": ("error", "the server answered INIT with an error"),
    "init-unanswered": ("error", "INIT was never answered"),
    "init-flags-not-offered": ("warning", "the INIT reply sets flags the kernel did not offer "
                                          "(the kernel ignores them)"),
    "init-passthrough-off": (
        "warning", "the INIT reply asks for passthrough, but in a way the kernel turns it off"),
    "init-max-write-small": ("warning", "INIT max_write below 4096 (the kernel raises it)"),
    # a trace that ends without the session's end
    "open-at-end": ("note", "open when the trace ends, and the trace does not hold the "
                            "session's end (cut short, or the recorder was killed)"),
}


def severity(code: str) -> str:
    return ANOMALY_KINDS[code][0]
