/*
 * The seccomp trap's hot path in C (see trap.py): the calls every passthrough open and
 * release makes, handled with the GIL released.
 *
 * Why native: in Python each trapped BACKING_OPEN or BACKING_CLOSE cost ~280 us (receive,
 * /proc reads, pidfd_getfd, credentials, record, answer, all through the interpreter),
 * several times what a fast C server spends on the whole open. `Trap.next()` loops here
 * and does, for those two ioctls on the relay socket: validate (the fd is the relay, the
 * notification is still valid), read the argument, take the backing fd from the server,
 * make the ioctl on the real /dev/fuse, append the record (the msgpack `TraceWriter.ioctl`
 * makes, through the C API of the writer's appender, `traces/append.h`), answer. An open for O_RDWR of a path
 * other than /dev/fuse is let through here too. Everything else, and anything that does
 * not go the ordinary way before the ioctl is made (a caller whose credentials differ from
 * the recorder's, a fd that cannot be taken, an argument that cannot be read, a path that
 * is not plain ASCII), goes back to Python untouched, which handles it from the start.
 *
 * The ioctl numbers are handed in by trap.py from `dissectors.ioctls`; fuse_backing_map's
 * layout, the record kind and the keys of an IOCTL record (in TraceWriter.ioctl's order)
 * come from `traces/facts.h`, generated from the dissectors and `traces.records`. Backing
 * paths of up to PATH_MAX - 1 bytes are read here; a longer one (possible where pages are
 * larger) goes to Python, which reads any length.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/seccomp.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
#include <limits.h>
#include <unistd.h>

#include "../../traces/append.h"
#include "../../traces/facts.h"

/* The keys of an IOCTL record, in order (FT_IOCTL_KEYS): record_ioctl writes a value for
 * each of these nine; a key added in Python stops the build here until it writes that too. */
#define KEY_ENUM(k) KEY_##k,
#define KEY_NAME(k) #k,
enum ioctl_key { FT_IOCTL_KEYS(KEY_ENUM) N_KEYS };
static const char *const KEY_NAMES[] = {FT_IOCTL_KEYS(KEY_NAME)};
_Static_assert(N_KEYS == FT_IOCTL_NKEYS && N_KEYS == 9 && N_KEYS < 16,
               "TraceWriter.ioctl's keys changed: teach record_ioctl the new one");
_Static_assert(FT_BACKING_MAP_SIZE == 16, "fuse_backing_map changed size");
#ifndef SECCOMP_IOCTL_NOTIF_SET_FLAGS  /* Linux 6.6, newer than this system's headers */
#define SECCOMP_IOCTL_NOTIF_SET_FLAGS _IOW('!', 4, uint64_t)
#define SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP 1
#endif

typedef struct {
    char status[2048];  /* the parts of /proc/TID/status the kernel's checks read */
    int tgid;
} Creds;

/* A thread last seen with the recorder's own credentials, as of generation `gen`; its
 * pidfd tells whether it is still the same thread (a tid can be reused). */
typedef struct {
    int tid, tgid, pidfd;
    unsigned gen;
} Known;

#define KNOWN 64
#define MAX_CRED_CALLS 16
#ifndef PIDFD_THREAD
#define PIDFD_THREAD O_EXCL  /* Linux 6.9 */
#endif

typedef struct {
    PyObject_HEAD
    int listener, nr_ioctl, nr_openat, nr_open;
    unsigned long backing_open, backing_close;
    char relay_link[64];  /* "socket:[INODE]" */
    PyObject *appender;  /* the TraceWriter's traces._append.Appender */
    int recording, trace_errno, have_mine;
    long long open_backing_ids;
    unsigned long long handled, continued;
    Creds mine;
    int cred_calls[MAX_CRED_CALLS], n_cred_calls;
    unsigned gen;  /* bumped by every change of credentials seen */
    Known known[KNOWN];
    int next_known;
} Trap;

