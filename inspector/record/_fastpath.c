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
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "../../traces/append.h"
#include "../../traces/facts.h"
#include "../../traces/le.h"

#define TABLE 64          /* opcodes and notify codes below this are handled here */

/* ------------------------------------------------------------------ pending uniques */

/* unique -> opcode of requests awaiting a reply: open addressing, linear probing,
 * backward-shift deletion; unique 0 marks an empty slot (the kernel never uses it). */
typedef struct {
    uint64_t unique;
    uint64_t sent_ns;  /* when the request was handed to the server (0: not known) */
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

static void pending_put(Pending *p, uint64_t unique, uint32_t opcode, uint64_t sent_ns)
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
    p->slots[i].sent_ns = sent_ns;
    pthread_mutex_unlock(&p->lock);
}

/* The opcode pending for `unique`, or -1 (and when it was sent, if `sent_ns`); removed
 * when `pop`. */
static long pending_take(Pending *p, uint64_t unique, int pop, uint64_t *sent_ns)
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
        if (sent_ns)
            *sent_ns = p->slots[i].sent_ns;
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

/* ------------------------------------------------------------------ Notifier */

/* Notifications (unique 0) are written to /dev/fuse by a pool of threads, never by the
 * lane that received them: the kernel may hold such a write on an inode or directory lock
 * (INVAL_ENTRY and DELETE take the parent's, STORE and RETRIEVE page locks) until a
 * request in that directory is answered, and that answer may be the next message the lane
 * would relay. The lane waits NOTIFY_WAIT_NS for the write, so the kernel sees the server's
 * messages in the order it sent them whenever the write does not block; past that it goes
 * on, and a pool thread carries the waiting write. A write that waits never holds back
 * another: the pool grows by one thread whenever no thread is idle (to MAX_NOTIFIERS;
 * beyond that, or when a thread cannot be made, the lane writes itself). */

#define MAX_NOTIFIERS 256
#define NOTIFY_WAIT_NS 1000000ull
#define LATE_MAX 64

enum { QUEUED, WRITTEN, LEFT };

typedef struct Notice {
    struct Notice *next;
    int state;   /* QUEUED; WRITTEN (err set); LEFT: its lane stopped waiting */
    int err;
    size_t n;
    unsigned char data[];
} Notice;

typedef struct {
    pthread_mutex_t lock;
    pthread_cond_t work, done;
    Notice *head, *tail;
    int idle, threads, refs, stopping, devfd;
    /* writes refused after their lane stopped waiting: (notify code, errno) for Python */
    int late[LATE_MAX][2];
    int late_count;
    unsigned long late_lost;
} Notifier;

static Notifier *notifier_new(int devfd)
{
    Notifier *nf = calloc(1, sizeof *nf);
    if (!nf)
        return NULL;
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_mutex_init(&nf->lock, NULL);
    pthread_cond_init(&nf->work, NULL);
    pthread_cond_init(&nf->done, &attr);
    pthread_condattr_destroy(&attr);
    nf->devfd = devfd;
    nf->refs = 1;  /* the Pump's */
    return nf;
}

/* Drop one reference (called with the lock held; unlocks). */
static void notifier_release_locked(Notifier *nf)
{
    int last = --nf->refs == 0;
    pthread_mutex_unlock(&nf->lock);
    if (!last)
        return;
    for (Notice *n = nf->head, *next; n; n = next) {
        next = n->next;
        free(n);
    }
    pthread_cond_destroy(&nf->work);
    pthread_cond_destroy(&nf->done);
    pthread_mutex_destroy(&nf->lock);
    free(nf);
}

static int write_whole(int fd, const unsigned char *buf, size_t n)
{
    ssize_t w;
    do
        w = write(fd, buf, n);
    while (w < 0 && errno == EINTR);
    return w < 0 ? errno : 0;
}

