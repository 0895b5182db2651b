/*
 * The recorder's hot path in C: the relay loop.
 *
 * Why native: in Python each relayed message cost ~35 us of CPU (interpreter, msgpack,
 * stats), more than a fast C server spends answering it. Here one loop serves both
 * directions with the GIL released and does only what every ordinary message needs: read
 * it, note its unique, cut its file data to the snap length, append its record to the
 * trace (before forwarding, through the Python writer's appender), forward it. Anything
 * else (INIT, which may be altered; a reply cut into pieces; a refused write; the end)
 * goes back to Python (`relay.py`), which keeps every decision that is not per-message
 * arithmetic.
 *
 * Protocol knowledge is not copied here: the opcode tables (which messages carry file data
 * and where it starts, which requests get no reply, which go to Python) are handed in by
 * `relay.py` from `dissectors`.
 *
 * Records are appended through the C API of the trace's `traces._append.Appender`
 * (`traces/append.h`), which `traces.TraceWriter` appends through too: see `_append.c`
 * for what happens when the disk fills up.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "../../traces/append.h"
#include "../../traces/le.h"

#define TABLE 64          /* opcodes and notify codes below this are handled here */
#define IN_HEADER 40      /* sizeof(struct fuse_in_header) */
#define OUT_HEADER 16     /* sizeof(struct fuse_out_header) */
#define KIND_REQUEST 1    /* traces.records.Kind */
#define KIND_REPLY 2

/* ------------------------------------------------------------------ pending uniques */

/* unique -> opcode of requests awaiting a reply: open addressing, linear probing,
 * backward-shift deletion; unique 0 marks an empty slot (the kernel never uses it). */
typedef struct {
    uint64_t unique;
    uint32_t opcode;
} Slot;

typedef struct {
    pthread_mutex_t lock;
    Slot *slots;
    size_t mask, used;
} Pending;

static size_t slot_of(const Pending *p, uint64_t unique)
{
    return (size_t)((unique * 0x9E3779B97F4A7C15ull) >> 20) & p->mask;
}

static int pending_grow(Pending *p)
{
    size_t old_size = p->mask + 1, size = old_size * 2;
    Slot *old = p->slots, *slots = calloc(size, sizeof(Slot));
    if (!slots)
        return -1;
    p->slots = slots;
    p->mask = size - 1;
    for (size_t i = 0; i < old_size; i++) {
        if (!old[i].unique)
            continue;
        size_t j = slot_of(p, old[i].unique);
        while (slots[j].unique)
            j = (j + 1) & p->mask;
        slots[j] = old[i];
    }
    free(old);
    return 0;
}

static void pending_put(Pending *p, uint64_t unique, uint32_t opcode)
{
    if (!unique)
        return;
    pthread_mutex_lock(&p->lock);
    if ((p->used + 1) * 2 > p->mask + 1 && pending_grow(p) < 0) {
        pthread_mutex_unlock(&p->lock);
        return;  /* out of memory: this reply's data is kept whole, nothing worse */
    }
    size_t i = slot_of(p, unique);
    while (p->slots[i].unique && p->slots[i].unique != unique)
        i = (i + 1) & p->mask;
    if (!p->slots[i].unique)
        p->used++;
    p->slots[i].unique = unique;
    p->slots[i].opcode = opcode;
    pthread_mutex_unlock(&p->lock);
}

/* The opcode pending for `unique`, or -1; removed when `pop`. */
static long pending_take(Pending *p, uint64_t unique, int pop)
{
    long found = -1;
    if (!unique)
        return -1;
    pthread_mutex_lock(&p->lock);
    size_t i = slot_of(p, unique);
    while (p->slots[i].unique && p->slots[i].unique != unique)
        i = (i + 1) & p->mask;
    if (p->slots[i].unique) {
        found = p->slots[i].opcode;
        if (pop) {
            size_t hole = i, j = i;
            for (;;) {  /* shift later members of the run back over the hole */
                j = (j + 1) & p->mask;
                if (!p->slots[j].unique)
                    break;
                size_t home = slot_of(p, p->slots[j].unique);
                if (((j - home) & p->mask) >= ((j - hole) & p->mask)) {
                    p->slots[hole] = p->slots[j];
                    hole = j;
                }
            }
            p->slots[hole].unique = 0;
            p->used--;
        }
    }
    pthread_mutex_unlock(&p->lock);
    return found;
}