/* Append a record through the writer's appender (its rules for a trace that cannot
 * grow), through its C API: no GIL, no Python call. 0 or an errno. */
static TraceAppendAPI *append_api;
static PyTypeObject *appender_type;

static int append(PyObject *appender, const unsigned char *data, size_t len)
{
    struct iovec iov = {(void *)data, len};
    return append_api->write(appender, &iov, 1, 1, 0);
}

/* ------------------------------------------------------------------ msgpack */

typedef struct { unsigned char b[512 + PATH_MAX]; size_t n; } Buf;  /* a record, path included */

static void put_be(Buf *o, uint64_t v, int bytes)
{
    for (int i = bytes - 1; i >= 0; i--)
        o->b[o->n + (size_t)i] = (unsigned char)(v >> (8 * (bytes - 1 - i)));
    o->n += (size_t)bytes;
}

static void mp_int(Buf *o, int64_t v)
{
    if (v >= 0 && v < 128) {
        o->b[o->n++] = (unsigned char)v;
    } else if (v < 0 && v >= -32) {
        o->b[o->n++] = (unsigned char)(0xe0 | (v + 32));
    } else if (v >= 0) {
        int w = v < 0x100 ? 1 : v < 0x10000 ? 2 : v < 0x100000000ll ? 4 : 8;
        o->b[o->n++] = (unsigned char)(w == 1 ? 0xcc : w == 2 ? 0xcd : w == 4 ? 0xce : 0xcf);
        put_be(o, (uint64_t)v, w);
    } else {
        int w = v >= -128 ? 1 : v >= -32768 ? 2 : v >= -2147483648ll ? 4 : 8;
        o->b[o->n++] = (unsigned char)(w == 1 ? 0xd0 : w == 2 ? 0xd1 : w == 4 ? 0xd2 : 0xd3);
        put_be(o, (uint64_t)v, w);
    }
}

static void mp_str(Buf *o, const char *s, size_t len)  /* len < PATH_MAX here */
{
    if (len < 32) {
        o->b[o->n++] = (unsigned char)(0xa0 | len);
    } else if (len < 256) {
        o->b[o->n++] = 0xd9;
        o->b[o->n++] = (unsigned char)len;
    } else {
        o->b[o->n++] = 0xda;
        put_be(o, len, 2);
    }
    memcpy(o->b + o->n, s, len);
    o->n += len;
}

static void mp_key(Buf *o, const char *key) { mp_str(o, key, strlen(key)); }

/* ------------------------------------------------------------------ /proc */

/* The target of /proc/PID/fd/FD: its length, -1 when it cannot be read, -2 when it may
 * be longer than `size` - 1 bytes (readlink cuts silently). */
static int readlink_of(int pid, int fd, char *out, size_t size)
{
    char proc[64];
    snprintf(proc, sizeof proc, "/proc/%d/fd/%d", pid, fd);
    ssize_t n = readlink(proc, out, size);
    if (n < 0)
        return -1;
    if ((size_t)n >= size)
        return -2;
    out[n] = 0;
    return (int)n;
}

/* The status lines that make a thread's credentials (Uid Gid Groups CapEff CapPrm, in the
 * order /proc prints them) and its Tgid. 0, or -1 when it cannot be read. */
static int creds_of(const char *path, Creds *c)
{
    char raw[4096];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t n = read(fd, raw, sizeof raw - 1);
    close(fd);
    if (n <= 0)
        return -1;
    raw[n] = 0;
    size_t used = 0;
    c->tgid = -1;
    for (char *line = raw, *end; *line; line = end + 1) {
        end = strchr(line, '\n');
        if (!end)
            break;
        size_t len = (size_t)(end - line) + 1;
        if (!strncmp(line, "Tgid:", 5)) {
            c->tgid = atoi(line + 5);
        } else if (!strncmp(line, "Uid:", 4) || !strncmp(line, "Gid:", 4)
                   || !strncmp(line, "Groups:", 7) || !strncmp(line, "CapEff:", 7)
                   || !strncmp(line, "CapPrm:", 7)) {
            if (used + len >= sizeof c->status)
                return -1;
            memcpy(c->status + used, line, len);
            used += len;
        }
    }
    c->status[used] = 0;
    return c->tgid > 0 ? 0 : -1;
}