static void *notifier_main(void *arg)
{
    Notifier *nf = arg;
    pthread_mutex_lock(&nf->lock);
    for (;;) {
        while (!nf->head && !nf->stopping) {
            nf->idle++;
            pthread_cond_wait(&nf->work, &nf->lock);
            nf->idle--;
        }
        if (!nf->head)
            break;
        Notice *n = nf->head;
        nf->head = n->next;
        if (!nf->head)
            nf->tail = NULL;
        pthread_mutex_unlock(&nf->lock);
        int err = write_whole(nf->devfd, n->data, n->n);
        pthread_mutex_lock(&nf->lock);
        if (n->state == LEFT) {
            if (err && nf->late_count < LATE_MAX) {
                int32_t code;
                memcpy(&code, n->data + FT_OUT_ERROR_AT, 4);
                nf->late[nf->late_count][0] = code;
                nf->late[nf->late_count++][1] = err;
            } else if (err) {
                nf->late_lost++;
            }
            free(n);
        } else {
            n->err = err;
            n->state = WRITTEN;
            pthread_cond_broadcast(&nf->done);
        }
    }
    nf->threads--;
    notifier_release_locked(nf);
    return NULL;
}

/* Write a notification through the pool. Returns 1 with `*err` set when the write ended
 * within NOTIFY_WAIT_NS, 0 when it is still waiting in the kernel (its errno, if any, goes
 * to `late`). Called without the GIL. */
static int notify(Notifier *nf, const unsigned char *buf, size_t n, int *err)
{
    Notice *x = malloc(sizeof *x + n);
    if (!x) {
        *err = write_whole(nf->devfd, buf, n);
        return 1;
    }
    memcpy(x->data, buf, n);
    x->n = n, x->next = NULL, x->state = QUEUED, x->err = 0;
    pthread_mutex_lock(&nf->lock);
    if (!nf->idle) {
        pthread_t tid;
        pthread_attr_t attr;
        int made = nf->threads < MAX_NOTIFIERS && !nf->stopping;
        if (made) {
            pthread_attr_init(&attr);
            pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
            pthread_attr_setstacksize(&attr, 64 << 10);
            made = pthread_create(&tid, &attr, notifier_main, nf) == 0;
            pthread_attr_destroy(&attr);
        }
        if (!made) {  /* no thread to carry it: write it here, as a direct server would */
            pthread_mutex_unlock(&nf->lock);
            free(x);
            *err = write_whole(nf->devfd, buf, n);
            return 1;
        }
        nf->threads++, nf->refs++;
    }
    if (nf->tail)
        nf->tail->next = x;
    else
        nf->head = x;
    nf->tail = x;
    pthread_cond_signal(&nf->work);
    struct timespec until;
    clock_gettime(CLOCK_MONOTONIC, &until);
    until.tv_nsec += (long)NOTIFY_WAIT_NS;
    if (until.tv_nsec >= 1000000000L)
        until.tv_sec++, until.tv_nsec -= 1000000000L;
    while (x->state == QUEUED) {
        if (pthread_cond_timedwait(&nf->done, &nf->lock, &until) == ETIMEDOUT &&
                x->state == QUEUED) {
            x->state = LEFT;  /* the pool thread frees it */
            pthread_mutex_unlock(&nf->lock);
            return 0;
        }
    }
    *err = x->err;
    pthread_mutex_unlock(&nf->lock);
    free(x);
    return 1;
}

/* ------------------------------------------------------------------ spinning */

/* Polling before sleeping saves two wake-ups per round trip, but only with a CPU to spare:
 * on a machine where threads wait for a CPU, a polling relay keeps the server (or the
 * client) from running. So lanes poll only while the kernel's CPU pressure (PSI, the time
 * some task waited for a CPU) stayed under SPIN_PRESSURE of the last period. */

#define PSI_PERIOD_NS 20000000ull
#define SPIN_PRESSURE 0.02

typedef struct {
    pthread_mutex_t lock;
    int fd;             /* /proc/pressure/cpu, or -1: no PSI, spin as asked */
    uint64_t at_ns, stall_us;
    volatile int ok;
} SpinGate;

static uint64_t psi_some_total(int fd)
{
    char text[256];
    ssize_t n = pread(fd, text, sizeof text - 1, 0);
    if (n <= 0)
        return 0;
    text[n] = 0;
    char *total = strstr(text, "total=");  /* the first line is "some" */
    return total ? strtoull(total + 6, NULL, 10) : 0;
}