/* ------------------------------------------------------------------ Pump */

typedef struct {
    PyObject_HEAD
    int devfd, sockfd;
    PyObject *appender;  /* a traces._append.Appender, written through `append_api` */
    Py_ssize_t snaplen, bufsize;
    int16_t data_request[TABLE], data_reply[TABLE], data_notify[TABLE];
    uint8_t no_reply[TABLE], to_python[TABLE];
    Pending pending;
    unsigned char *request_buf, *reply_buf;
    unsigned long long requests, replies, request_bytes, reply_bytes;
    int recording;     /* cleared when a trace write failed, here or in Python */
    int dev_open, sock_open;  /* until /dev/fuse says ENODEV, until the socket's EOF */
    size_t held;       /* a recorded request the full socket has not taken yet */
    int pieces;        /* Python is putting a spliced reply together: hand it everything */
    uint64_t last_reply_ns;  /* when the socket last gave Python a message */
    uint64_t spin_ns;
    int piece_wait_ms;
} Pump;

#if defined(__x86_64__) || defined(__i386__)
#define cpu_relax() __builtin_ia32_pause()
#elif defined(__aarch64__)
#define cpu_relax() __asm__ __volatile__("yield")
#else
#define cpu_relax() do {} while (0)
#endif

static TraceAppendAPI *append_api;
static PyTypeObject *appender_type;

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);  /* time.monotonic_ns() */
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static size_t put_be(unsigned char *out, uint64_t value, int bytes)
{
    for (int i = bytes - 1; i >= 0; i--, value >>= 8)
        out[i] = (unsigned char)value;
    return (size_t)bytes;
}

/* Append the record [kind, ts, raw[:kept]] (+ {"len": true_len} when cut), the msgpack
 * the Python writer would make. Called without the GIL. */
static void record(Pump *self, int kind, const unsigned char *raw, size_t kept, size_t true_len)
{
    unsigned char head[1 + 1 + 9 + 5], tail[1 + 4 + 5];
    size_t h = 0, t = 0;
    if (!self->recording)
        return;
    head[h++] = true_len ? 0x94 : 0x93;  /* fixarray */
    head[h++] = (unsigned char)kind;       /* positive fixint */
    head[h++] = 0xcf;                      /* uint64 */
    h += put_be(head + h, now_ns(), 8);
    if (kept < 0x100) {
        head[h++] = 0xc4;
        h += put_be(head + h, kept, 1);
    } else if (kept < 0x10000) {
        head[h++] = 0xc5;
        h += put_be(head + h, kept, 2);
    } else {
        head[h++] = 0xc6;
        h += put_be(head + h, kept, 4);
    }
    if (true_len) {
        memcpy(tail, "\x81\xa3len\xce", 6);  /* fixmap 1, fixstr "len", uint32 */
        t = 6 + put_be(tail + 6, true_len, 4);
    }
    struct iovec iov[3] = {{head, h}, {(void *)raw, kept}, {tail, t}};
    int err = append_api->write(self->appender, iov, t ? 3 : 2, 1, 0);
    if (err)
        self->recording = 0;  /* relay on without recording; the appender keeps why */
}

/* How much of a message to keep: all of it, or its file data cut to the snap length. */
static size_t kept_of(const Pump *self, size_t n, int data_at)
{
    if (!self->snaplen || data_at < 0 || n <= (size_t)data_at + (size_t)self->snaplen)
        return n;
    return (size_t)data_at + (size_t)self->snaplen;
}


