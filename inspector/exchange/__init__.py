"""What `record` and `replay` share about a FUSE server they run: its command line and how
it gets its connection, the seccomp trap that answers its /dev/fuse ioctls, and the end of
its session.

Modules: `args` (the server's command line: mountpoint heuristic, `-o` mount options),
`flavour` (how the server gets its connection), `channel` (the socketpair that stands in
for /dev/fuse), `trap` (seccomp interception of the server's /dev/fuse open, mount,
unmount, ioctls and splices; a `Performer` answers the ioctls: `DevicePerformer` on the
real device, with its hot path in C, `_trapfast.c`, or replay's emulation of the kernel),
`creds` (taking on a server thread's credentials), `hangup` (telling server threads
ENODEV as the kernel would).
"""