static int spin_allowed(SpinGate *g, uint64_t now)
{
    if (g->fd < 0 || now - g->at_ns < PSI_PERIOD_NS || pthread_mutex_trylock(&g->lock))
        return g->ok;
    if (now - g->at_ns >= PSI_PERIOD_NS) {
        uint64_t stall = psi_some_total(g->fd);
        uint64_t period_us = (now - g->at_ns) / 1000;
        g->ok = g->at_ns && period_us &&
                (double)(stall - g->stall_us) / (double)period_us < SPIN_PRESSURE;
        g->at_ns = now, g->stall_us = stall;
    }
    pthread_mutex_unlock(&g->lock);
    return g->ok;
}

/* ------------------------------------------------------------------ Pump */

#define MAX_LANES 16

typedef struct {
    PyObject_HEAD
    int devfd, sockfd;
    PyObject *appender;  /* a traces._append.Appender, written through `append_api` */
    Py_ssize_t snaplen, bufsize;
    int16_t data_request[TABLE], data_reply[TABLE], data_notify[TABLE];
    uint8_t no_reply[TABLE], to_python[TABLE];
    Pending pending;
    unsigned char *request_buf, *reply_buf[MAX_LANES + 1];  /* + the request lane's */
    Py_ssize_t request_size, reply_size[MAX_LANES + 1];
    int lanes;         /* reply lanes; with one, Python may put spliced pieces together */
    unsigned long long requests, replies, request_bytes, reply_bytes;  /* atomic */
    int recording;     /* cleared when a trace write failed, here or in Python */
    int dev_open;      /* until /dev/fuse says ENODEV */
    int sock_seen_end; /* the request lane saw the socket's end: it polls only /dev/fuse */
    int pieces;        /* Python is putting a spliced reply together: hand it everything */
    uint64_t last_reply_ns;  /* when the socket last gave Python a message */
    uint64_t spin_ns;
    int piece_wait_ms;
    Notifier *notifier;
    SpinGate gate;
} Pump;

#if defined(__x86_64__) || defined(__i386__)
#define cpu_relax() __builtin_ia32_pause()
#elif defined(__aarch64__)
#define cpu_relax() __asm__ __volatile__("yield")
#else
#define cpu_relax() do {} while (0)
#endif

#define ADD(field, value) __atomic_add_fetch(&(field), (value), __ATOMIC_RELAXED)

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

/* Append the record [kind, ts, raw[:kept]] (+ a map with "len": true_len when cut, and
 * "server_ns" when known: how long the server held the request, from the relay's handing
 * it over to its reply's arrival), the msgpack the Python writer would make. Called
 * without the GIL. */
