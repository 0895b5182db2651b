/* The lifecycle pass's common records in C (`inspector/lifecycles/analysis.py` `_Pass`).
 *
 * run(state, records, handlers, walker) pulls checked records from the iterator `records`
 * and takes each the pass would only pair or note in passing (it returns how many it took): a request that only waits
 * for its reply, a use of a handle already seen in use, a reply that only ends its
 * request, an entry reply that adds a lookup to a labelled node. Every other record goes,
 * untouched, to Python: `handlers` is (record, request, reply, other) of `_Pass`, called as
 * `_Pass.record` would; walker.highest (the highest unique the kernel sent) is kept up to
 * date for them.
 *
 * Which opcodes are which comes from Python (the dissectors, through `_Pass.fast_state`),
 * the header offsets and record kinds from `traces/facts.h` (generated from the
 * dissectors): this file holds no protocol knowledge, only the pass's own bookkeeping on
 * the very objects Python keeps.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#include "../../traces/facts.h"
#include "../../traces/le.h"

/* What `state` holds, in this order (see `_Pass.fast_state`). */
enum {
    S_ASKED,        /* dict unique -> _Asked */
    S_INTERRUPTED,  /* dict unique -> record number of its INTERRUPT */
    S_RECENT,       /* dict unique -> (reply, asked, raw, interrupt) */
    S_FHS,          /* dict (directory, fh) -> Lifecycle */
    S_UNSEEN,       /* set of (directory, fh) */
    S_NODES,        /* dict nodeid -> Lifecycle */
    S_ASKED_TYPE,   /* _Asked (a tuple subclass) */
    S_EVENT_TYPE,   /* LifeEvent (a tuple subclass) */
    S_REQUESTS,     /* bytes: opcode -> R_* */
    S_REPLIES,      /* bytes: request opcode -> P_* */
    S_NAMES,        /* tuple: opcode -> event name of a request */
    S_REPLY_NAMES,  /* tuple: opcode -> event name of its reply */
    S_CONDS,        /* dict opcode -> (length, flag offset, flag size, bit) for R_COND */
    S_RECENT_MAX,   /* int: past this many entries, `recent` is trimmed ... */
    S_RECENT_KEEP,  /* int: ... to the latest this many */
    S_EMPTY,        /* b"" */
    S_COUNT
};

enum { R_PY, R_PAIR, R_COND, R_FH_FILE, R_FH_DIR, R_NAMED };  /* requests */
enum { P_PY, P_PAIR, P_ENTRY, P_IF_ERROR };                   /* replies, by request opcode */

/* The handle a request names first starts its body; an entry reply's node id is in the
 * fuse_entry_out its body starts with. */
#define FH_AT FT_IN_HEADER_SIZE
#define ENTRY_NODEID_AT (FT_OUT_HEADER_SIZE + FT_ENTRY_OUT_NODEID_AT)

static PyObject *S_HIGHEST, *S_EVENTS, *S_COUNT_ATTR, *S_LABEL, *S_WRITE_ERRNO, *LEN_KEY, *ONE, *NO_DETAIL;

/* A new instance of a tuple subclass (a NamedTuple) holding `items` (references stolen;
 * on failure they are released). */
static PyObject *make(PyObject *type, PyObject **items, Py_ssize_t n) {
    PyObject *t = ((PyTypeObject *)type)->tp_alloc((PyTypeObject *)type, n);
    for (Py_ssize_t j = 0; j < n; j++) {
        if (t == NULL || items[j] == NULL) {
            for (Py_ssize_t m = j; m < n; m++)
                Py_XDECREF(items[m]);
            Py_XDECREF(t);
            return NULL;
        }
        PyTuple_SET_ITEM(t, j, items[j]);
    }
    return t;
}

