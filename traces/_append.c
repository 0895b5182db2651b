/*
 * Whole-record appends to a trace file, from many threads, without a system call per
 * record (`traces._append.Appender`; its C API is `append.h`).
 *
 * A regular file is appended through a shared mapping. Space is allocated ahead in
 * CHUNKs with fallocate (which also extends the file), so a full disk is met there, as
 * ENOSPC, and never as a SIGBUS on a page the disk could not hold. A record takes its
 * slot with one compare-and-swap on `tail` (record order = reservation order), then is
 * copied into the mapping with no lock held: its first byte last, so a slot that was
 * reserved but never filled (a writer killed mid-copy) starts with a zero byte, and no
 * record starts with one (records are msgpack arrays, the header a map). `kill -9` of
 * the process loses nothing already appended: the page cache holds a MAP_SHARED page
 * whoever dies. While the appender is open it holds an exclusive flock on the file, which is
 * how a reader tells "being written" (a zero byte is a slot still being filled) from
 * "writer gone" (zeros are a never-filled slot or the allocated tail: see
 * `traces/stream.py`). `close()` cuts the file to its real length.
 *
 * Anything else (a pipe, a file opened write-only, a filesystem without fallocate) takes
 * the plain path: one writev per record under a lock, a failed write cut back off the
 * file, and a fallocate KEEP_SIZE reserve where the file allows it.
 *
 * On both paths the first append that fails stops the trace for everybody (later ones
 * fail at once with the same errno, and the file is a prefix of the session with no
 * hole: the stop waits for the slots reserved before it), and keeps where and when.
 * RESERVE bytes past the last record stay allocated: an ordinary append that would eat
 * into them fails instead, so the closing records (`closing`: the note saying where
 * recording stopped, the session's end) still fit on a disk that filled up.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "append.h"

#define RESERVE (16u << 10)       /* room kept for the closing records */
#define CHUNK (4ull << 20)        /* allocated ahead at a time, when the disk has it */
#define RESERVE_GROW (1u << 20)   /* plain path: reserved ahead at a time */
#define WINDOW_SHIFT 30           /* the file is mapped 1 GiB at a time ... */
#define WINDOW (1ull << WINDOW_SHIFT)
#define WINDOWS 4096              /* ... up to 4 TiB */
#define STOP_BIT (1ull << 63)     /* in `tail`: no more ordinary reservations */
#define MAX_IOV 64

typedef struct {
    PyObject_HEAD
    int fd;
    int mapped;                  /* appends go through the mapping, else writev */
    pthread_mutex_t lock;        /* mapped: growing and stopping; plain: every append */
    uint64_t base;               /* the file's size when the appender took it */
    _Atomic uint64_t tail;       /* mapped: the next free byte, | STOP_BIT once stopped */
    _Atomic uint64_t allocated;  /* mapped: allocated (and the file sized) up to here */
    char *_Atomic *windows;      /* mapped: WINDOWS pointers, each mapped once, kept */
    _Atomic unsigned long long records, bytes;  /* whole records appended, their bytes */
    _Atomic int users;           /* appends under way: close() waits for them */
    _Atomic int closed;
    _Atomic int stopped;         /* errno of the append that stopped the trace, or 0 */
    _Atomic int stop_known;      /* stop_* below are set */
    unsigned long long stop_records, stop_bytes, stop_ns;
    unsigned long long reserved_to;  /* plain: blocks are allocated up to here */
    int reserving;                   /* plain: cleared when the file cannot reserve */
} Appender;

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);  /* time.monotonic_ns() */
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* ------------------------------------------------------------------ stopping */

/* Stop the trace with `err` (the first stop wins; its errno is returned). Mapped: no
 * reservation is taken after it, and it waits for the slots taken before it, so the
 * stop's record and byte counts describe a file with no hole. Called with `lock` held. */