/* Fill a table from a {int: int} dict (missing keys: `none`). */
static int fill_table(PyObject *dict, int16_t *table, int16_t none)
{
    for (int i = 0; i < TABLE; i++)
        table[i] = none;
    PyObject *key, *value;
    Py_ssize_t pos = 0;
    while (PyDict_Next(dict, &pos, &key, &value)) {
        long k = PyLong_AsLong(key), v = PyLong_AsLong(value);
        if (PyErr_Occurred())
            return -1;
        if (k < 0 || k >= TABLE || v < 0 || v > INT16_MAX) {
            PyErr_Format(PyExc_ValueError, "table entry %ld: %ld out of range", k, v);
            return -1;
        }
        table[k] = (int16_t)v;
    }
    return 0;
}

static int fill_set(PyObject *iterable, uint8_t *table)
{
    memset(table, 0, TABLE);
    PyObject *it = PyObject_GetIter(iterable), *item;
    if (!it)
        return -1;
    while ((item = PyIter_Next(it))) {
        long k = PyLong_AsLong(item);
        Py_DECREF(item);
        if (k >= 0 && k < TABLE)
            table[k] = 1;
    }
    Py_DECREF(it);
    return PyErr_Occurred() ? -1 : 0;
}

static int Pump_init(Pump *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"devfd", "sockfd", "appender", "snaplen", "bufsize",
                             "data_request", "data_reply", "data_notify", "no_reply",
                             "to_python", "spin_us", "piece_wait_ms", NULL};
    PyObject *appender, *dreq, *drep, *dnot, *noreply, *topy;
    unsigned int spin_us = 0;
    self->piece_wait_ms = 200;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "iiO!nnO!O!O!OO|Ii", kwlist, &self->devfd,
                                     &self->sockfd, appender_type, &appender, &self->snaplen,
                                     &self->bufsize, &PyDict_Type, &dreq, &PyDict_Type, &drep,
                                     &PyDict_Type, &dnot, &noreply, &topy, &spin_us,
                                     &self->piece_wait_ms))
        return -1;
    if (self->bufsize < IN_HEADER || self->snaplen < 0 || self->piece_wait_ms < 0) {
        PyErr_SetString(PyExc_ValueError, "bufsize, snaplen or piece_wait_ms out of range");
        return -1;
    }
    int flags = fcntl(self->devfd, F_GETFL);
    if (flags < 0 || fcntl(self->devfd, F_SETFL, flags | O_NONBLOCK) < 0) {
        PyErr_SetFromErrno(PyExc_OSError);  /* the loop polls, it never blocks in a read */
        return -1;
    }
    self->spin_ns = (uint64_t)spin_us * 1000;
    self->dev_open = self->sock_open = 1;
    self->held = 0;
    self->pieces = 0;
    if (fill_table(dreq, self->data_request, -1) || fill_table(drep, self->data_reply, -1) ||
        fill_table(dnot, self->data_notify, -1) || fill_set(noreply, self->no_reply) ||
        fill_set(topy, self->to_python))
        return -1;
    Py_INCREF(appender);
    Py_XSETREF(self->appender, appender);
    free(self->request_buf);
    free(self->reply_buf);
    self->request_buf = malloc((size_t)self->bufsize);
    self->reply_buf = malloc((size_t)self->bufsize);
    if (!self->request_buf || !self->reply_buf) {
        PyErr_NoMemory();
        return -1;
    }
    self->recording = 1;
    return 0;
}

static PyObject *Pump_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    Pump *self = (Pump *)type->tp_alloc(type, 0);
    if (!self)
        return NULL;
    pthread_mutex_init(&self->pending.lock, NULL);
    self->pending.slots = calloc(256, sizeof(Slot));
    self->pending.mask = 255;
    if (!self->pending.slots) {
        Py_DECREF(self);
        return PyErr_NoMemory();
    }
    return (PyObject *)self;
}

