/* The trace index's hot loop in C (`traces/index.py` `_scan`), and the reader's check of
 * plain records (`traces/reader.py` `arrays`; IOCTL and EVENT records too, by the rules
 * `traces/records.py` passes through `traces/native.py`).
 *
 * Given a batch of decoded records and their end offsets, append a row per record for
 * as long as the records are plain REQUEST/REPLY arrays `[kind, ts, bytes]` or
 * `[kind, ts, bytes, {"len": N}]` (the common cases); stop at the first other one, which
 * Python judges and adds. The header offsets and record kinds come from `facts.h`
 * (generated from the dissectors) and the no-reply opcodes from Python, so this file holds
 * no protocol knowledge, and it takes only records `problem()` accepts.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#include "facts.h"
#include "le.h"

static PyObject *LEN_KEY; /* "len" */

/* Whether a message record's meta is just {"len": N} as `problem()` accepts it: the true
 * length of a message cut by the snap length, 32-bit, not shorter than what was kept.
 * Anything else is left to Python. */
static int len_only(PyObject *meta, Py_ssize_t kept) {
    if (!PyDict_CheckExact(meta) || PyDict_GET_SIZE(meta) != 1)
        return 0;
    PyObject *v = PyDict_GetItem(meta, LEN_KEY); /* borrowed; no error for a str key */
    if (v == NULL || !PyLong_CheckExact(v))
        return 0;
    int overflow = 0;
    long long n = PyLong_AsLongLongAndOverflow(v, &overflow);
    return !overflow && n >= 0 && n < (1LL << 32) && n >= (long long)kept;
}

/* Whether a record is a plain REQUEST/REPLY (as `problem()` accepts it): its kind, ts
 * and message bytes. */
static int plain(PyObject *obj, unsigned long long ts_limit, long *kind, long long *ts,
                 PyObject **raw) {
    if (!PyList_CheckExact(obj) || PyList_GET_SIZE(obj) < 3 || PyList_GET_SIZE(obj) > 4)
        return 0;
    PyObject *k = PyList_GET_ITEM(obj, 0), *t = PyList_GET_ITEM(obj, 1);
    *raw = PyList_GET_ITEM(obj, 2);
    if (!PyBytes_CheckExact(*raw) || !PyLong_CheckExact(k) || !PyLong_CheckExact(t))
        return 0;
    if (PyList_GET_SIZE(obj) == 4 && !len_only(PyList_GET_ITEM(obj, 3), PyBytes_GET_SIZE(*raw)))
        return 0;
    int overflow = 0;
    *kind = PyLong_AsLongAndOverflow(k, &overflow);
    if (overflow || (*kind != FT_KIND_REQUEST && *kind != FT_KIND_REPLY))
        return 0;
    *ts = PyLong_AsLongLongAndOverflow(t, &overflow);
    return !overflow && *ts >= 0 && (unsigned long long)*ts < ts_limit;
}

/* Whether every value of an IOCTL or EVENT record's map is as `problem()` wants it, by
 * `quick` (key -> (types, lowest, past the highest int), `records.QUICK_RULES`): a key not in
 * it is fine with a plain scalar unless `fields` (`records.FIELDS`) has a rule for it. 0
 * leaves the record to Python. */
static int meta_ok(PyObject *meta, PyObject *quick, PyObject *fields) {
    Py_ssize_t pos = 0;
    PyObject *key, *value;
    while (PyDict_Next(meta, &pos, &key, &value)) {
        PyObject *spec = PyUnicode_CheckExact(key) ? PyDict_GetItemWithError(quick, key) : NULL;
        PyTypeObject *type = Py_TYPE(value);
        if (spec == NULL) {
            if (PyErr_Occurred())
                return -1;
            int ruled = PyDict_Contains(fields, key);
            if (ruled != 0)
                return ruled < 0 ? -1 : 0;
            if (value != Py_None && type != &PyBool_Type && type != &PyLong_Type
                && type != &PyFloat_Type && type != &PyUnicode_Type && type != &PyBytes_Type)
                return 0;
            continue;
        }
        if (!PyTuple_CheckExact(spec) || PyTuple_GET_SIZE(spec) != 3
            || !PyTuple_CheckExact(PyTuple_GET_ITEM(spec, 0)))
            return 0;
        PyObject *types = PyTuple_GET_ITEM(spec, 0);
        int typed = 0;
        for (Py_ssize_t t = 0; t < PyTuple_GET_SIZE(types) && !typed; t++)
            typed = (PyObject *)type == PyTuple_GET_ITEM(types, t);
        if (!typed)
            return 0;
        if (type == &PyLong_Type) {
            int lo = PyObject_RichCompareBool(PyTuple_GET_ITEM(spec, 1), value, Py_LE);
            int hi = lo == 1 ? PyObject_RichCompareBool(value, PyTuple_GET_ITEM(spec, 2), Py_LT) : lo;
            if (hi != 1)
                return hi < 0 ? -1 : 0;
        }
    }
    return 1;
}

