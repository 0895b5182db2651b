"""Trace appends per second from 1, 2 and 4 threads, the way the recorder's C loops make
them (`traces/append.h`, no GIL, a 2-piece record of RECORD bytes), side by side in one
run:

- write(2): each thread `write`s its record to an O_APPEND file: the baseline (what a
  plain `os.write` appender costs, without its lock or Python);
- writev appender: `traces._append.Appender` on a write-only descriptor, which takes its
  plain path (one lock, one writev per record: the appender before the mapping);
- mapped appender: `traces._append.Appender` on a read-write file, the recorder's.

Ratios are to write(2) from the same number of threads. A small C driver (embedding
Python only to create the appender) is compiled for the run: it needs gcc and the Python
headers, as the extensions do. Run: .venv/bin/python bench/append_speed.py [seconds]
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RECORD = 160  # bytes: a metadata request's record
MODES = ("write", "writev", "mapped")

_DRIVER = r"""
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include "append.h"

static TraceAppendAPI *api;
static PyObject *appender;
static int fd, mode;
static volatile int go, stop;
static unsigned char head[16], body[RECORD - 16];

static void *work(void *arg)
{
    unsigned long long *count = arg;
    struct iovec iov[2] = {{head, sizeof head}, {body, sizeof body}};
    while (!go) ;
    while (!stop) {
        if (mode == 0) {
            unsigned char rec[RECORD];
            memcpy(rec, head, sizeof head), memcpy(rec + sizeof head, body, sizeof body);
            if (write(fd, rec, sizeof rec) != (ssize_t)sizeof rec) abort();
        } else if (api->write(appender, iov, 2, 1, 0)) {
            abort();
        }
        ++*count;
    }
    return NULL;
}

int main(int argc, char **argv)
{
    const char *path = argv[1];
    mode = atoi(argv[2]);
    int threads = atoi(argv[3]);
    double seconds = atof(argv[4]);
    memset(head, 0x93, sizeof head), memset(body, 'x', sizeof body);
    fd = open(path, (mode == 2 ? O_RDWR : O_WRONLY) | O_CREAT | O_TRUNC | O_APPEND, 0600);
    if (mode) {
        Py_Initialize();
        PyObject *m = PyImport_ImportModule("traces._append");
        api = PyCapsule_Import(TRACE_APPEND_CAPSULE, 0);
        if (!m || !api) { PyErr_Print(); return 2; }
        appender = PyObject_CallMethod(m, "Appender", "i", fd);
        if (!appender) { PyErr_Print(); return 2; }
        PyEval_SaveThread();  /* the appends run without the GIL, as in the recorder */
    }
    pthread_t t[16];
    unsigned long long counts[16][8] = {{0}};
    for (int i = 0; i < threads; i++)
        pthread_create(&t[i], NULL, work, counts[i]);
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    go = 1;
    struct timespec nap = {(time_t)seconds, (long)((seconds - (time_t)seconds) * 1e9)};
    nanosleep(&nap, NULL);
    stop = 1;
    unsigned long long total = 0;
    for (int i = 0; i < threads; i++)
        pthread_join(t[i], NULL), total += counts[i][0];
    clock_gettime(CLOCK_MONOTONIC, &b);
    printf("%.0f\n", total / ((b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) / 1e9));
    return 0;
}
"""


def build(tmp: str) -> str:
    src, exe = os.path.join(tmp, "driver.c"), os.path.join(tmp, "driver")
    Path(src).write_text(_DRIVER)
    libdir = sysconfig.get_config_var("LIBDIR")
    ldlib = f"python{sysconfig.get_config_var('LDVERSION')}"
    subprocess.run(["gcc", "-O2", f"-DRECORD={RECORD}", f"-I{sysconfig.get_paths()['include']}",
                    f"-I{REPO / 'traces'}", src, "-o", exe, f"-L{libdir}", f"-l{ldlib}",
                    f"-Wl,-rpath,{libdir}", "-lpthread", "-lm", "-ldl"], check=True)
    return exe


def rate(exe: str, tmp: str, mode: str, threads: int, seconds: float) -> float:
    path = os.path.join(tmp, f"{mode}-{threads}.fzt")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), *sys.path])}  # the venv
    done = subprocess.run([exe, path, str(MODES.index(mode)), str(threads), str(seconds)],
                          capture_output=True, text=True, env=env)
    if done.returncode:
        raise SystemExit(f"{mode} driver failed: {done.stderr.strip()}")
    out = done.stdout
    os.unlink(path)
    return float(out)


def main(argv: list[str]) -> None:
    seconds = float(argv[0]) if argv else 0.5
    with tempfile.TemporaryDirectory(prefix="fusetrace-append-") as tmp:
        exe = build(tmp)
        print(f"{RECORD}-byte records, {seconds} s each, {os.cpu_count()} cores; "
              "appends/s (ratio to write(2) from as many threads)")
        print(f"{'threads':>7} " + " ".join(f"{m:>22}" for m in MODES))
        for threads in (1, 2, 4):
            rates = {m: rate(exe, tmp, m, threads, seconds) for m in MODES}
            cells = [f"{rates[m]:>13,.0f} ({rates[m] / rates['write']:4.2f}x)" for m in MODES]
            print(f"{threads:>7} " + " ".join(f"{c:>22}" for c in cells))


if __name__ == "__main__":
    main(sys.argv[1:])