static int stop_locked(Appender *a, int err)
{
    int none = 0;
    if (!atomic_compare_exchange_strong(&a->stopped, &none, err))
        return none;
    if (a->mapped) {
        uint64_t frozen = atomic_fetch_or(&a->tail, STOP_BIT) & ~STOP_BIT;
        while (a->base + atomic_load(&a->bytes) < frozen)
            sched_yield();  /* a writer is copying into a slot it reserved before */
    }
    a->stop_records = atomic_load(&a->records);
    a->stop_bytes = atomic_load(&a->bytes);
    a->stop_ns = now_ns();
    atomic_store(&a->stop_known, 1);
    return err;
}

static int stop(Appender *a, int err)
{
    pthread_mutex_lock(&a->lock);
    err = stop_locked(a, err);
    pthread_mutex_unlock(&a->lock);
    return err;
}

/* ------------------------------------------------------------------ mapped path */

/* Allocate (and map) the file up to `need` at least: a CHUNK ahead when the disk has it,
 * less as it fills up; an errno when it has not got `need` either. */
static int grow(Appender *a, uint64_t need)
{
    int err = 0;
    pthread_mutex_lock(&a->lock);
    uint64_t have = atomic_load(&a->allocated);
    if (need <= have)
        goto out;
    if (need > (uint64_t)WINDOWS * WINDOW) {
        err = EFBIG;
        goto out;
    }
    uint64_t end = need;
    for (int shift = 0; shift <= 12; shift += 4) {  /* less ahead on a disk filling up */
        end = need + (shift < 12 ? CHUNK >> shift : 0);
        if (end > (uint64_t)WINDOWS * WINDOW)
            end = (uint64_t)WINDOWS * WINDOW;
        err = fallocate(a->fd, 0, (off_t)have, (off_t)(end - have)) < 0 ? errno : 0;
        if (err != ENOSPC && err != EDQUOT)
            break;
    }
    if (err)
        goto out;
    for (uint64_t w = have >> WINDOW_SHIFT; w <= (end - 1) >> WINDOW_SHIFT; w++) {
        if (atomic_load(&a->windows[w]))
            continue;
        void *p = mmap(NULL, WINDOW, PROT_READ | PROT_WRITE, MAP_SHARED, a->fd,
                       (off_t)(w << WINDOW_SHIFT));
        if (p == MAP_FAILED) {
            err = errno;
            goto out;
        }
        atomic_store(&a->windows[w], (char *)p);
    }
    atomic_store(&a->allocated, end);
out:
    pthread_mutex_unlock(&a->lock);
    return err;
}

/* Copy iov into the slot at `at`, the first byte last (see the top of the file). */
static void copy_in(Appender *a, uint64_t at, const struct iovec *iov, int iovcnt)
{
    _Atomic unsigned char *first_at = NULL;
    unsigned char first = 0;
    for (int i = 0; i < iovcnt; i++) {
        const unsigned char *src = iov[i].iov_base;
        size_t left = iov[i].iov_len;
        while (left) {
            char *window = atomic_load(&a->windows[at >> WINDOW_SHIFT]);
            uint64_t off = at & (WINDOW - 1);
            size_t n = left < WINDOW - off ? left : (size_t)(WINDOW - off);
            unsigned char *dst = (unsigned char *)window + off;
            if (!first_at) {
                first_at = (_Atomic unsigned char *)dst;
                first = src[0];
                memcpy(dst + 1, src + 1, n - 1);
            } else {
                memcpy(dst, src, n);
            }
            src += n, at += n, left -= n;
        }
    }
    if (first_at)
        atomic_store_explicit(first_at, first, memory_order_release);
}

static int mapped_append(Appender *a, const struct iovec *iov, int iovcnt, size_t total,
                         unsigned count, int closing)
{
    uint64_t t = atomic_load(&a->tail), start;
    for (;;) {
        if ((t & STOP_BIT) && !closing)
            return atomic_load(&a->stopped);
        start = t & ~STOP_BIT;
        uint64_t need = start + total + (closing ? 0 : RESERVE);
        if (need > atomic_load(&a->allocated)) {
            int err = grow(a, need);
            if (err)
                return closing ? err : stop(a, err);
            t = atomic_load(&a->tail);
            continue;
        }
        if (atomic_compare_exchange_weak(&a->tail, &t, (t & STOP_BIT) | (start + total)))
            break;
    }
    copy_in(a, start, iov, iovcnt);
    atomic_fetch_add(&a->records, count);
    atomic_fetch_add(&a->bytes, total);
    return 0;
}