/* The caller's tgid and a pidfd for it (to be closed when *own), or -1 when its
 * credentials differ from the recorder's or cannot be read. Reading /proc/TID/status
 * costs ~20 us, so a thread found equal is remembered until it ends or a thread under the
 * filter changes credentials (setuid & co. and capset are trapped for that). Not seen: an
 * exec of a set-user-ID or file-capability program by a remembered thread, which only a
 * root recorder's servers can do (otherwise NO_NEW_PRIVS is set) and which a FUSE server
 * that then calls BACKING_OPEN itself does not. */
static int same_creds(Trap *t, int tid, int *pidfd, int *own)
{
    Known *k = NULL;
    for (int i = 0; i < KNOWN; i++)
        if (t->known[i].pidfd >= 0 && t->known[i].tid == tid) {
            k = &t->known[i];
            break;
        }
    if (k) {
        struct pollfd p = {.fd = k->pidfd, .events = POLLIN};
        if (k->gen == t->gen && poll(&p, 1, 0) == 0) {  /* readable: that thread ended */
            *pidfd = k->pidfd, *own = 0;
            return k->tgid;
        }
        close(k->pidfd);
        k->pidfd = -1;
    }
    char path[64];
    Creds caller;
    snprintf(path, sizeof path, "/proc/%d/status", tid);
    if (!t->have_mine) {
        if (creds_of("/proc/thread-self/status", &t->mine) < 0)
            return -1;
        t->have_mine = 1;
    }
    if (creds_of(path, &caller) < 0 || strcmp(caller.status, t->mine.status))
        return -1;
    int fd = (int)syscall(SYS_pidfd_open, tid, PIDFD_THREAD);
    if (fd >= 0) {
        k = &t->known[t->next_known];
        t->next_known = (t->next_known + 1) % KNOWN;
        if (k->pidfd >= 0)
            close(k->pidfd);
        *k = (Known){.tid = tid, .tgid = caller.tgid, .pidfd = fd, .gen = t->gen};
        *pidfd = fd, *own = 0;
    } else {
        *pidfd = (int)syscall(SYS_pidfd_open, caller.tgid, 0), *own = 1;
        if (*pidfd < 0)
            return -1;
    }
    return caller.tgid;
}

/* ------------------------------------------------------------------ the loop */

static int respond(Trap *t, uint64_t id, int64_t val, int err, int cont)
{
    struct seccomp_notif_resp resp = {.id = id, .val = cont ? 0 : val, .error = cont ? 0 : -err,
                                      .flags = cont ? SECCOMP_USER_NOTIF_FLAG_CONTINUE : 0};
    return ioctl(t->listener, SECCOMP_IOCTL_NOTIF_SEND, &resp);
}

static int still_valid(Trap *t, uint64_t id)
{
    return ioctl(t->listener, SECCOMP_IOCTL_NOTIF_ID_VALID, &id) == 0;
}

static int read_mem(int tid, uint64_t address, void *out, size_t len)
{
    struct iovec local = {out, len}, remote = {(void *)(uintptr_t)address, len};
    return process_vm_readv(tid, &local, 1, &remote, 1, 0) == (ssize_t)len ? 0 : -1;
}

enum { TO_PYTHON, DONE };