static void record(Pump *self, int kind, const unsigned char *raw, size_t kept, size_t true_len,
                   uint64_t server_ns)
{
    unsigned char head[1 + 1 + 9 + 5], tail[1 + (4 + 5) + (10 + 9)];
    size_t h = 0, t = 0;
    if (!self->recording)
        return;
    head[h++] = true_len || server_ns ? 0x94 : 0x93;  /* fixarray */
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
    if (true_len || server_ns) {
        tail[t++] = (unsigned char)(0x80 | (!!true_len + !!server_ns));  /* fixmap */
        if (true_len) {
            memcpy(tail + t, "\xa3len\xce", 5);  /* fixstr "len", uint32 */
            t += 5 + put_be(tail + t + 5, true_len, 4);
        }
        if (server_ns) {
            memcpy(tail + t, "\xa9server_ns\xcf", 11);  /* fixstr "server_ns", uint64 */
            t += 11 + put_be(tail + t + 11, server_ns, 8);
        }
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
                             "to_python", "spin_us", "piece_wait_ms", "lanes", NULL};
    PyObject *appender, *dreq, *drep, *dnot, *noreply, *topy;
    unsigned int spin_us = 0;
    self->piece_wait_ms = 200;
    self->lanes = 1;
    if (self->notifier)
        return PyErr_SetString(PyExc_RuntimeError, "Pump already initialised"), -1;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "iiO!nnO!O!O!OO|Iii", kwlist, &self->devfd,
                                     &self->sockfd, appender_type, &appender, &self->snaplen,
                                     &self->bufsize, &PyDict_Type, &dreq, &PyDict_Type, &drep,
                                     &PyDict_Type, &dnot, &noreply, &topy, &spin_us,
                                     &self->piece_wait_ms, &self->lanes))
        return -1;
    if (self->bufsize < FT_IN_HEADER_SIZE || self->snaplen < 0 || self->piece_wait_ms < 0 ||
            self->lanes < 1 || self->lanes > MAX_LANES) {
        PyErr_SetString(PyExc_ValueError, "bufsize, snaplen, piece_wait_ms or lanes out of range");
        return -1;
    }
    int flags = fcntl(self->devfd, F_GETFL);
    if (flags < 0 || fcntl(self->devfd, F_SETFL, flags | O_NONBLOCK) < 0) {
        PyErr_SetFromErrno(PyExc_OSError);  /* the request lane polls before it reads */
        return -1;
    }
    self->spin_ns = (uint64_t)spin_us * 1000;
    self->dev_open = 1;
    self->pieces = 0;
    if (fill_table(dreq, self->data_request, -1) || fill_table(drep, self->data_reply, -1) ||
        fill_table(dnot, self->data_notify, -1) || fill_set(noreply, self->no_reply) ||
        fill_set(topy, self->to_python))
        return -1;
    self->notifier = notifier_new(self->devfd);
    if (!self->notifier) {
        PyErr_NoMemory();
        return -1;
    }
    Py_INCREF(appender);
    Py_XSETREF(self->appender, appender);
    self->gate.fd = open("/proc/pressure/cpu", O_RDONLY | O_CLOEXEC);
    self->gate.ok = self->gate.fd < 0;
    self->recording = 1;
    return 0;
}

static PyObject *Pump_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    Pump *self = (Pump *)type->tp_alloc(type, 0);
    if (!self)
        return NULL;
    pthread_mutex_init(&self->pending.lock, NULL);
    pthread_mutex_init(&self->gate.lock, NULL);
    self->gate.fd = -1;
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
    if (self->notifier) {  /* idle pool threads end; one still writing frees it after */
        pthread_mutex_lock(&self->notifier->lock);
        self->notifier->stopping = 1;
        pthread_cond_broadcast(&self->notifier->work);
        notifier_release_locked(self->notifier);
    }
    free(self->pending.slots);
    pthread_mutex_destroy(&self->pending.lock);
    pthread_mutex_destroy(&self->gate.lock);
    if (self->gate.fd >= 0)
        close(self->gate.fd);
    free(self->request_buf);
    for (int i = 0; i <= MAX_LANES; i++)
        free(self->reply_buf[i]);
    Py_XDECREF(self->appender);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* What a lane hands back to Python (the first item of the tuple it returns). */
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

/* Whether a lane that found nothing polls again rather than sleeps. */
static int spinning(Pump *self, uint64_t busy_until)
{
    uint64_t now = now_ns();
    return now < busy_until && spin_allowed(&self->gate, now);
}

static int grow(unsigned char **buf, Py_ssize_t *size, Py_ssize_t want)
{
    if (*size >= want)
        return 0;
    unsigned char *bigger = realloc(*buf, (size_t)want);
    if (!bigger)
        return -1;
    *buf = bigger, *size = want;
    return 0;
}

/* One request from /dev/fuse, if there is one: recorded, then forwarded (waiting for room
 * in the server's socket: only this lane waits). Returns whether anything happened. */