/* ------------------------------------------------------------------ plain path */

/* Make room for `total` more bytes with RESERVE still free after them; an errno when the
 * disk has not got it (the reserve itself is kept). */
static int reserve_locked(Appender *a, size_t total)
{
    unsigned long long at = a->base + a->bytes, need = at + total + RESERVE;
    if (!a->reserving || need <= a->reserved_to)
        return 0;
    if (fallocate(a->fd, FALLOC_FL_KEEP_SIZE, (off_t)at,
                  (off_t)(total + RESERVE + RESERVE_GROW)) == 0) {
        a->reserved_to = need + RESERVE_GROW;
        return 0;
    }
    if (errno == ENOSPC && fallocate(a->fd, FALLOC_FL_KEEP_SIZE, (off_t)at,
                                     (off_t)(total + RESERVE)) == 0) {
        a->reserved_to = need;
        return 0;
    }
    if (errno == ENOSPC || errno == EDQUOT || errno == EIO)
        return errno;
    a->reserving = 0;  /* EOPNOTSUPP, ESPIPE, ENODEV …: appends take their chances */
    return 0;
}

/* Write every byte of iov, or cut what was written back off and return the errno (which
 * stops the trace unless `closing`). */
static int plain_append(Appender *a, const struct iovec *in, int iovcnt, size_t total,
                        unsigned count, int closing)
{
    struct iovec vec[MAX_IOV], *iov = vec;
    size_t done = 0;
    int err = 0;
    memcpy(vec, in, sizeof *in * (size_t)iovcnt);
    pthread_mutex_lock(&a->lock);
    if (!closing && a->stopped) {
        err = a->stopped;
        goto out;
    }
    err = closing ? 0 : reserve_locked(a, total);
    if (err) {
        err = stop_locked(a, err);
        goto out;
    }
    while (done < total) {
        ssize_t n = writev(a->fd, iov, iovcnt);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            err = errno;
            if (done) {  /* keep a clean prefix (this drops the reserve: make it again) */
                if (ftruncate(a->fd, (off_t)(a->base + a->bytes)) < 0) { /* nothing better */ }
                a->reserved_to = a->base + a->bytes;
            }
            if (!closing)
                err = stop_locked(a, err);
            goto out;
        }
        done += (size_t)n;
        while (n > 0 && iovcnt > 0) {  /* skip what went out */
            if ((size_t)n >= iov->iov_len) {
                n -= (ssize_t)iov->iov_len;
                iov++;
                iovcnt--;
            } else {
                iov->iov_base = (char *)iov->iov_base + n;
                iov->iov_len -= (size_t)n;
                n = 0;
            }
        }
    }
    a->records += count;
    a->bytes += total;
out:
    pthread_mutex_unlock(&a->lock);
    return err;
}

/* ------------------------------------------------------------------ the C API */

static int appender_write(PyObject *self, const struct iovec *iov, int iovcnt, unsigned count,
                          int closing)
{
    Appender *a = (Appender *)self;
    size_t total = 0;
    int err;
    if (iovcnt < 0 || iovcnt > MAX_IOV)
        return EINVAL;
    for (int i = 0; i < iovcnt; i++)
        total += iov[i].iov_len;
    atomic_fetch_add(&a->users, 1);
    if (atomic_load(&a->closed))
        err = EBADF;
    else if (!total)
        err = (atomic_fetch_add(&a->records, count), 0);
    else if (a->mapped)
        err = mapped_append(a, iov, iovcnt, total, count, closing);
    else
        err = plain_append(a, iov, iovcnt, total, count, closing);
    atomic_fetch_sub(&a->users, 1);
    return err;
}