/* Append LifeEvent(i, ts, what, detail) to lc.events; detail is stolen. */
static int add_event(PyObject *state, PyObject *lc, Py_ssize_t i, PyObject *ts, PyObject *what,
                     PyObject *detail) {
    PyObject *events = PyObject_GetAttr(lc, S_EVENTS);
    if (events == NULL) {
        Py_XDECREF(detail);
        return -1;
    }
    Py_INCREF(ts);
    Py_INCREF(what);
    PyObject *items[4] = {PyLong_FromSsize_t(i), ts, what, detail};
    PyObject *ev = make(PyTuple_GET_ITEM(state, S_EVENT_TYPE), items, 4);
    int bad = ev == NULL || PyList_Append(events, ev) < 0;
    Py_XDECREF(ev);
    Py_DECREF(events);
    return bad ? -1 : 0;
}

/* Pop `key` from `d` into *value (a new reference, or Py_None when absent). */
static int pop(PyObject *d, PyObject *key, PyObject **value) {
    PyObject *v = PyDict_GetItemWithError(d, key);
    if (v == NULL) {
        if (PyErr_Occurred())
            return -1;
        *value = Py_NewRef(Py_None);
        return 0;
    }
    Py_INCREF(v);
    if (PyDict_DelItem(d, key) < 0) {
        Py_DECREF(v);
        return -1;
    }
    *value = v;
    return 0;
}

/* One request: 1 taken, 0 left to Python, -1 error. */
static int request(PyObject *state, Py_ssize_t i, PyObject *ts, PyObject *raw,
                   unsigned long long *highest) {
    const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(raw);
    Py_ssize_t len = PyBytes_GET_SIZE(raw);
    if (len < FT_IN_HEADER_SIZE)
        return 1; /* too short to name anything: the pass skips it */
    uint32_t opcode = get_u32(p + FT_IN_OPCODE_AT);
    uint64_t unique = get_u64(p + FT_IN_UNIQUE_AT), nodeid = get_u64(p + FT_IN_NODEID_AT);
    PyObject *classes = PyTuple_GET_ITEM(state, S_REQUESTS);
    int cls = opcode < (uint64_t)PyBytes_GET_SIZE(classes)
                  ? ((const unsigned char *)PyBytes_AS_STRING(classes))[opcode] : R_PY;
    PyObject *lc = NULL; /* the handle used, borrowed */
    if (cls == R_COND) {
        PyObject *op = PyLong_FromUnsignedLong(opcode);
        if (op == NULL)
            return -1;
        PyObject *cond = PyDict_GetItemWithError(PyTuple_GET_ITEM(state, S_CONDS), op);
        Py_DECREF(op);
        Py_ssize_t need, flag_at, flag_size;
        unsigned long long bit;
        if (cond == NULL)
            return PyErr_Occurred() ? -1 : 0;
        if (!PyArg_ParseTuple(cond, "nnnK", &need, &flag_at, &flag_size, &bit))
            return -1;
        if (len >= need) {
            uint64_t flag = flag_size == 8 ? get_u64(p + flag_at) : get_u32(p + flag_at);
            if (flag & bit)
                return 0; /* it names a handle */
        }
        cls = R_PAIR;
    } else if (cls == R_FH_FILE || cls == R_FH_DIR) {
        if (len < FH_AT + 8)
            return 0;
        PyObject *fh = PyLong_FromUnsignedLongLong(get_u64(p + FH_AT));
        if (fh == NULL)
            return -1;
        PyObject *key = PyTuple_Pack(2, cls == R_FH_DIR ? Py_True : Py_False, fh);
        Py_DECREF(fh);
        if (key == NULL)
            return -1;
        lc = PyDict_GetItemWithError(PyTuple_GET_ITEM(state, S_FHS), key);
        int unseen = lc == NULL ? 0 : PySet_Contains(PyTuple_GET_ITEM(state, S_UNSEEN), key);
        Py_DECREF(key);
        if (PyErr_Occurred() || unseen < 0)
            return -1;
        if (lc == NULL || unseen)
            return 0; /* unknown handle, or its first use after a passthrough open */
    } else if (cls != R_PAIR && cls != R_NAMED) {
        return 0;
    }
    if (unique > *highest && !(unique & FT_UNIQUE_RESEND))
        *highest = unique;
    if (lc != NULL) {
        PyObject *what = PyTuple_GET_ITEM(PyTuple_GET_ITEM(state, S_NAMES), opcode);
        if (add_event(state, lc, i, ts, what, Py_NewRef(NO_DETAIL)) < 0)
            return -1;
    }
    if (!unique)
        return 1;
    PyObject *key = PyLong_FromUnsignedLongLong(unique);
    if (key == NULL)
        return -1;
    Py_INCREF(ts);
    PyObject *body = cls == R_NAMED ? raw : PyTuple_GET_ITEM(state, S_EMPTY);
    Py_INCREF(body);
    PyObject *items[5] = {PyLong_FromSsize_t(i), ts, PyLong_FromUnsignedLong(opcode),
                          PyLong_FromUnsignedLongLong(nodeid), body};
    PyObject *asked = make(PyTuple_GET_ITEM(state, S_ASKED_TYPE), items, 5);
    int bad = asked == NULL || PyDict_SetItem(PyTuple_GET_ITEM(state, S_ASKED), key, asked) < 0;
    Py_XDECREF(asked);
    Py_DECREF(key);
    return bad ? -1 : 1;
}