/* An open for O_RDWR: let it through unless it names /dev/fuse. */
static int open_call(Trap *t, const struct seccomp_notif *n)
{
    uint64_t address = n->data.nr == t->nr_openat ? n->data.args[1] : n->data.args[0];
    char path[10];  /* strlen("/dev/fuse") + 1 */
    size_t first = 4096 - (size_t)(address % 4096);  /* the string may end before a page gap */
    if (first > sizeof path)
        first = sizeof path;
    if (!address || read_mem((int)n->pid, address, path, first) < 0)
        return TO_PYTHON;
    if (memchr(path, 0, first) == NULL && first < sizeof path
        && read_mem((int)n->pid, address + first, path + first, sizeof path - first) < 0)
        return TO_PYTHON;
    if (!memcmp(path, "/dev/fuse", sizeof path))
        return TO_PYTHON;
    respond(t, n->id, 0, 0, 1);
    t->continued++;
    return DONE;
}

static void record_ioctl(Trap *t, uint32_t cmd, const unsigned char *arg, size_t size,
                         int result, int err, int tid, int pid, int backing_fd,
                         const char *path)
{
    struct timespec ts;
    Buf o = {.n = 0};
    if (!t->recording)
        return;
    clock_gettime(CLOCK_MONOTONIC, &ts);  /* time.monotonic_ns() */
    o.b[o.n++] = 0x93;
    o.b[o.n++] = FT_KIND_IOCTL;
    o.b[o.n++] = 0xcf;
    put_be(&o, (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec, 8);
    o.b[o.n++] = 0x80 | N_KEYS;  /* a fixmap of the keys of TraceWriter.ioctl, in its order */
    for (enum ioctl_key k = 0; k < N_KEYS; k++) {
        mp_key(&o, KEY_NAMES[k]);
        switch (k) {
        case KEY_cmd: mp_int(&o, cmd); break;
        case KEY_arg:
            o.b[o.n++] = 0xc4, o.b[o.n++] = (unsigned char)size;
            memcpy(o.b + o.n, arg, size), o.n += size;
            break;
        case KEY_result: mp_int(&o, result); break;
        case KEY_errno: mp_int(&o, err); break;
        case KEY_tid: mp_int(&o, tid); break;
        case KEY_pid: mp_int(&o, pid); break;
        case KEY_fd:
            if (backing_fd >= 0)
                mp_int(&o, backing_fd);
            else
                o.b[o.n++] = 0xc0;
            break;
        case KEY_path:
            if (path)
                mp_str(&o, path, strlen(path));
            else
                o.b[o.n++] = 0xc0;
            break;
        case KEY_out: o.b[o.n++] = 0xc0; break;
        case N_KEYS: break;
        }
    }
    int e = append(t->appender, o.b, o.n);
    if (e) {
        t->trace_errno = e;
        t->recording = 0;  /* go on unrecorded; Python reports it */
    }
}

/* BACKING_OPEN / BACKING_CLOSE on the relay, made on the real device. */
static int ioctl_call(Trap *t, const struct seccomp_notif *n, int device)
{
    uint32_t cmd = (uint32_t)n->data.args[1];
    int tid = (int)n->pid, fd = (int)(uint32_t)n->data.args[0];
    char link[80], path[PATH_MAX] = "";
    unsigned char arg[16], buf[16];
    size_t size = (cmd >> 16) & 0x3FFF;
    int is_open = cmd == t->backing_open, backing_fd = -1, have_path = 0;
    if ((!is_open && cmd != t->backing_close) || device < 0 || size > sizeof arg)
        return TO_PYTHON;
    if (readlink_of(tid, fd, link, sizeof link) < 0 || strcmp(link, t->relay_link)) {
        respond(t, n->id, 0, 0, 1);  /* a real /dev/fuse or another device: untouched */
        t->continued++;
        return DONE;
    }
    if (read_mem(tid, n->data.args[2], arg, size) < 0)
        return TO_PYTHON;
    if (!still_valid(t, n->id)) {
        respond(t, n->id, 0, 0, 1);
        return DONE;
    }
    int pidfd, own, ours = -1, pid = same_creds(t, tid, &pidfd, &own);
    if (pid < 0)
        return TO_PYTHON;  /* not ours to be: creds.assumed() in Python */
    memcpy(buf, arg, size);
    if (is_open) {
        memcpy(&backing_fd, arg + FT_BACKING_MAP_FD_AT, sizeof backing_fd);
        int n_path = readlink_of(pid, backing_fd, path, sizeof path);
        have_path = n_path >= 0;
        for (int i = 0; i < n_path; i++)
            if ((unsigned char)path[i] >= 0x80)
                n_path = -2;  /* str with surrogates in Python: its writer decides */
        if (n_path != -2)  /* -2: odd or longer than PATH_MAX - 1: Python reads it */
            ours = (int)syscall(SYS_pidfd_getfd, pidfd, backing_fd, 0);
    }
    if (own)
        close(pidfd);
    if (is_open && ours < 0)
        return TO_PYTHON;  /* EBADF or a refusal (Python says which), or an odd path */
    if (is_open)
        memcpy(buf + FT_BACKING_MAP_FD_AT, &ours, sizeof ours);
    int result = ioctl(device, cmd, buf), err = result < 0 ? errno : 0;
    if (ours >= 0)
        close(ours);
    record_ioctl(t, cmd, arg, size, result, err, tid, pid, backing_fd, have_path ? path : NULL);
    if (!err)
        t->open_backing_ids += is_open ? 1 : -1;
    respond(t, n->id, result, err, 0);
    t->handled++;
    return DONE;
}

/* Wait for and handle notifications until one is Python's: 0 and *out filled, 1 on
 * timeout, 2 when every process under the filter is gone, -1 with errno. */
static int serve(Trap *t, int device, int timeout_ms, struct seccomp_notif *out)
{
    struct pollfd p = {.fd = t->listener, .events = POLLIN};
    for (;;) {
        int r = poll(&p, 1, timeout_ms);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return -1;
        if (r == 0)
            return 1;
        if ((p.revents & (POLLHUP | POLLERR)) && !(p.revents & POLLIN))
            return 2;
        memset(out, 0, sizeof *out);  /* NOTIF_RECV wants a zeroed buffer */
        if (ioctl(t->listener, SECCOMP_IOCTL_NOTIF_RECV, out) < 0) {
            if (errno == EINTR || errno == ENOENT)
                continue;  /* the caller died or was interrupted before we got it */
            return -1;
        }
        int nr = out->data.nr, how = TO_PYTHON;
        for (int i = 0; i < t->n_cred_calls; i++)
            if (nr == t->cred_calls[i]) {
                t->gen++;  /* before the change is made: the next look reads /proc again */
                respond(t, out->id, 0, 0, 1);
                how = DONE;
            }
        if (how == DONE)
            continue;
        if (nr == t->nr_ioctl)
            how = ioctl_call(t, out, device);
        else if (nr == t->nr_openat || nr == t->nr_open)
            how = open_call(t, out);
        if (how == TO_PYTHON)
            return 0;
    }
}

static PyObject *Trap_next(Trap *self, PyObject *args)
{
    int device, timeout_ms, r;
    struct seccomp_notif note;
    if (!PyArg_ParseTuple(args, "ii", &device, &timeout_ms))
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    r = serve(self, device, timeout_ms, &note);
    Py_END_ALLOW_THREADS
    if (r < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    if (r == 1)
        Py_RETURN_NONE;
    if (r == 2)
        Py_RETURN_FALSE;
    return PyBytes_FromStringAndSize((const char *)&note, sizeof note);
}

static int Trap_init(Trap *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"listener", "relay_inode", "appender", "nr_ioctl", "nr_openat",
                             "nr_open", "backing_open", "backing_close", "cred_changes", NULL};
    unsigned long long inode;
    PyObject *appender, *cred_changes;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "iKO!iiikkO", kwlist, &self->listener, &inode,
                                     appender_type, &appender, &self->nr_ioctl, &self->nr_openat,
                                     &self->nr_open, &self->backing_open, &self->backing_close,
                                     &cred_changes))
        return -1;
    PyObject *calls = PySequence_Fast(cred_changes, "cred_changes must be a sequence of ints");
    if (!calls)
        return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(calls);
    for (Py_ssize_t i = 0; i < n && i < MAX_CRED_CALLS; i++)
        self->cred_calls[i] = (int)PyLong_AsLong(PySequence_Fast_GET_ITEM(calls, i));
    self->n_cred_calls = n < MAX_CRED_CALLS ? (int)n : MAX_CRED_CALLS;
    Py_DECREF(calls);
    if (PyErr_Occurred())
        return -1;
    for (int i = 0; i < KNOWN; i++)
        self->known[i].pidfd = -1;
    snprintf(self->relay_link, sizeof self->relay_link, "socket:[%llu]", inode);
    /* The caller waits for each answer: wake the two of us up on one CPU, one after the
     * other, instead of through the scheduler (refused before 6.6: a little slower). */
    if (ioctl(self->listener, SECCOMP_IOCTL_NOTIF_SET_FLAGS, SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP) < 0) { }
    Py_INCREF(appender);
    Py_XSETREF(self->appender, appender);
    self->recording = 1;
    return 0;
}