static TraceAppendAPI api = {appender_write};

/* ------------------------------------------------------------------ the Python type */

/* Whether this descriptor can be appended through a mapping: a regular file open for
 * reading and writing, on a filesystem that allocates with fallocate. */
static int can_map(int fd, uint64_t size)
{
    struct stat st;
    int flags = fcntl(fd, F_GETFL);
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || flags < 0 ||
            (flags & O_ACCMODE) != O_RDWR)
        return 0;
    if (fallocate(fd, FALLOC_FL_KEEP_SIZE, (off_t)size, RESERVE) < 0 && errno != ENOSPC &&
            errno != EDQUOT)
        return 0;  /* EOPNOTSUPP …: a full disk would be met as SIGBUS */
    void *p = mmap(NULL, WINDOW, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED)
        return 0;
    munmap(p, WINDOW);
    return 1;
}

static int Appender_init(Appender *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"fd", NULL};
    int fd;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "i", kwlist, &fd))
        return -1;
    if (self->fd >= 0) {
        PyErr_SetString(PyExc_RuntimeError, "Appender already initialised");
        return -1;
    }
    struct stat st;
    if (fstat(fd, &st) < 0)
        return PyErr_SetFromErrno(PyExc_OSError), -1;
    self->base = S_ISREG(st.st_mode) ? (uint64_t)st.st_size : 0;
    self->fd = fd;
    self->reserving = 1;
    self->reserved_to = self->base;
    if (can_map(fd, self->base)) {
        self->windows = calloc(WINDOWS, sizeof *self->windows);
        if (!self->windows)
            return PyErr_NoMemory(), -1;
        atomic_store(&self->allocated, self->base);  /* mapped by the first append */
        atomic_store(&self->tail, self->base);
        /* a reader testing for a writer holds a shared lock for a moment: wait it out,
         * but never for another writer (then readers cannot tell it is live) */
        for (int i = 0; i < 100 && flock(fd, LOCK_EX | LOCK_NB) < 0 && errno == EWOULDBLOCK; i++)
            usleep(1000);
        self->mapped = 1;
    }
    return 0;
}

static PyObject *Appender_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    Appender *self = (Appender *)type->tp_alloc(type, 0);
    if (self) {
        self->fd = -1;
        pthread_mutex_init(&self->lock, NULL);
    }
    return (PyObject *)self;
}

/* Wait for appends under way, cut the file to its records, unmap, close. */
static void close_appender(Appender *a)
{
    atomic_store(&a->closed, 1);
    while (atomic_load(&a->users))
        sched_yield();
    pthread_mutex_lock(&a->lock);
    int fd = a->fd;
    a->fd = -1;
    if (fd >= 0 && a->mapped) {
        if (ftruncate(fd, (off_t)(atomic_load(&a->tail) & ~STOP_BIT)) < 0) {
            /* the zeros allocated ahead stay: readers take them as the end */
        }
        for (int w = 0; w < WINDOWS && a->windows[w]; w++)
            munmap(a->windows[w], WINDOW);
    } else if (fd >= 0 && a->reserving && a->reserved_to > a->base + a->bytes &&
               ftruncate(fd, (off_t)(a->base + a->bytes)) < 0) {
        /* the reserve stays allocated: harmless */
    }
    pthread_mutex_unlock(&a->lock);
    if (fd >= 0)
        close(fd);
}

static void Appender_dealloc(Appender *self)
{
    close_appender(self);
    free(self->windows);
    pthread_mutex_destroy(&self->lock);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *Appender_append(Appender *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"data", "count", "closing", NULL};
    Py_buffer data;
    unsigned count = 1;
    int closing = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "y*|Ip", kwlist, &data, &count, &closing))
        return NULL;
    struct iovec iov = {data.buf, (size_t)data.len};
    int err;
    Py_BEGIN_ALLOW_THREADS
    err = appender_write((PyObject *)self, &iov, 1, count, closing);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&data);
    if (err == EBADF && atomic_load(&self->closed)) {
        PyErr_SetString(PyExc_ValueError, "trace writer is closed");
        return NULL;
    }
    if (err) {
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    Py_RETURN_NONE;
}