/* One reply: 1 taken, 2 taken and `recent` is to be trimmed, 0 left to Python, -1 error. */
static int reply(PyObject *state, Py_ssize_t i, PyObject *obj, PyObject *ts,
                 PyObject *raw) {
    const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(raw);
    Py_ssize_t len = PyBytes_GET_SIZE(raw);
    if (len < FT_OUT_HEADER_SIZE)
        return 1;
    int32_t error = (int32_t)get_u32(p + FT_OUT_ERROR_AT);
    uint64_t unique = get_u64(p + FT_OUT_UNIQUE_AT);
    if (unique == 0)
        return 1; /* a notification */
    if (PyList_GET_SIZE(obj) == 4) {
        PyObject *meta = PyList_GET_ITEM(obj, 3);
        if (!PyDict_CheckExact(meta))
            return 0;
        PyObject *rejected = PyDict_GetItemWithError(meta, S_WRITE_ERRNO);
        if (rejected == NULL && PyErr_Occurred())
            return -1;
        int yes = rejected == NULL ? 0 : PyObject_IsTrue(rejected);
        if (yes)
            return yes < 0 ? -1 : 0;
    }
    PyObject *asked_d = PyTuple_GET_ITEM(state, S_ASKED);
    PyObject *key = PyLong_FromUnsignedLongLong(unique);
    if (key == NULL)
        return -1;
    int result = 0;
    PyObject *asked = PyDict_GetItemWithError(asked_d, key), *lc = NULL, *node_key = NULL;
    if (asked == NULL)
        goto done; /* unknown or duplicate: Python says which */
    long opcode = PyLong_AsLong(PyTuple_GET_ITEM(asked, 2));
    if (opcode == -1 && PyErr_Occurred())
        goto fail;
    PyObject *classes = PyTuple_GET_ITEM(state, S_REPLIES);
    int cls = opcode >= 0 && opcode < PyBytes_GET_SIZE(classes)
                  ? ((const unsigned char *)PyBytes_AS_STRING(classes))[opcode] : P_PY;
    if (cls == P_PY || (cls == P_IF_ERROR && !error))
        goto done;
    int entry = cls == P_ENTRY && !error;
    if (entry && len >= ENTRY_NODEID_AT + 8) {
        uint64_t node = get_u64(p + ENTRY_NODEID_AT);
        if (node) {
            node_key = PyLong_FromUnsignedLongLong(node);
            if (node_key == NULL)
                goto fail;
            lc = PyDict_GetItemWithError(PyTuple_GET_ITEM(state, S_NODES), node_key);
            if (lc == NULL)
                goto done; /* a new node (or an error): Python makes its lifecycle */
            PyObject *label = PyObject_GetAttr(lc, S_LABEL);
            int labelled = label == NULL ? -1 : PyObject_IsTrue(label);
            Py_XDECREF(label);
            if (labelled <= 0) {
                result = labelled;
                goto done;
            }
        }
    }
    /* taken: the request is answered */
    Py_INCREF(asked);
    PyObject *interrupt;
    int bad = PyDict_DelItem(asked_d, key) < 0;
    PyObject *interrupted = PyTuple_GET_ITEM(state, S_INTERRUPTED);
    if (!bad && PyDict_GET_SIZE(interrupted))
        bad = pop(interrupted, key, &interrupt) < 0;
    else
        interrupt = Py_NewRef(Py_None);
    if (bad) {
        Py_DECREF(asked);
        goto fail;
    }
    result = 1;
    if (entry) {
        PyObject *recent = PyTuple_GET_ITEM(state, S_RECENT);
        PyObject *kept = Py_BuildValue("nOOO", i, asked, raw, interrupt);
        bad = kept == NULL || PyDict_SetItem(recent, key, kept) < 0;
        Py_XDECREF(kept);
        if (!bad && PyDict_GET_SIZE(recent) > PyLong_AsSsize_t(PyTuple_GET_ITEM(state, S_RECENT_MAX)))
            result = 2;
        if (!bad && lc != NULL) {
            PyObject *count = PyObject_GetAttr(lc, S_COUNT_ATTR), *more = NULL;
            if (count != NULL)
                more = PyNumber_Add(count, ONE);
            Py_XDECREF(count);
            bad = more == NULL || PyObject_SetAttr(lc, S_COUNT_ATTR, more) < 0;
            if (!bad) {
                PyObject *what = PyTuple_GET_ITEM(PyTuple_GET_ITEM(state, S_REPLY_NAMES), opcode);
                bad = add_event(state, lc, i, ts, what, PyUnicode_FromFormat("nlookup=%S", more)) < 0;
            }
            Py_XDECREF(more);
        }
    }
    Py_DECREF(asked);
    Py_DECREF(interrupt);
    if (bad)
        goto fail;
done:
    Py_DECREF(key);
    Py_XDECREF(node_key);
    return PyErr_Occurred() ? -1 : result;
fail:
    Py_DECREF(key);
    Py_XDECREF(node_key);
    return -1;
}