static void Trap_dealloc(Trap *self)
{
    for (int i = 0; i < KNOWN; i++)
        if (self->known[i].pidfd >= 0)
            close(self->known[i].pidfd);
    Py_XDECREF(self->appender);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *Trap_stop_recording(Trap *self, PyObject *unused)
{
    self->recording = 0;
    Py_RETURN_NONE;
}

static PyObject *Trap_get_open(Trap *self, void *c) { return PyLong_FromLongLong(self->open_backing_ids); }
static PyObject *Trap_get_handled(Trap *self, void *c) { return PyLong_FromUnsignedLongLong(self->handled); }
static PyObject *Trap_get_continued(Trap *self, void *c) { return PyLong_FromUnsignedLongLong(self->continued); }
static PyObject *Trap_get_trace_errno(Trap *self, void *c) { return PyLong_FromLong(self->trace_errno); }

static PyMethodDef Trap_methods[] = {
    {"next", (PyCFunction)Trap_next, METH_VARARGS,
     "next(device_fd, timeout_ms): handle notifications until one is Python's: its "
     "struct seccomp_notif bytes; None after timeout_ms without one; False when the "
     "listener hung up"},
    {"stop_recording", (PyCFunction)Trap_stop_recording, METH_NOARGS, "go on without recording"},
    {NULL}};

static PyGetSetDef Trap_getset[] = {
    {"open_backing_ids", (getter)Trap_get_open, NULL, "backing ids opened here minus closed", NULL},
    {"handled", (getter)Trap_get_handled, NULL, "ioctls made and recorded here", NULL},
    {"continued", (getter)Trap_get_continued, NULL, "calls let through here", NULL},
    {"trace_errno", (getter)Trap_get_trace_errno, NULL, "errno of a failed trace write, or 0", NULL},
    {NULL}};

static PyTypeObject TrapType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "inspector.exchange._trapfast.Trap",
    .tp_doc = "The seccomp trap's per-call loop (see trap.py)",
    .tp_basicsize = sizeof(Trap),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Trap_init,
    .tp_dealloc = (destructor)Trap_dealloc,
    .tp_methods = Trap_methods,
    .tp_getset = Trap_getset,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_trapfast", "The seccomp trap's hot path (see _trapfast.c)", -1,
};

PyMODINIT_FUNC PyInit__trapfast(void)
{
    if (trace_append_import(&append_api, &appender_type) < 0 || PyType_Ready(&TrapType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m)
        return NULL;
    Py_INCREF(&TrapType);
    if (PyModule_AddObject(m, "Trap", (PyObject *)&TrapType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