static PyObject *CMD_KEY, *EVENT_KEY;

/* Whether an IOCTL or EVENT record is as `problem()` accepts it, judged by `meta_ok`. */
static int plain_other(PyObject *obj, unsigned long long ts_limit, PyObject *rules) {
    if (rules == NULL || !PyList_CheckExact(obj) || PyList_GET_SIZE(obj) != 3)
        return 0;
    PyObject *k = PyList_GET_ITEM(obj, 0), *t = PyList_GET_ITEM(obj, 1), *meta = PyList_GET_ITEM(obj, 2);
    if (!PyLong_CheckExact(k) || !PyLong_CheckExact(t) || !PyDict_CheckExact(meta))
        return 0;
    int overflow = 0;
    long kind = PyLong_AsLongAndOverflow(k, &overflow);
    if (overflow || (kind != FT_KIND_IOCTL && kind != FT_KIND_EVENT))
        return 0;
    long long ts = PyLong_AsLongLongAndOverflow(t, &overflow);
    if (overflow || ts < 0 || (unsigned long long)ts >= ts_limit)
        return 0;
    int named = PyDict_Contains(meta, kind == FT_KIND_IOCTL ? CMD_KEY : EVENT_KEY);
    if (named != 1)
        return named;
    return meta_ok(meta, PyTuple_GET_ITEM(rules, 0), PyTuple_GET_ITEM(rules, 1));
}

/* plain_until(objs, start, ts_limit, rules=None) -> the index of the first record from
 * `start` that is not plain (len(objs) when all are): the reader checks only those in
 * Python. With `rules` ((records.QUICK_RULES, records.FIELDS)), IOCTL and EVENT records whose
 * maps hold only values those rules are sure of count as plain too. */
static PyObject *plain_until(PyObject *self, PyObject *args, PyObject *kwargs) {
    static char *names[] = {"objs", "start", "ts_limit", "rules", NULL};
    PyObject *objs, *rules = NULL;
    Py_ssize_t i;
    unsigned long long ts_limit;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O!nK|O!", names, &PyList_Type, &objs, &i,
                                     &ts_limit, &PyTuple_Type, &rules))
        return NULL;
    if (rules != NULL && (PyTuple_GET_SIZE(rules) != 2 || !PyDict_Check(PyTuple_GET_ITEM(rules, 0))
                          || !PyDict_Check(PyTuple_GET_ITEM(rules, 1)))) {
        PyErr_SetString(PyExc_TypeError, "rules: (dict, dict)");
        return NULL;
    }
    long kind;
    long long ts;
    PyObject *raw;
    for (Py_ssize_t n = PyList_GET_SIZE(objs); i < n; i++) {
        PyObject *obj = PyList_GET_ITEM(objs, i);
        if (plain(obj, ts_limit, &kind, &ts, &raw))
            continue;
        int other = plain_other(obj, ts_limit, rules);
        if (other < 0)
            return NULL;
        if (!other)
            break;
    }
    return PyLong_FromSsize_t(i);
}

/* One column being filled: raw little-endian items, made a bytes object at the end. */
typedef struct {
    char *buf;
    Py_ssize_t item, used;
} Column;

static void put(Column *c, const void *v) {
    memcpy(c->buf + c->used, v, (size_t)c->item);
    c->used += c->item;
}

/* rows(objs, ends, start, offset, ts_limit, pending, no_reply)
 *   -> (stop, offset, (offset, ts, kind, opcode, unique, nodeid, error) as bytes)
 * `stop` is the index of the first record not taken (len(objs) when all were). */