/* Keep the latest `keep` entries of `recent` (in place: `state` holds this very dict). */
static int trim(PyObject *recent, Py_ssize_t keep) {
    Py_ssize_t drop = PyDict_GET_SIZE(recent) - keep, pos = 0, j = 0;
    if (drop <= 0)
        return 0;
    PyObject *old = PyList_New(drop), *key, *value;
    if (old == NULL)
        return -1;
    while (j < drop && PyDict_Next(recent, &pos, &key, &value))
        PyList_SET_ITEM(old, j++, Py_NewRef(key));
    int bad = 0;
    for (Py_ssize_t m = 0; m < j && !bad; m++)
        bad = PyDict_DelItem(recent, PyList_GET_ITEM(old, m)) < 0;
    Py_DECREF(old);
    return bad ? -1 : 0;
}

static PyObject *run(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4 || !PyTuple_CheckExact(args[0]) || PyTuple_GET_SIZE(args[0]) != S_COUNT) {
        PyErr_SetString(PyExc_TypeError, "run(state, records, handlers, walker)");
        return NULL;
    }
    PyObject *state = args[0], *records = args[1], *handlers = args[2], *walker = args[3], *obj;
    if (!PyTuple_CheckExact(handlers) || PyTuple_GET_SIZE(handlers) != 4) {
        PyErr_SetString(PyExc_TypeError, "handlers: (record, request, reply, other)");
        return NULL;
    }
    Py_ssize_t keep = PyLong_AsSsize_t(PyTuple_GET_ITEM(state, S_RECENT_KEEP)), i = 0;
    PyObject *high = PyObject_GetAttr(walker, S_HIGHEST);
    unsigned long long highest = high ? PyLong_AsUnsignedLongLong(high) : 0;
    Py_XDECREF(high);
    if (PyErr_Occurred())
        return NULL;
    Py_ssize_t taken = 0;
    for (; (obj = PyIter_Next(records)) != NULL; i++) {
        int got = 0;
        long kd = 0;
        PyObject *ts = NULL, *raw = NULL;
        if (PyList_CheckExact(obj) && PyList_GET_SIZE(obj) >= 3) {
            PyObject *kind = PyList_GET_ITEM(obj, 0);
            ts = PyList_GET_ITEM(obj, 1);
            raw = PyList_GET_ITEM(obj, 2);
            kd = PyLong_CheckExact(kind) ? PyLong_AsLong(kind) : 0;
            if (!PyBytes_CheckExact(raw) && (kd == FT_KIND_REQUEST || kd == FT_KIND_REPLY))
                kd = 0;
            if (kd == FT_KIND_REQUEST)
                got = request(state, i, ts, raw, &highest);
            else if (kd == FT_KIND_REPLY)
                got = reply(state, i, obj, ts, raw);
        }
        taken += got > 0;
        if (got == 2)
            got = trim(PyTuple_GET_ITEM(state, S_RECENT), keep) < 0 ? -1 : 1;
        if (got == 0) { /* Python's turn, with the highest unique so far */
            PyObject *n = PyLong_FromSsize_t(i), *done = NULL;
            high = PyLong_FromUnsignedLongLong(highest);
            if (n != NULL && high != NULL && PyObject_SetAttr(walker, S_HIGHEST, high) == 0) {
                if (kd == FT_KIND_REQUEST)
                    done = PyObject_CallFunctionObjArgs(PyTuple_GET_ITEM(handlers, 1), n, ts, raw, NULL);
                else if (kd == FT_KIND_REPLY)
                    done = PyObject_CallFunctionObjArgs(PyTuple_GET_ITEM(handlers, 2), n, ts, raw,
                                                        PyList_GET_SIZE(obj) == 4 ? PyList_GET_ITEM(obj, 3) : Py_None, NULL);
                else if (kd == FT_KIND_IOCTL || kd == FT_KIND_EVENT)
                    done = PyObject_CallFunctionObjArgs(PyTuple_GET_ITEM(handlers, 3), n, obj, NULL);
                else
                    done = PyObject_CallFunctionObjArgs(PyTuple_GET_ITEM(handlers, 0), n, obj, NULL);
            }
            Py_XDECREF(n);
            Py_XDECREF(high);
            high = done ? PyObject_GetAttr(walker, S_HIGHEST) : NULL;
            highest = high ? PyLong_AsUnsignedLongLong(high) : 0;
            got = high == NULL || PyErr_Occurred() ? -1 : 1;
            Py_XDECREF(high);
            Py_XDECREF(done);
        }
        Py_DECREF(obj);
        if (got < 0)
            return NULL;
    }
    if (PyErr_Occurred())
        return NULL;
    high = PyLong_FromUnsignedLongLong(highest);
    int bad = high == NULL || PyObject_SetAttr(walker, S_HIGHEST, high) < 0;
    Py_XDECREF(high);
    return bad ? NULL : PyLong_FromSsize_t(taken);
}