static PyObject *Appender_stop(Appender *self, PyObject *arg)
{
    int err = (int)PyLong_AsLong(arg);
    if (err == -1 && PyErr_Occurred())
        return NULL;
    if (err <= 0)
        return PyErr_Format(PyExc_ValueError, "stop needs an errno, not %d", err);
    Py_BEGIN_ALLOW_THREADS
    stop(self, err);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *Appender_close(Appender *self, PyObject *unused)
{
    Py_BEGIN_ALLOW_THREADS
    close_appender(self);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *Appender_get_records(Appender *self, void *c) { return PyLong_FromUnsignedLongLong(atomic_load(&self->records)); }
static PyObject *Appender_get_bytes(Appender *self, void *c) { return PyLong_FromUnsignedLongLong(atomic_load(&self->bytes)); }
static PyObject *Appender_get_closed(Appender *self, void *c) { return PyBool_FromLong(atomic_load(&self->closed)); }
static PyObject *Appender_get_mapped(Appender *self, void *c) { return PyBool_FromLong(self->mapped); }
static PyObject *Appender_get_stopped(Appender *self, void *c)
{
    if (!atomic_load(&self->stop_known))
        Py_RETURN_NONE;
    return Py_BuildValue("(iKKK)", atomic_load(&self->stopped), self->stop_records,
                         self->stop_bytes, self->stop_ns);
}

static PyMethodDef Appender_methods[] = {
    {"append", (PyCFunction)(void (*)(void))Appender_append, METH_VARARGS | METH_KEYWORDS,
     "append(data, count=1, closing=False): append `data` (`count` records) whole, or "
     "raise OSError with nothing of it in the trace; the first failure stops the trace, "
     "and after it only `closing` appends (into the reserve) are tried"},
    {"stop", (PyCFunction)Appender_stop, METH_O,
     "stop(errno): stop the trace as a failed append would (a compressor that cannot "
     "write); a no-op when it is stopped already"},
    {"close", (PyCFunction)Appender_close, METH_NOARGS,
     "wait for appends under way, cut the file to its records, close it"},
    {NULL}};

static PyGetSetDef Appender_getset[] = {
    {"records", (getter)Appender_get_records, NULL, "records appended", NULL},
    {"bytes_written", (getter)Appender_get_bytes, NULL, "bytes appended", NULL},
    {"closed", (getter)Appender_get_closed, NULL, "whether close() was called", NULL},
    {"mapped", (getter)Appender_get_mapped, NULL,
     "appends go through a shared mapping (else one writev each)", NULL},
    {"stopped", (getter)Appender_get_stopped, NULL,
     "(errno, records, bytes, monotonic ns) of the append that stopped the trace, or None", NULL},
    {NULL}};

static PyTypeObject AppenderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "traces._append.Appender",
    .tp_doc = "Appender(fd): whole-record appends to a trace file from any thread (see "
              "_append.c); it owns `fd` and closes it",
    .tp_basicsize = sizeof(Appender),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = Appender_new,
    .tp_init = (initproc)Appender_init,
    .tp_dealloc = (destructor)Appender_dealloc,
    .tp_methods = Appender_methods,
    .tp_getset = Appender_getset,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_append", "The trace appender (see _append.c and append.h)", -1,
};

PyMODINIT_FUNC PyInit__append(void)
{
    if (PyType_Ready(&AppenderType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m)
        return NULL;
    PyObject *capsule = PyCapsule_New(&api, TRACE_APPEND_CAPSULE, NULL);
    Py_INCREF(&AppenderType);
    if (!capsule || PyModule_AddObject(m, "API", capsule) < 0 ||
        PyModule_AddObject(m, "Appender", (PyObject *)&AppenderType) < 0) {
        Py_XDECREF(capsule);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