static void Pump_dealloc(Pump *self)
{
    free(self->pending.slots);
    pthread_mutex_destroy(&self->pending.lock);
    free(self->request_buf);
    free(self->reply_buf);
    Py_XDECREF(self->appender);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* What the loop hands back to Python (the first item of the tuple it returns). */
enum outcome {
    NONE,          /* keep looping */
    REQUEST,       /* ("request", bytes): one for Python (INIT, odd opcodes, short) */
    UNSENT,        /* ("unsent", unique, opcode, errno): the server's socket refused it */
    REQUEST_END,   /* ("request_end", errno): /dev/fuse said ENODEV (or failed) */
    REPLY,         /* ("reply", bytes): a piece, a lying header, INIT's reply; or any
                    * reply while Python puts pieces together */
    REJECTED,      /* ("rejected", unique, opcode or None, errno, gone): /dev/fuse refused
                    * it; gone: the connection had ended (unmounted or aborted) */
    OVERSIZE,      /* ("oversize", size): larger than the buffer; dropped */
    REPLY_END,     /* ("reply_end", errno): every holder of the server's end closed it */
    IDLE,          /* ("idle",): no message for `piece_wait_ms` while putting pieces together */
    DONE,          /* ("done",): both ends are closed */
};

typedef struct {
    enum outcome what;
    ssize_t n;
    int err;
    uint64_t unique;
    long opcode;
    int gone;
} Outcome;

/* Whether the connection has ended: /dev/fuse polls POLLERR once it is unmounted or
 * aborted. A reply refused then (ENOENT: its request was dropped) is nobody's bug. */
static int connection_gone(int devfd)
{
    struct pollfd p = {devfd, POLLIN, 0};
    return poll(&p, 1, 0) == 1 && (p.revents & POLLERR);
}

/* Forward the held request (read, recorded, not yet sent). */
static void send_held(Pump *self, Outcome *out)
{
    ssize_t sent = send(self->sockfd, self->request_buf, self->held, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (sent < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
        return;  /* the server's socket is full: wait for POLLOUT */
    uint64_t unique = get_u64(self->request_buf + 8);
    if (sent < 0) {
        out->what = UNSENT, out->err = errno, out->unique = unique;
        out->opcode = get_u32(self->request_buf + 4);
        pending_take(&self->pending, unique, 1);
    } else {
        self->requests++;
        self->request_bytes += (unsigned long long)self->held;
    }
    self->held = 0;
}

/* One request from /dev/fuse, if there is one: recorded, then forwarded. Returns whether
 * anything happened. */
static int take_request(Pump *self, Outcome *out)
{
    unsigned char *buf = self->request_buf;
    ssize_t n = read(self->devfd, buf, (size_t)self->bufsize);
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return 0;
        if (errno == EINTR || errno == ENOENT)
            return 1;  /* ENOENT: the request was interrupted before we read it */
        out->what = REQUEST_END, out->err = errno;
        self->dev_open = 0;
        return 1;
    }
    if (n == 0) {
        out->what = REQUEST_END;
        self->dev_open = 0;
        return 1;
    }
    uint32_t opcode = n >= IN_HEADER ? get_u32(buf + 4) : TABLE;
    if (opcode >= TABLE || self->to_python[opcode]) {
        out->what = REQUEST, out->n = n;
        return 1;
    }
    uint64_t unique = get_u64(buf + 8);
    if (!self->no_reply[opcode])
        pending_put(&self->pending, unique, opcode);
    size_t kept = kept_of(self, (size_t)n, self->data_request[opcode]);
    record(self, KIND_REQUEST, buf, kept, kept < (size_t)n ? (size_t)n : 0);
    self->held = (size_t)n;
    send_held(self, out);
    return 1;
}

/* One message from the server's socket, if there is one: recorded, then written to
 * /dev/fuse. Returns whether anything happened. */
static int take_reply(Pump *self, Outcome *out)
{
    unsigned char *buf = self->reply_buf;
    ssize_t n = recv(self->sockfd, buf, (size_t)self->bufsize, MSG_TRUNC | MSG_DONTWAIT);
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return 0;
        if (errno == EINTR)
            return 1;
        out->what = REPLY_END, out->err = errno;
        self->sock_open = 0;
        return 1;
    }
    if (n == 0) {
        out->what = REPLY_END;
        self->sock_open = 0;
        return 1;
    }
    if (n > self->bufsize) {
        out->what = OVERSIZE, out->n = n;
        return 1;
    }
    /* a header that does not say this message's length (a piece of a spliced reply, or
     * garbage: Python's reassembler tells which), or Python is putting pieces together */
    if (self->pieces || n < OUT_HEADER || get_u32(buf) != (uint32_t)n) {
        out->what = REPLY, out->n = n;
        self->last_reply_ns = now_ns();  /* the clock for giving up on missing pieces */
        return 1;
    }
    int32_t error;
    memcpy(&error, buf + 4, 4);
    uint64_t unique = get_u64(buf + 8);
    long opcode = pending_take(&self->pending, unique, 1);
    if (opcode >= TABLE || (opcode >= 0 && self->to_python[opcode])) {
        pending_put(&self->pending, unique, (uint32_t)opcode);  /* Python's to take */
        out->what = REPLY, out->n = n;
        return 1;
    }
    int data_at = -1;
    if (!unique)
        data_at = error > 0 && error < TABLE ? self->data_notify[error] : -1;
    else if (opcode >= 0 && error == 0)
        data_at = self->data_reply[opcode];
    size_t kept = kept_of(self, (size_t)n, data_at);
    record(self, KIND_REPLY, buf, kept, kept < (size_t)n ? (size_t)n : 0);
    ssize_t written;
    do
        written = write(self->devfd, buf, (size_t)n);
    while (written < 0 && errno == EINTR);
    self->replies++;
    self->reply_bytes += (unsigned long long)n;
    if (written < 0) {
        out->what = REJECTED, out->err = errno, out->unique = unique, out->opcode = opcode;
        out->gone = connection_gone(self->devfd);
    }
    return 1;
}

/* Relay both ways until something needs Python. After each message the loop polls both
 * ends for `spin_us` before sleeping: a fast server answers, and a client asks again,
 * sooner than a sleeping thread can be woken (two wake-ups saved per round trip). */
static PyObject *Pump_run(Pump *self, PyObject *unused)
{
    Outcome out = {NONE, 0, 0, 0, -1, 0};
    if (!self->request_buf)
        return PyErr_Format(PyExc_RuntimeError, "Pump not initialised");
    Py_BEGIN_ALLOW_THREADS
    uint64_t busy_until = now_ns() + self->spin_ns;
    while (out.what == NONE) {
        int moved = 0;
        if (self->held)
            send_held(self, &out), moved = !self->held;
        if (out.what == NONE && self->dev_open && !self->held)
            moved |= take_request(self, &out);
        if (out.what == NONE && self->sock_open)
            moved |= take_reply(self, &out);
        if (out.what != NONE)
            break;
        if (!self->dev_open && !self->sock_open) {
            out.what = DONE;
            break;
        }
        uint64_t now = now_ns();
        uint64_t pieces_until = self->last_reply_ns + (uint64_t)self->piece_wait_ms * 1000000;
        if (self->pieces && now >= pieces_until) {
            out.what = IDLE;  /* requests may flow meanwhile; the pieces have stopped */
            break;
        }
        if (moved) {
            busy_until = now + self->spin_ns;
            continue;
        }
        if (now < busy_until) {
            cpu_relax();
            continue;
        }
        /* an end we don't wait on is left out: its POLLERR/POLLHUP would never let us sleep */
        struct pollfd fds[2] = {{-1, POLLIN, 0}, {-1, POLLIN, 0}};
        if (self->dev_open && !self->held)
            fds[0].fd = self->devfd;
        if (self->sock_open || self->held)
            fds[1].fd = self->sockfd;
        if (!self->sock_open)
            fds[1].events = 0;
        if (self->held)
            fds[1].events |= POLLOUT;
        poll(fds, 2, self->pieces ? (int)((pieces_until - now) / 1000000) + 1 : -1);
        busy_until = now_ns() + self->spin_ns;
    }
    Py_END_ALLOW_THREADS
    switch (out.what) {
    case REQUEST:
        return Py_BuildValue("(sy#)", "request", self->request_buf, out.n);
    case UNSENT:
        return Py_BuildValue("(sKli)", "unsent", (unsigned long long)out.unique, out.opcode, out.err);
    case REQUEST_END:
        return Py_BuildValue("(si)", "request_end", out.err);
    case REPLY:
        return Py_BuildValue("(sy#)", "reply", self->reply_buf, out.n);
    case REJECTED:
        if (out.opcode < 0)
            return Py_BuildValue("(sKOiO)", "rejected", (unsigned long long)out.unique, Py_None,
                                 out.err, out.gone ? Py_True : Py_False);
        return Py_BuildValue("(sKliO)", "rejected", (unsigned long long)out.unique, out.opcode,
                             out.err, out.gone ? Py_True : Py_False);
    case OVERSIZE:
        return Py_BuildValue("(sn)", "oversize", out.n);
    case REPLY_END:
        return Py_BuildValue("(si)", "reply_end", out.err);
    case IDLE:
        return Py_BuildValue("(s)", "idle");
    default:
        return Py_BuildValue("(s)", "done");
    }
}

static PyObject *Pump_pending_put(Pump *self, PyObject *args)
{
    unsigned long long unique;
    unsigned int opcode;
    if (!PyArg_ParseTuple(args, "KI", &unique, &opcode))
        return NULL;
    pending_put(&self->pending, unique, opcode);
    Py_RETURN_NONE;
}

static PyObject *pending_result(long opcode)
{
    if (opcode < 0)
        Py_RETURN_NONE;
    return PyLong_FromLong(opcode);
}

static PyObject *Pump_pending_get(Pump *self, PyObject *arg)
{
    unsigned long long unique = PyLong_AsUnsignedLongLongMask(arg);
    if (PyErr_Occurred())
        return NULL;
    return pending_result(pending_take(&self->pending, unique, 0));
}

static PyObject *Pump_pending_pop(Pump *self, PyObject *arg)
{
    unsigned long long unique = PyLong_AsUnsignedLongLongMask(arg);
    if (PyErr_Occurred())
        return NULL;
    return pending_result(pending_take(&self->pending, unique, 1));
}

static PyObject *Pump_count(Pump *self, PyObject *args)
{
    int is_request;
    unsigned long long size;
    if (!PyArg_ParseTuple(args, "pK", &is_request, &size))
        return NULL;
    if (is_request)
        self->requests++, self->request_bytes += size;
    else
        self->replies++, self->reply_bytes += size;
    Py_RETURN_NONE;
}

/* Grow both buffers (a held request is kept): called between two `run`s, by the thread
 * that calls `run`. */
static PyObject *Pump_resize(Pump *self, PyObject *arg)
{
    Py_ssize_t size = PyLong_AsSsize_t(arg);
    if (size == -1 && PyErr_Occurred())
        return NULL;
    if (size <= self->bufsize)
        Py_RETURN_NONE;
    unsigned char *request_buf = realloc(self->request_buf, (size_t)size);
    if (!request_buf)
        return PyErr_NoMemory();
    self->request_buf = request_buf;
    unsigned char *reply_buf = realloc(self->reply_buf, (size_t)size);
    if (!reply_buf)
        return PyErr_NoMemory();  /* the request buffer is bigger, harmlessly */
    self->reply_buf = reply_buf;
    self->bufsize = size;
    Py_RETURN_NONE;
}

static PyObject *Pump_get_bufsize(Pump *self, void *c) { return PyLong_FromSsize_t(self->bufsize); }

static PyObject *Pump_connection_gone(Pump *self, PyObject *unused)
{
    return PyBool_FromLong(connection_gone(self->devfd));
}

static PyObject *Pump_stop_recording(Pump *self, PyObject *unused)
{
    self->recording = 0;
    Py_RETURN_NONE;
}

#define COUNTER(name) \
    static PyObject *Pump_get_##name(Pump *self, void *c) { return PyLong_FromUnsignedLongLong(self->name); }
COUNTER(requests)
COUNTER(replies)
COUNTER(request_bytes)
COUNTER(reply_bytes)

static PyObject *Pump_get_pieces(Pump *self, void *c) { return PyBool_FromLong(self->pieces); }
static int Pump_set_pieces(Pump *self, PyObject *value, void *c)
{
    int on = value ? PyObject_IsTrue(value) : 0;
    if (on < 0)
        return -1;
    self->pieces = on;
    return 0;
}
static PyObject *Pump_get_dev_open(Pump *self, void *c) { return PyBool_FromLong(self->dev_open); }


static PyMethodDef Pump_methods[] = {
    {"run", (PyCFunction)Pump_run, METH_NOARGS, "relay both ways until Python is needed"},
    {"pending_put", (PyCFunction)Pump_pending_put, METH_VARARGS, "pending_put(unique, opcode)"},
    {"pending_get", (PyCFunction)Pump_pending_get, METH_O, "the opcode awaiting this unique's reply, or None"},
    {"pending_pop", (PyCFunction)Pump_pending_pop, METH_O, "pending_get, and forget it"},
    {"count", (PyCFunction)Pump_count, METH_VARARGS, "count(is_request, size): a message Python relayed"},
    {"stop_recording", (PyCFunction)Pump_stop_recording, METH_NOARGS, "relay on without recording"},
    {"resize", (PyCFunction)Pump_resize, METH_O,
     "resize(bufsize): grow both buffers (between two runs, from run's thread)"},
    {"connection_gone", (PyCFunction)Pump_connection_gone, METH_NOARGS,
     "whether /dev/fuse says the connection ended (unmounted or aborted)"},
    {NULL}};

static PyGetSetDef Pump_getset[] = {
    {"requests_relayed", (getter)Pump_get_requests, NULL, NULL, NULL},
    {"replies_relayed", (getter)Pump_get_replies, NULL, NULL, NULL},
    {"request_bytes", (getter)Pump_get_request_bytes, NULL, NULL, NULL},
    {"reply_bytes", (getter)Pump_get_reply_bytes, NULL, NULL, NULL},
    {"pieces", (getter)Pump_get_pieces, (setter)Pump_set_pieces,
     "while True every message from the server goes to Python, and `run` returns "
     "(\"idle\",) after piece_wait_ms without one", NULL},
    {"dev_open", (getter)Pump_get_dev_open, NULL, "/dev/fuse has not said ENODEV yet", NULL},
    {"bufsize", (getter)Pump_get_bufsize, NULL, "the size of each buffer (the largest message)", NULL},
    {NULL}};

static PyTypeObject PumpType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "inspector.record._fastpath.Pump",
    .tp_doc = "The relay's per-message loop (see relay.py)",
    .tp_basicsize = sizeof(Pump),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = Pump_new,
    .tp_init = (initproc)Pump_init,
    .tp_dealloc = (destructor)Pump_dealloc,
    .tp_methods = Pump_methods,
    .tp_getset = Pump_getset,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_fastpath", "The recorder's per-message hot path (see _fastpath.c)", -1,
};

PyMODINIT_FUNC PyInit__fastpath(void)
{
    append_api = PyCapsule_Import(TRACE_APPEND_CAPSULE, 0);
    if (!append_api || PyType_Ready(&PumpType) < 0)
        return NULL;
    PyObject *appends = PyImport_ImportModule("traces._append");
    if (!appends)
        return NULL;
    appender_type = (PyTypeObject *)PyObject_GetAttrString(appends, "Appender");
    Py_DECREF(appends);
    if (!appender_type)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m)
        return NULL;
    Py_INCREF(&PumpType);
    if (PyModule_AddObject(m, "Pump", (PyObject *)&PumpType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