static PyObject *rows(PyObject *self, PyObject *args) {
    PyObject *objs, *ends, *pending, *no_reply;
    Py_ssize_t start;
    unsigned long long offset;
    unsigned long long ts_limit;
    if (!PyArg_ParseTuple(args, "O!O!nKKO!O!", &PyList_Type, &objs, &PyList_Type, &ends,
                          &start, &offset, &ts_limit, &PyDict_Type, &pending,
                          &PyFrozenSet_Type, &no_reply))
        return NULL;
    Py_ssize_t n = PyList_GET_SIZE(objs);
    if (PyList_GET_SIZE(ends) != n || start < 0 || start > n) {
        PyErr_SetString(PyExc_ValueError, "objs and ends differ in length, or bad start");
        return NULL;
    }
    Py_ssize_t count = n - start;
    static const Py_ssize_t sizes[7] = {8, 8, 1, 4, 8, 8, 4};
    Column cols[7];
    char *block = PyMem_Malloc((size_t)(count ? count : 1) * 41);
    if (block == NULL)
        return PyErr_NoMemory();
    Py_ssize_t at = 0;
    for (int c = 0; c < 7; c++) {
        cols[c].buf = block + at;
        cols[c].item = sizes[c];
        cols[c].used = 0;
        at += sizes[c] * count;
    }
    Py_ssize_t i = start;
    for (; i < n; i++) {
        long kind;
        long long ts;
        PyObject *raw;
        if (!plain(PyList_GET_ITEM(objs, i), ts_limit, &kind, &ts, &raw))
            break;
        PyObject *end_o = PyList_GET_ITEM(ends, i);
        unsigned long long end = PyLong_AsUnsignedLongLong(end_o);
        if (end == (unsigned long long)-1 && PyErr_Occurred())
            goto fail;
        const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(raw);
        Py_ssize_t len = PyBytes_GET_SIZE(raw);
        uint32_t opcode = 0;
        uint64_t unique = 0, nodeid = 0;
        int32_t error = 0;
        if (kind == FT_KIND_REQUEST) {
            if (len >= FT_IN_HEADER_SIZE) {
                opcode = get_u32(p + FT_IN_OPCODE_AT);
                unique = get_u64(p + FT_IN_UNIQUE_AT);
                nodeid = get_u64(p + FT_IN_NODEID_AT);
            }
            if (unique) {
                PyObject *op = PyLong_FromUnsignedLong(opcode);
                if (op == NULL)
                    goto fail;
                int skip = PySet_Contains(no_reply, op);
                PyObject *key = skip ? NULL : PyLong_FromUnsignedLongLong(unique);
                int bad = skip < 0 || (!skip && (key == NULL || PyDict_SetItem(pending, key, op) < 0));
                Py_DECREF(op);
                Py_XDECREF(key);
                if (bad)
                    goto fail;
            }
        } else {
            if (len >= FT_OUT_HEADER_SIZE) {
                error = (int32_t)get_u32(p + FT_OUT_ERROR_AT);
                unique = get_u64(p + FT_OUT_UNIQUE_AT);
            }
            if (unique) {
                PyObject *key = PyLong_FromUnsignedLongLong(unique);
                if (key == NULL)
                    goto fail;
                PyObject *op = PyDict_GetItemWithError(pending, key); /* borrowed */
                if (op != NULL) {
                    opcode = (uint32_t)PyLong_AsUnsignedLong(op);
                    Py_INCREF(op);
                    int bad = PyDict_DelItem(pending, key) < 0;
                    Py_DECREF(op);
                    if (bad) {
                        Py_DECREF(key);
                        goto fail;
                    }
                }
                Py_DECREF(key);
                if (PyErr_Occurred())
                    goto fail;
            }
        }
        int64_t ts64 = ts;
        uint8_t kind8 = (uint8_t)kind;
        uint64_t off64 = offset;
        put(&cols[0], &off64);
        put(&cols[1], &ts64);
        put(&cols[2], &kind8);
        put(&cols[3], &opcode);
        put(&cols[4], &unique);
        put(&cols[5], &nodeid);
        put(&cols[6], &error);
        offset = end;
    }
    PyObject *out = PyTuple_New(7);
    if (out == NULL)
        goto fail;
    for (int c = 0; c < 7; c++) {
        PyObject *b = PyBytes_FromStringAndSize(cols[c].buf, cols[c].used);
        if (b == NULL) {
            Py_DECREF(out);
            goto fail;
        }
        PyTuple_SET_ITEM(out, c, b);
    }
    PyMem_Free(block);
    return Py_BuildValue("nKN", i, offset, out);
fail:
    PyMem_Free(block);
    return NULL;
}

static PyMethodDef methods[] = {
    {"rows", rows, METH_VARARGS, "Index rows of plain REQUEST/REPLY records."},
    {"plain_until", (PyCFunction)(void (*)(void))plain_until, METH_VARARGS | METH_KEYWORDS,
     "The first record that is not plain."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_scan", NULL, -1, methods};

PyMODINIT_FUNC PyInit__scan(void) {
    LEN_KEY = PyUnicode_InternFromString("len");
    CMD_KEY = PyUnicode_InternFromString("cmd");
    EVENT_KEY = PyUnicode_InternFromString("event");
    if (LEN_KEY == NULL || CMD_KEY == NULL || EVENT_KEY == NULL)
        return NULL;
    return PyModule_Create(&module);
}