static int take_request(Pump *self, Outcome *out)
{
    unsigned char *buf = self->request_buf;
    ssize_t n = read(self->devfd, buf, (size_t)self->request_size);
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
    uint32_t opcode = n >= FT_IN_HEADER_SIZE ? get_u32(buf + FT_IN_OPCODE_AT) : TABLE;
    if (opcode >= TABLE || self->to_python[opcode]) {
        out->what = REQUEST, out->n = n;
        return 1;
    }
    uint64_t unique = get_u64(buf + FT_IN_UNIQUE_AT);
    size_t kept = kept_of(self, (size_t)n, self->data_request[opcode]);
    record(self, FT_KIND_REQUEST, buf, kept, kept < (size_t)n ? (size_t)n : 0, 0);
    if (!self->no_reply[opcode])  /* before it leaves: its reply may come at once */
        pending_put(&self->pending, unique, opcode, now_ns());
    ssize_t sent;
    for (;;) {
        sent = send(self->sockfd, buf, (size_t)n, MSG_NOSIGNAL);
        if (sent >= 0)
            break;
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) {  /* a non-blocking socket: wait */
            struct pollfd p = {self->sockfd, POLLOUT, 0};
            poll(&p, 1, -1);
            continue;
        }
        break;
    }
    if (sent < 0) {
        out->what = UNSENT, out->err = errno, out->unique = unique, out->opcode = opcode;
        pending_take(&self->pending, unique, 1, NULL);
    } else {
        ADD(self->requests, 1);
        ADD(self->request_bytes, (unsigned long long)n);
    }
    return 1;
}

/* One message from the server's socket (waiting for it unless `flags` says
 * MSG_DONTWAIT): recorded, then written to /dev/fuse (a notification through the
 * pool). Returns whether anything happened. */
static int take_reply(Pump *self, int lane, Outcome *out, int flags)
{
    unsigned char *buf = self->reply_buf[lane];
    ssize_t n = recv(self->sockfd, buf, (size_t)self->reply_size[lane], MSG_TRUNC | flags);
    uint64_t arrived = now_ns();
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return 0;
        if (errno == EINTR)
            return 1;
        out->what = REPLY_END, out->err = errno;
        return 1;
    }
    if (n == 0) {
        out->what = REPLY_END;
        return 1;
    }
    if (n > self->reply_size[lane]) {
        out->what = OVERSIZE, out->n = n;
        return 1;
    }
    /* a header that does not say this message's length (a piece of a spliced reply, or
     * garbage: Python tells which), or Python is putting pieces together */
    if (self->pieces || n < FT_OUT_HEADER_SIZE || get_u32(buf + FT_OUT_LEN_AT) != (uint32_t)n) {
        out->what = REPLY, out->n = n;
        self->last_reply_ns = now_ns();  /* the clock for giving up on missing pieces */
        return 1;
    }
    int32_t error;
    memcpy(&error, buf + FT_OUT_ERROR_AT, 4);
    uint64_t unique = get_u64(buf + FT_OUT_UNIQUE_AT);
    uint64_t sent = 0;
    long opcode = pending_take(&self->pending, unique, 1, &sent);
    if (opcode >= TABLE || (opcode >= 0 && self->to_python[opcode])) {
        pending_put(&self->pending, unique, (uint32_t)opcode, sent);  /* Python's to take */
        out->what = REPLY, out->n = n;
        return 1;
    }
    int data_at = -1;
    if (!unique)
        data_at = error > 0 && error < TABLE ? self->data_notify[error] : -1;
    else if (opcode >= 0 && error == 0)
        data_at = self->data_reply[opcode];
    size_t kept = kept_of(self, (size_t)n, data_at);
    record(self, FT_KIND_REPLY, buf, kept, kept < (size_t)n ? (size_t)n : 0,
           sent && arrived > sent ? arrived - sent : 0);
    ADD(self->replies, 1);
    ADD(self->reply_bytes, (unsigned long long)n);
    int err = 0;
    if (unique)
        err = write_whole(self->devfd, buf, (size_t)n);
    else if (!notify(self->notifier, buf, (size_t)n, &err))
        return 1;  /* still waiting in the kernel: a pool thread carries it */
    if (err) {
        out->what = REJECTED, out->err = err, out->unique = unique, out->opcode = opcode;
        out->gone = connection_gone(self->devfd);
    }
    return 1;
}