/* tally(records, min_len, no_reply) -> (per opcode, per kind, notifications, unanswered):
 * `fusetrace stats`'s pass (inspector/reports/stats.py `collect`). Per opcode, in the order
 * first seen: [count, bytes in, bytes out, latencies in ns in reply order, {error: count}
 * in the order first seen]. Messages shorter than `min_len` are counted by kind only;
 * `no_reply` holds the opcodes no reply answers. */
static PyObject *tally(PyObject *self, PyObject *args) {
    PyObject *records, *no_reply;
    Py_ssize_t min_len;
    if (!PyArg_ParseTuple(args, "OnO!", &records, &min_len, &PyFrozenSet_Type, &no_reply))
        return NULL;
    PyObject *ops = PyDict_New(), *kinds = PyDict_New(), *asked = PyDict_New(), *obj;
    long long notifications = 0;
    if (ops == NULL || kinds == NULL || asked == NULL)
        goto fail;
    while ((obj = PyIter_Next(records)) != NULL) {
        int bad = 0;
        PyObject *kind = PyList_CheckExact(obj) && PyList_GET_SIZE(obj) >= 3
                             ? PyList_GET_ITEM(obj, 0) : NULL;
        if (kind == NULL || !PyLong_CheckExact(kind)) {
            Py_DECREF(obj);
            PyErr_SetString(PyExc_TypeError, "tally() takes checked record arrays");
            goto fail;
        }
        PyObject *seen = PyDict_GetItemWithError(kinds, kind);
        PyObject *more = seen == NULL ? (PyErr_Occurred() ? NULL : PyLong_FromLong(1))
                                      : PyNumber_Add(seen, ONE);
        bad = more == NULL || PyDict_SetItem(kinds, kind, more) < 0;
        Py_XDECREF(more);
        long kd = bad ? 0 : PyLong_AsLong(kind);
        PyObject *raw = PyList_GET_ITEM(obj, 2);
        if (bad || (kd != FT_KIND_REQUEST && kd != FT_KIND_REPLY) || !PyBytes_CheckExact(raw)
            || PyBytes_GET_SIZE(raw) < min_len) {
            Py_DECREF(obj);
            if (bad)
                goto fail;
            continue;
        }
        const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(raw);
        long long true_len = PyBytes_GET_SIZE(raw);
        if (PyList_GET_SIZE(obj) == 4 && PyDict_CheckExact(PyList_GET_ITEM(obj, 3))) {
            PyObject *n = PyDict_GetItemWithError(PyList_GET_ITEM(obj, 3), LEN_KEY);
            if (n != NULL)
                true_len = PyLong_AsLongLong(n);
        }
        long long ts = PyLong_AsLongLong(PyList_GET_ITEM(obj, 1));
        PyObject *key = PyLong_FromUnsignedLongLong(get_u64(p + (kd == FT_KIND_REQUEST ? FT_IN_UNIQUE_AT : FT_OUT_UNIQUE_AT)));
        if (key == NULL || PyErr_Occurred()) {
            Py_XDECREF(key);
            Py_DECREF(obj);
            goto fail;
        }
        int unique = PyObject_IsTrue(key);
        if (kd == FT_KIND_REQUEST) {
            PyObject *op = PyLong_FromUnsignedLong(get_u32(p + FT_IN_OPCODE_AT)), *st = NULL;
            if (op != NULL && (st = PyDict_GetItemWithError(ops, op)) == NULL && !PyErr_Occurred()) {
                st = Py_BuildValue("[LLLNN]", 0LL, 0LL, 0LL, PyList_New(0), PyDict_New());
                bad = st == NULL || PyDict_SetItem(ops, op, st) < 0;
                Py_XDECREF(st); /* the dict holds it */
            }
            bad = bad || st == NULL;
            for (int f = 0; f < 2 && !bad; f++) { /* count += 1, bytes in += true_len */
                PyObject *add = f ? PyLong_FromLongLong(true_len) : Py_NewRef(ONE);
                PyObject *sum = add ? PyNumber_Add(PyList_GET_ITEM(st, f), add) : NULL;
                Py_XDECREF(add);
                bad = sum == NULL || PyList_SetItem(st, f, sum) < 0;
            }
            int wants = bad ? 0 : PySet_Contains(no_reply, op);
            if (!bad && unique && wants == 0) {
                PyObject *pending = Py_BuildValue("LO", ts, st);
                bad = pending == NULL || PyDict_SetItem(asked, key, pending) < 0;
                Py_XDECREF(pending);
            }
            bad = bad || wants < 0;
            Py_XDECREF(op);
        } else if (!unique) {
            notifications++;
        } else {
            PyObject *pending = PyDict_GetItemWithError(asked, key);
            if (pending != NULL) {
                Py_INCREF(pending);
                bad = PyDict_DelItem(asked, key) < 0;
                PyObject *st = PyTuple_GET_ITEM(pending, 1);
                long long asked_ts = PyLong_AsLongLong(PyTuple_GET_ITEM(pending, 0));
                PyObject *lat = bad ? NULL : PyLong_FromLongLong(ts - asked_ts);
                bad = lat == NULL || PyList_Append(PyList_GET_ITEM(st, 3), lat) < 0;
                Py_XDECREF(lat);
                PyObject *add = bad ? NULL : PyLong_FromLongLong(true_len);
                PyObject *sum = add ? PyNumber_Add(PyList_GET_ITEM(st, 2), add) : NULL;
                Py_XDECREF(add);
                bad = bad || sum == NULL || PyList_SetItem(st, 2, sum) < 0;
                int32_t error = (int32_t)get_u32(p + FT_OUT_ERROR_AT);
                if (!bad && error) {
                    PyObject *errors = PyList_GET_ITEM(st, 4), *e = PyLong_FromLong(error);
                    PyObject *had = e ? PyDict_GetItemWithError(errors, e) : NULL;
                    PyObject *n = e == NULL || PyErr_Occurred() ? NULL
                                  : had ? PyNumber_Add(had, ONE) : Py_NewRef(ONE);
                    bad = n == NULL || PyDict_SetItem(errors, e, n) < 0;
                    Py_XDECREF(n);
                    Py_XDECREF(e);
                }
                Py_DECREF(pending);
            }
            bad = bad || PyErr_Occurred();
        }
        Py_DECREF(key);
        Py_DECREF(obj);
        if (bad || unique < 0)
            goto fail;
    }
    if (PyErr_Occurred())
        goto fail;
    PyObject *out = Py_BuildValue("OOLn", ops, kinds, notifications, PyDict_GET_SIZE(asked));
    Py_DECREF(ops);
    Py_DECREF(kinds);
    Py_DECREF(asked);
    return out;
fail:
    Py_XDECREF(ops);
    Py_XDECREF(kinds);
    Py_XDECREF(asked);
    return NULL;
}

static PyMethodDef methods[] = {
    {"run", (PyCFunction)(void (*)(void))run, METH_FASTCALL,
     "Take the common records; hand the others to Python."},
    {"tally", tally, METH_VARARGS, "`fusetrace stats`'s figures per opcode."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_pass", NULL, -1, methods};

PyMODINIT_FUNC PyInit__pass(void) {
    S_HIGHEST = PyUnicode_InternFromString("highest");
    S_EVENTS = PyUnicode_InternFromString("events");
    S_COUNT_ATTR = PyUnicode_InternFromString("count");
    S_LABEL = PyUnicode_InternFromString("label");
    S_WRITE_ERRNO = PyUnicode_InternFromString("write_errno");
    LEN_KEY = PyUnicode_InternFromString("len");
    ONE = PyLong_FromLong(1);
    NO_DETAIL = PyUnicode_FromString("");
    if (!S_HIGHEST || !S_EVENTS || !S_COUNT_ATTR || !S_LABEL || !S_WRITE_ERRNO || !LEN_KEY || !ONE || !NO_DETAIL)
        return NULL;
    return PyModule_Create(&module);
}
