"""passthroughfs: mirror a directory over the raw FUSE protocol, with FUSE passthrough.

Debian 12's libfuse 3.14 has no passthrough, so the project serves its own: Python, no
libfuse, every request parsed with `dissectors.quick` and every reply built from the
dissectors' Scapy classes, so the server exercises the same struct definitions the
decoder uses.

    python -m inspector.passthroughfs SOURCE MOUNTPOINT [-o OPTS] [--no-passthrough]
        [--trace FILE] [--misbehave SWITCH ...] [--threads N]
        [--mount-with self|fsmount|fusermount3] [-d]

MOUNTPOINT `/dev/fd/N` serves an already-mounted connection on descriptor N (libfuse's
convention; the recorder's proxy uses it) and never mounts or unmounts.

Modules: `cli` (arguments, logging, session set-up and tear-down), `mounting` (/dev/fuse
and mount(2) or the new mount API, on the shared `inspector.mounts` and
`inspector.syscalls`), `server`
(worker threads, INIT), `ops` (one handler per opcode), `nodes` and `handles` (tables),
`backing` (passthrough ids), `attrs`, `tracing` (`--trace`), `misbehave`.

Misbehaviour switches (`--misbehave`) and what Linux 6.18 (FUSE 7.45) does about them,
as measured by tests/inspector/test_passthroughfs.py:

- `leak-backing-id`: never BACKING_CLOSE. Nothing visible to applications; each new
  first open of an inode registers another id (ids keep growing). The kernel frees them
  when the connection ends.
- `close-twice`: BACKING_CLOSE twice on the last release. The first returns 0, the second
  fails with ENOENT. Applications see nothing.
- `unknown-backing-id`: OPEN/CREATE reply FOPEN_PASSTHROUGH with backing id 4242 that
  was never opened. The application's open()/creat() fails with EIO (a CREATE leaves
  the new file behind in SOURCE); the kernel then sends RELEASE for the fh at once.
- `passthrough-no-flag`: registers the id and sends it without FOPEN_PASSTHROUGH. The
  kernel ignores the id: a normal cached open, READ/WRITE reach the server, no error.
- `direct-io-passthrough`: FOPEN_DIRECT_IO | FOPEN_PASSTHROUGH. Accepted; the backing
  file is attached but direct I/O wins: READ/WRITE reach the server with the
  application's sizes (no page cache), data stays correct.
- `writeback-cache`: asks for FUSE_WRITEBACK_CACHE with FUSE_PASSTHROUGH. The kernel
  accepts both flags in INIT but silently does not enable passthrough: every
  BACKING_OPEN fails with EPERM, so this server falls back to non-passthrough opens
  (READ/WRITE through the server, writes flagged WRITE_CACHE). No application error.
- `per-open-backing-id`: a new id per open instead of one per inode. Sequential opens
  work; a second open while the first is still open fails with EIO (the kernel refuses
  a different backing file for an inode in passthrough mode) and its RELEASE follows.
- `no-release-reply`: never answer RELEASE. close() does not wait for it, so nothing
  shows at first; but RELEASE is a background request, and after 12 unanswered ones
  (the default max_background) every background request queues behind them: with
  `--no-passthrough` the 13th buffered read of a file larger than a page hangs (its
  readahead READ never leaves the kernel; a one-page read is synchronous and still
  works) until the mount goes away, which then fails it with ENOTCONN. With
  passthrough, reads bypass the server and keep working. Unmounting still works.
- `stall=OPCODE:SECONDS`: every reply to OPCODE waits SECONDS before it is written
  (other workers keep serving); the application's call takes that much longer.
- `wrong-size`, `wrong-errno`, `reuse-fh`: plain server bugs (a regular file's GETATTR
  size one byte too large; EEXIST for a non-empty RMDIR; a file open handed the fh of an
  open that is still open) for `fusetrace replay` to catch; tests/inspector/test_replay.py
  pins each to its record.

Also measured: a passthrough file open while the server exits keeps reading from its
backing file; only its close() fails (ENOTCONN, from FLUSH). On a `/dev/fd/N` socket
without the recorder's ioctl interception, BACKING_OPEN fails with ENOTTY and opens
fall back to non-passthrough, as with `writeback-cache`. Python's open() sends FUSE_IOCTL
(TCGETS, for isatty) on every open: answered ENOSYS, the application sees ENOTTY.

Caveats: node ids map to paths, not pinned inodes (see `nodes`); requests run with the
server's credentials (root), as libfuse's passthrough examples do; STATX answers ENOSYS
(the kernel falls back to GETATTR); FUSE_INTERRUPT is ignored (handlers are quick).
"""