/* The tuple a lane returns to Python for an outcome (`reply` holds a REPLY's bytes). */
static PyObject *outcome_value(Pump *self, const Outcome *out, const unsigned char *reply)
{
    switch (out->what) {
    case REQUEST:
        return Py_BuildValue("(sy#)", "request", self->request_buf, out->n);
    case UNSENT:
        return Py_BuildValue("(sKli)", "unsent", (unsigned long long)out->unique, out->opcode,
                             out->err);
    case REQUEST_END:
        return Py_BuildValue("(si)", "request_end", out->err);
    case REPLY:
        return Py_BuildValue("(sy#)", "reply", reply, out->n);
    case REJECTED:
        if (out->opcode < 0)
            return Py_BuildValue("(sKOiO)", "rejected", (unsigned long long)out->unique, Py_None,
                                 out->err, out->gone ? Py_True : Py_False);
        return Py_BuildValue("(sKliO)", "rejected", (unsigned long long)out->unique, out->opcode,
                             out->err, out->gone ? Py_True : Py_False);
    case OVERSIZE:
        return Py_BuildValue("(sn)", "oversize", out->n);
    case IDLE:
        return Py_BuildValue("(s)", "idle");
    default:
        return Py_BuildValue("(si)", "reply_end", out->err);
    }
}

/* The request lane: /dev/fuse → server, until something needs Python. After a message it
 * polls both ends for `spin_us` before sleeping (where `spin_allowed`), relaying a reply
 * itself when one comes (with several reply lanes; with one, replies keep their order in
 * it): one polling thread catches a fast server's reply and the client's next request
 * sooner than a sleeping thread can be woken, where two would only take each other's
 * CPU. */
static PyObject *Pump_run_requests(Pump *self, PyObject *unused)
{
    Outcome out = {NONE, 0, 0, 0, -1, 0};
    if (!self->notifier)
        return PyErr_Format(PyExc_RuntimeError, "Pump not initialised");
    int replies_too = self->lanes > 1 && self->spin_ns;
    if (grow(&self->request_buf, &self->request_size, self->bufsize) < 0 ||
            (replies_too && grow(&self->reply_buf[MAX_LANES], &self->reply_size[MAX_LANES],
                                 self->bufsize) < 0))
        return PyErr_NoMemory();
    Py_BEGIN_ALLOW_THREADS
    uint64_t busy_until = now_ns() + self->spin_ns;
    while (out.what == NONE) {
        if (take_request(self, &out)) {
            busy_until = now_ns() + self->spin_ns;
            continue;
        }
        if (spinning(self, busy_until)) {
            if (replies_too && !self->sock_seen_end &&
                    take_reply(self, MAX_LANES, &out, MSG_DONTWAIT)) {
                if (out.what == REPLY_END)  /* the reply lanes see it too, and say so */
                    out.what = NONE, self->sock_seen_end = 1;
                busy_until = now_ns() + self->spin_ns;
                continue;
            }
            cpu_relax();
            continue;
        }
        struct pollfd p = {self->devfd, POLLIN, 0};
        poll(&p, 1, -1);
        busy_until = now_ns() + self->spin_ns;
    }
    Py_END_ALLOW_THREADS
    return outcome_value(self, &out, self->reply_buf[MAX_LANES]);
}

/* A reply lane: server → /dev/fuse, until something needs Python. Lanes receive from the
 * same socket (one whole message each; the kernel wakes one of them per message) and
 * write in parallel. With one lane (pieces may come), it polls for `spin_us` after each
 * message before it sleeps, as the request lane does with several. */
