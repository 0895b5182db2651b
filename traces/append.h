/* The trace appender's C API (`traces/_append.c`), for other extensions: the relay loop
 * and the seccomp trap append records without the GIL and without a Python call.
 *
 *     TraceAppendAPI *api; PyTypeObject *type;
 *     if (trace_append_import(&api, &type) < 0) return NULL;  // in the module's init
 *     int err = api->write(appender, iov, iovcnt, 1, 0);      // 0 or an errno
 *
 * `appender` is a `traces._append.Appender` the caller holds a reference to. `write`
 * appends the bytes of `iov` as `count` whole records, or none of them; it is
 * thread-safe and needs no GIL. An errno means the record is not in the trace: the first
 * failure stops the trace for every writer (later calls return the same errno), except
 * `closing` appends (where recording stopped, the session's end), which go into the
 * room kept for them. EBADF: the appender is closed.
 */
#ifndef FUSETRACE_APPEND_H
#define FUSETRACE_APPEND_H
#include <Python.h>
#include <sys/uio.h>

typedef struct {
    int (*write)(PyObject *appender, const struct iovec *iov, int iovcnt, unsigned count,
                 int closing);
} TraceAppendAPI;

#define TRACE_APPEND_CAPSULE "traces._append.API"

/* The API and the `Appender` type (to check arguments against), for a module's init;
 * -1 with a Python exception set when `traces._append` cannot be imported. */
static inline int trace_append_import(TraceAppendAPI **api, PyTypeObject **type)
{
    *api = PyCapsule_Import(TRACE_APPEND_CAPSULE, 0);
    if (!*api)
        return -1;
    PyObject *module = PyImport_ImportModule("traces._append");
    if (!module)
        return -1;
    *type = (PyTypeObject *)PyObject_GetAttrString(module, "Appender");
    Py_DECREF(module);
    return *type ? 0 : -1;
}
#endif