static PyObject *Pump_run_replies(Pump *self, PyObject *arg)
{
    Outcome out = {NONE, 0, 0, 0, -1, 0};
    long lane = PyLong_AsLong(arg);
    if (lane == -1 && PyErr_Occurred())
        return NULL;
    if (!self->notifier)
        return PyErr_Format(PyExc_RuntimeError, "Pump not initialised");
    if (lane < 0 || lane >= self->lanes)
        return PyErr_Format(PyExc_ValueError, "lane %ld: this pump has %d", lane, self->lanes);
    if (grow(&self->reply_buf[lane], &self->reply_size[lane], self->bufsize) < 0)
        return PyErr_NoMemory();
    int spins = self->lanes == 1 && self->spin_ns;
    Py_BEGIN_ALLOW_THREADS
    uint64_t busy_until = spins ? now_ns() + self->spin_ns : 0;
    while (out.what == NONE) {
        if (self->pieces) {  /* only with one lane: Python puts a reply together */
            uint64_t now = now_ns();
            uint64_t until = self->last_reply_ns + (uint64_t)self->piece_wait_ms * 1000000;
            if (now >= until) {
                out.what = IDLE;
                break;
            }
            struct pollfd p = {self->sockfd, POLLIN, 0};
            if (poll(&p, 1, (int)((until - now) / 1000000) + 1) <= 0)
                continue;
            take_reply(self, (int)lane, &out, MSG_DONTWAIT);
            continue;
        }
        int polling = busy_until && spinning(self, busy_until);
        if (take_reply(self, (int)lane, &out, polling ? MSG_DONTWAIT : 0)) {
            busy_until = spins ? now_ns() + self->spin_ns : 0;
            continue;
        }
        if (polling) {
            cpu_relax();
        } else {  /* a non-blocking socket said EAGAIN: sleep until it has a message */
            struct pollfd p = {self->sockfd, POLLIN, 0};
            poll(&p, 1, -1);
        }
    }
    Py_END_ALLOW_THREADS
    return outcome_value(self, &out, self->reply_buf[lane]);
}

static PyObject *Pump_late_rejections(Pump *self, PyObject *unused)
{
    Notifier *nf = self->notifier;
    if (!nf)
        return PyList_New(0);
    int late[LATE_MAX][2], count;
    unsigned long lost;
    pthread_mutex_lock(&nf->lock);
    count = nf->late_count, lost = nf->late_lost;
    memcpy(late, nf->late, sizeof late);
    nf->late_count = 0, nf->late_lost = 0;
    pthread_mutex_unlock(&nf->lock);
    PyObject *list = PyList_New(0);
    for (int i = 0; list && i < count; i++) {
        PyObject *item = Py_BuildValue("(ii)", late[i][0], late[i][1]);
        if (!item || PyList_Append(list, item) < 0)
            Py_CLEAR(list);
        Py_XDECREF(item);
    }
    if (list && lost) {
        PyObject *item = Py_BuildValue("(ik)", -1, lost);
        if (!item || PyList_Append(list, item) < 0)
            Py_CLEAR(list);
        Py_XDECREF(item);
    }
    return list;
}

static PyObject *Pump_notifications_waiting(Pump *self, PyObject *unused)
{
    Notifier *nf = self->notifier;
    int busy = 0;
    if (nf) {
        pthread_mutex_lock(&nf->lock);
        busy = nf->threads - nf->idle;
        pthread_mutex_unlock(&nf->lock);
    }
    return PyLong_FromLong(busy);
}

static PyObject *Pump_pending_put(Pump *self, PyObject *args)
{
    unsigned long long unique;
    unsigned int opcode;
    if (!PyArg_ParseTuple(args, "KI", &unique, &opcode))
        return NULL;
    pending_put(&self->pending, unique, opcode, 0);
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
    return pending_result(pending_take(&self->pending, unique, 0, NULL));
}

static PyObject *Pump_pending_pop(Pump *self, PyObject *arg)
{
    unsigned long long unique = PyLong_AsUnsignedLongLongMask(arg);
    if (PyErr_Occurred())
        return NULL;
    return pending_result(pending_take(&self->pending, unique, 1, NULL));
}

static PyObject *Pump_count(Pump *self, PyObject *args)
{
    int is_request;
    unsigned long long size;
    if (!PyArg_ParseTuple(args, "pK", &is_request, &size))
        return NULL;
    if (is_request)
        ADD(self->requests, 1), ADD(self->request_bytes, size);
    else
        ADD(self->replies, 1), ADD(self->reply_bytes, size);
    Py_RETURN_NONE;
}

/* The size every lane's buffer grows to when it next starts `run_*`: called after INIT's
 * reply, before the lanes that were waiting for it start (see relay.py). */
static PyObject *Pump_resize(Pump *self, PyObject *arg)
{
    Py_ssize_t size = PyLong_AsSsize_t(arg);
    if (size == -1 && PyErr_Occurred())
        return NULL;
    if (size > self->bufsize) {
        unsigned char *probe = malloc((size_t)size);  /* fail here, not in a lane */
        if (!probe)
            return PyErr_NoMemory();
        free(probe);
        self->bufsize = size;
    }
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
    static PyObject *Pump_get_##name(Pump *self, void *c) \
    { return PyLong_FromUnsignedLongLong(__atomic_load_n(&self->name, __ATOMIC_RELAXED)); }
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
    if (on && self->lanes > 1) {
        PyErr_SetString(PyExc_ValueError, "pieces are put together with one reply lane only");
        return -1;
    }
    self->pieces = on;
    return 0;
}
static PyObject *Pump_get_dev_open(Pump *self, void *c) { return PyBool_FromLong(self->dev_open); }
static PyObject *Pump_get_lanes(Pump *self, void *c) { return PyLong_FromLong(self->lanes); }


static PyMethodDef Pump_methods[] = {
    {"run_requests", (PyCFunction)Pump_run_requests, METH_NOARGS,
     "the request lane: relay /dev/fuse -> server until Python is needed"},
    {"run_replies", (PyCFunction)Pump_run_replies, METH_O,
     "run_replies(lane): a reply lane, server -> /dev/fuse, until Python is needed"},
    {"late_rejections", (PyCFunction)Pump_late_rejections, METH_NOARGS,
     "[(notify code, errno)] of notifications the kernel refused after their lane went on "
     "(code -1: that many more were lost)"},
    {"notifications_waiting", (PyCFunction)Pump_notifications_waiting, METH_NOARGS,
     "how many notification writes are waiting in the kernel now"},
    {"pending_put", (PyCFunction)Pump_pending_put, METH_VARARGS, "pending_put(unique, opcode)"},
    {"pending_get", (PyCFunction)Pump_pending_get, METH_O, "the opcode awaiting this unique's reply, or None"},
    {"pending_pop", (PyCFunction)Pump_pending_pop, METH_O, "pending_get, and forget it"},
    {"count", (PyCFunction)Pump_count, METH_VARARGS, "count(is_request, size): a message Python relayed"},
    {"stop_recording", (PyCFunction)Pump_stop_recording, METH_NOARGS, "relay on without recording"},
    {"resize", (PyCFunction)Pump_resize, METH_O,
     "resize(bufsize): the buffer size each lane takes when it next starts"},
    {"connection_gone", (PyCFunction)Pump_connection_gone, METH_NOARGS,
     "whether /dev/fuse says the connection ended (unmounted or aborted)"},
    {NULL}};

static PyGetSetDef Pump_getset[] = {
    {"requests_relayed", (getter)Pump_get_requests, NULL, NULL, NULL},
    {"replies_relayed", (getter)Pump_get_replies, NULL, NULL, NULL},
    {"request_bytes", (getter)Pump_get_request_bytes, NULL, NULL, NULL},
    {"reply_bytes", (getter)Pump_get_reply_bytes, NULL, NULL, NULL},
    {"pieces", (getter)Pump_get_pieces, (setter)Pump_set_pieces,
     "while True (one lane only) every message from the server goes to Python, and "
     "`run_replies` returns (\"idle\",) after piece_wait_ms without one", NULL},
    {"dev_open", (getter)Pump_get_dev_open, NULL, "/dev/fuse has not said ENODEV yet", NULL},
    {"bufsize", (getter)Pump_get_bufsize, NULL, "the size of each buffer (the largest message)", NULL},
    {"lanes", (getter)Pump_get_lanes, NULL, "how many reply lanes may run", NULL},
    {NULL}};

static PyTypeObject PumpType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "inspector.record._fastpath.Pump",
    .tp_doc = "The relay's per-message lanes (see relay.py)",
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
    if (trace_append_import(&append_api, &appender_type) < 0 || PyType_Ready(&PumpType) < 0)
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
