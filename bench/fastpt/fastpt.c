/*
 * fastpt: a small, multi-threaded passthrough filesystem on the raw /dev/fuse protocol, for
 * the bench (bench/record_overhead.py): a server whose own cost per request is a few
 * syscalls, so that what the recorder adds shows. No libfuse: Debian's has no passthrough
 * API.
 *
 *   fastpt [-o attr_timeout=S,entry_timeout=S,allow_other,default_permissions]
 *          [--no-passthrough] [--threads N] SOURCE MOUNTPOINT
 *
 * MOUNTPOINT `/dev/fd/N` means "already mounted, N is the connection" (libfuse 3.3+'s
 * convention; `fusetrace record --connect dev-fd` hands a socket so); otherwise it opens
 * /dev/fuse and mounts it with mount(2) (root). Files are opened on the source and, with
 * passthrough, registered with FUSE_DEV_IOC_BACKING_OPEN and answered FOPEN_PASSTHROUGH;
 * RELEASE drops the backing id with FUSE_DEV_IOC_BACKING_CLOSE. Node ids are indexes in a
 * table keyed by inode and never reused; a node's path is the one it was first looked up
 * by (no rename: the bench does not need it).
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/fuse.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/uio.h>
#include <unistd.h>

/* Passthrough (protocol 7.40, Linux 6.9) is newer than this system's <linux/fuse.h>; the
 * same facts are declared for Python in dissectors/constants.py and dissectors/ioctls.py. */
#define INIT_FLAGS2_PASSTHROUGH (1u << (37 - 32)) /* FUSE_PASSTHROUGH, in flags2 */
#define OPEN_PASSTHROUGH (1u << 7)                /* FOPEN_PASSTHROUGH */
struct backing_map { int32_t fd; uint32_t flags; uint64_t padding; }; /* fuse_backing_map */
#define IOC_BACKING_OPEN _IOW(229, 1, struct backing_map)
#define IOC_BACKING_CLOSE _IOW(229, 2, uint32_t)
/* fuse_init_out.max_stack_depth is unused[0] of the 7.38 struct; fuse_open_out.backing_id
 * its padding. */
#define MAX_WRITE (1u << 20)
#define BUFSIZE (MAX_WRITE + 8192)

struct node {
    uint64_t ino;
    char *path; /* relative to the source, "." for the root */
};

static struct {
    int src, dev, passthrough, threads;
    double attr_timeout, entry_timeout;
    const char *mountpoint;
    int mounted;
    pthread_mutex_t lock;
    struct node *nodes;     /* nodes[nodeid]; 0 unused */
    size_t count, cap;
    uint64_t *hash;         /* ino -> nodeid, open addressing, 0 empty */
    size_t hmask;
} fs = {.passthrough = 1, .threads = 4, .attr_timeout = 1, .entry_timeout = 1,
        .lock = PTHREAD_MUTEX_INITIALIZER};

static void die(const char *what)
{
    fprintf(stderr, "fastpt: %s: %s\n", what, strerror(errno));
    exit(1);
}

static size_t hslot(uint64_t ino) { return (size_t)((ino * 0x9E3779B97F4A7C15ull) >> 17) & fs.hmask; }

static void hgrow(void)
{
    size_t n = fs.hmask ? (fs.hmask + 1) * 2 : 1024;
    uint64_t *old = fs.hash;
    size_t oldn = fs.hmask ? fs.hmask + 1 : 0;
    fs.hash = calloc(n, sizeof *fs.hash);
    if (!fs.hash)
        die("calloc");
    fs.hmask = n - 1;
    for (size_t i = 0; i < oldn; i++)
        if (old[i]) {
            size_t j = hslot(fs.nodes[old[i]].ino);
            while (fs.hash[j])
                j = (j + 1) & fs.hmask;
            fs.hash[j] = old[i];
        }
    free(old);
}

/* The node id of `ino`, made with `path` the first time. */
static uint64_t node_for(uint64_t ino, const char *path)
{
    pthread_mutex_lock(&fs.lock);
    if ((fs.count + 1) * 2 > fs.hmask + 1)
        hgrow();
    size_t j = hslot(ino);
    while (fs.hash[j] && fs.nodes[fs.hash[j]].ino != ino)
        j = (j + 1) & fs.hmask;
    uint64_t id = fs.hash[j];
    if (!id) {
        if (fs.count + 1 >= fs.cap) {
            fs.cap = fs.cap ? fs.cap * 2 : 1024;
            fs.nodes = realloc(fs.nodes, fs.cap * sizeof *fs.nodes);
            if (!fs.nodes)
                die("realloc");
        }
        id = ++fs.count;
        fs.nodes[id].ino = ino;
        fs.nodes[id].path = strdup(path);
        fs.hash[j] = id;
    }
    pthread_mutex_unlock(&fs.lock);
    return id;
}

/* A copy of the path of node `id`, or NULL (ESTALE). */
static char *path_of(uint64_t id)
{
    char *p = NULL;
    pthread_mutex_lock(&fs.lock);
    if (id && id <= fs.count)
        p = strdup(fs.nodes[id].path);
    pthread_mutex_unlock(&fs.lock);
    return p;
}

static void reply(uint64_t unique, int err, const void *data, size_t len)
{
    struct fuse_out_header h = {.len = (uint32_t)(sizeof h + (err ? 0 : len)), .error = -err,
                                .unique = unique};
    struct iovec iov[2] = {{&h, sizeof h}, {(void *)data, err ? 0 : len}};
    if (writev(fs.dev, iov, 2) < 0 && errno != ENOENT) { /* ENOENT: interrupted meanwhile */
        if (errno == ENODEV || errno == EPIPE || errno == ECONNRESET)
            _exit(0);
        perror("fastpt: reply");
    }
}

static void fill_attr(struct fuse_attr *a, const struct stat *st)
{
    memset(a, 0, sizeof *a);
    a->ino = st->st_ino;
    a->size = (uint64_t)st->st_size;
    a->blocks = (uint64_t)st->st_blocks;
    a->atime = (uint64_t)st->st_atim.tv_sec, a->atimensec = (uint32_t)st->st_atim.tv_nsec;
    a->mtime = (uint64_t)st->st_mtim.tv_sec, a->mtimensec = (uint32_t)st->st_mtim.tv_nsec;
    a->ctime = (uint64_t)st->st_ctim.tv_sec, a->ctimensec = (uint32_t)st->st_ctim.tv_nsec;
    a->mode = st->st_mode;
    a->nlink = (uint32_t)st->st_nlink;
    a->uid = st->st_uid, a->gid = st->st_gid;
    a->rdev = (uint32_t)st->st_rdev;
    a->blksize = (uint32_t)st->st_blksize;
}

static void split(double t, uint64_t *s, uint32_t *ns)
{
    *s = (uint64_t)t;
    *ns = (uint32_t)((t - (double)*s) * 1e9);
}

static void reply_attr(uint64_t unique, const struct stat *st)
{
    struct fuse_attr_out out = {0};
    split(fs.attr_timeout, &out.attr_valid, &out.attr_valid_nsec);
    fill_attr(&out.attr, st);
    reply(unique, 0, &out, sizeof out);
}

static int stat_node(uint64_t id, struct stat *st)
{
    char *p = path_of(id);
    if (!p)
        return ESTALE;
    int r = fstatat(fs.src, p, st, AT_SYMLINK_NOFOLLOW) ? errno : 0;
    free(p);
    return r;
}

static void do_init(const struct fuse_in_header *h, const struct fuse_init_in *in)
{
    struct fuse_init_out out = {0};
    uint32_t want = FUSE_ASYNC_READ | FUSE_BIG_WRITES | FUSE_MAX_PAGES | FUSE_PARALLEL_DIROPS
                    | FUSE_INIT_EXT;
    out.major = FUSE_KERNEL_VERSION;
    out.minor = in->minor;
    out.max_readahead = in->max_readahead;
    out.flags = in->flags & want;
    out.max_background = 64;
    out.congestion_threshold = 48;
    out.max_write = MAX_WRITE;
    out.time_gran = 1;
    out.max_pages = MAX_WRITE / 4096;
    if (fs.passthrough && (in->flags & FUSE_INIT_EXT) && (in->flags2 & INIT_FLAGS2_PASSTHROUGH)) {
        out.flags2 = INIT_FLAGS2_PASSTHROUGH;
        out.unused[0] = 1; /* max_stack_depth: backing files on ordinary filesystems */
    } else {
        fs.passthrough = 0;
    }
    reply(h->unique, 0, &out, sizeof out);
}

static void do_lookup(const struct fuse_in_header *h, const char *name)
{
    char *dir = path_of(h->nodeid), *path;
    if (!dir)
        return reply(h->unique, ESTALE, NULL, 0);
    int n = strcmp(dir, ".") ? asprintf(&path, "%s/%s", dir, name) : asprintf(&path, "%s", name);
    free(dir);
    if (n < 0)
        return reply(h->unique, ENOMEM, NULL, 0);
    struct stat st;
    if (fstatat(fs.src, path, &st, AT_SYMLINK_NOFOLLOW)) {
        int err = errno;
        free(path);
        return reply(h->unique, err, NULL, 0);
    }
    struct fuse_entry_out out = {0};
    out.nodeid = node_for(st.st_ino, path);
    free(path);
    split(fs.entry_timeout, &out.entry_valid, &out.entry_valid_nsec);
    split(fs.attr_timeout, &out.attr_valid, &out.attr_valid_nsec);
    fill_attr(&out.attr, &st);
    reply(h->unique, 0, &out, sizeof out);
}

static void do_getattr(const struct fuse_in_header *h, const struct fuse_getattr_in *in)
{
    struct stat st;
    int err = (in->getattr_flags & FUSE_GETATTR_FH) ? (fstat((int)in->fh, &st) ? errno : 0)
                                                     : stat_node(h->nodeid, &st);
    if (err)
        return reply(h->unique, err, NULL, 0);
    reply_attr(h->unique, &st);
}

static void do_setattr(const struct fuse_in_header *h, const struct fuse_setattr_in *in)
{
    char *p = path_of(h->nodeid);
    int err = p ? 0 : ESTALE;
    if (!err && (in->valid & FATTR_MODE) && fchmodat(fs.src, p, in->mode & 07777, 0))
        err = errno;
    if (!err && (in->valid & (FATTR_UID | FATTR_GID))
        && fchownat(fs.src, p, (in->valid & FATTR_UID) ? in->uid : (uid_t)-1,
                    (in->valid & FATTR_GID) ? in->gid : (gid_t)-1, AT_SYMLINK_NOFOLLOW))
        err = errno;
    if (!err && (in->valid & FATTR_SIZE)) {
        int fd = (in->valid & FATTR_FH) ? (int)in->fh : openat(fs.src, p, O_WRONLY | O_CLOEXEC);
        if (fd < 0 || ftruncate(fd, (off_t)in->size))
            err = errno;
        if (fd >= 0 && !(in->valid & FATTR_FH))
            close(fd);
    }
    if (!err && (in->valid & (FATTR_ATIME | FATTR_MTIME))) {
        struct timespec ts[2] = {{0, UTIME_OMIT}, {0, UTIME_OMIT}};
        if (in->valid & FATTR_ATIME)
            ts[0] = (in->valid & FATTR_ATIME_NOW) ? (struct timespec){0, UTIME_NOW}
                        : (struct timespec){(time_t)in->atime, in->atimensec};
        if (in->valid & FATTR_MTIME)
            ts[1] = (in->valid & FATTR_MTIME_NOW) ? (struct timespec){0, UTIME_NOW}
                        : (struct timespec){(time_t)in->mtime, in->mtimensec};
        if (utimensat(fs.src, p, ts, AT_SYMLINK_NOFOLLOW))
            err = errno;
    }
    free(p);
    struct stat st;
    if (!err)
        err = stat_node(h->nodeid, &st);
    if (err)
        return reply(h->unique, err, NULL, 0);
    reply_attr(h->unique, &st);
}

/* fh: the source fd in the low 32 bits, the backing id (0: none) in the high ones. */
static void do_open(const struct fuse_in_header *h, const struct fuse_open_in *in)
{
    char *p = path_of(h->nodeid);
    if (!p)
        return reply(h->unique, ESTALE, NULL, 0);
    int fd = openat(fs.src, p, (int)(in->flags & ~(O_CREAT | O_EXCL | O_NOCTTY | O_TRUNC)) | O_CLOEXEC);
    int err = errno;
    free(p);
    if (fd < 0)
        return reply(h->unique, err, NULL, 0);
    if ((in->flags & O_TRUNC) && ftruncate(fd, 0)) {
        err = errno;
        close(fd);
        return reply(h->unique, err, NULL, 0);
    }
    struct fuse_open_out out = {.fh = (uint32_t)fd};
    if (fs.passthrough) {
        struct backing_map map = {.fd = fd};
        int id = ioctl(fs.dev, IOC_BACKING_OPEN, &map);
        if (id > 0) {
            out.open_flags = OPEN_PASSTHROUGH;
            out.padding = (uint32_t)id; /* backing_id */
            out.fh |= (uint64_t)id << 32;
        }
    }
    reply(h->unique, 0, &out, sizeof out);
}

static void do_release(const struct fuse_in_header *h, const struct fuse_release_in *in)
{
    uint32_t id = (uint32_t)(in->fh >> 32);
    if (id && ioctl(fs.dev, IOC_BACKING_CLOSE, &id))
        perror("fastpt: BACKING_CLOSE");
    close((int)(uint32_t)in->fh);
    reply(h->unique, 0, NULL, 0);
}

static void do_read(const struct fuse_in_header *h, const struct fuse_read_in *in, char *buf)
{
    size_t size = in->size < MAX_WRITE ? in->size : MAX_WRITE;
    ssize_t n = pread((int)(uint32_t)in->fh, buf, size, (off_t)in->offset);
    if (n < 0)
        return reply(h->unique, errno, NULL, 0);
    reply(h->unique, 0, buf, (size_t)n);
}

static void do_write(const struct fuse_in_header *h, const struct fuse_write_in *in)
{
    ssize_t n = pwrite((int)(uint32_t)in->fh, in + 1, in->size, (off_t)in->offset);
    if (n < 0)
        return reply(h->unique, errno, NULL, 0);
    struct fuse_write_out out = {.size = (uint32_t)n};
    reply(h->unique, 0, &out, sizeof out);
}

static void do_opendir(const struct fuse_in_header *h)
{
    char *p = path_of(h->nodeid);
    if (!p)
        return reply(h->unique, ESTALE, NULL, 0);
    int fd = openat(fs.src, p, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    int err = errno;
    free(p);
    DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
    if (!d) {
        err = fd >= 0 ? errno : err;
        if (fd >= 0)
            close(fd);
        return reply(h->unique, err, NULL, 0);
    }
    struct fuse_open_out out = {.fh = (uint64_t)(uintptr_t)d};
    reply(h->unique, 0, &out, sizeof out);
}

/* Entries from `offset` (a telldir cookie, 0 from the start) while they fit in `size`. */
static void do_readdir(const struct fuse_in_header *h, const struct fuse_read_in *in, char *buf)
{
    DIR *d = (DIR *)(uintptr_t)in->fh;
    size_t size = in->size < MAX_WRITE ? in->size : MAX_WRITE, used = 0;
    if (in->offset)
        seekdir(d, (long)in->offset);
    else
        rewinddir(d);
    for (;;) {
        long before = telldir(d);
        errno = 0;
        struct dirent *e = readdir(d);
        if (!e) {
            if (errno)
                return reply(h->unique, errno, NULL, 0);
            break;
        }
        size_t namelen = strlen(e->d_name), len = FUSE_DIRENT_ALIGN(FUSE_NAME_OFFSET + namelen);
        if (used + len > size) {
            seekdir(d, before);
            break;
        }
        struct fuse_dirent *de = (struct fuse_dirent *)(buf + used);
        de->ino = e->d_ino;
        de->off = (uint64_t)telldir(d);
        de->namelen = (uint32_t)namelen;
        de->type = e->d_type;
        memcpy(de->name, e->d_name, namelen);
        memset(de->name + namelen, 0, len - FUSE_NAME_OFFSET - namelen);
        used += len;
    }
    reply(h->unique, 0, buf, used);
}

static void do_statfs(const struct fuse_in_header *h)
{
    struct statvfs s;
    if (fstatvfs(fs.src, &s))
        return reply(h->unique, errno, NULL, 0);
    struct fuse_statfs_out out = {.st = {.blocks = s.f_blocks, .bfree = s.f_bfree,
        .bavail = s.f_bavail, .files = s.f_files, .ffree = s.f_ffree,
        .bsize = (uint32_t)s.f_bsize, .namelen = (uint32_t)s.f_namemax,
        .frsize = (uint32_t)s.f_frsize}};
    reply(h->unique, 0, &out, sizeof out);
}

static void do_readlink(const struct fuse_in_header *h, char *buf)
{
    char *p = path_of(h->nodeid);
    if (!p)
        return reply(h->unique, ESTALE, NULL, 0);
    ssize_t n = readlinkat(fs.src, p, buf, MAX_WRITE);
    int err = errno;
    free(p);
    if (n < 0)
        return reply(h->unique, err, NULL, 0);
    reply(h->unique, 0, buf, (size_t)n);
}

static void handle(char *msg, char *out)
{
    const struct fuse_in_header *h = (const struct fuse_in_header *)msg;
    const void *arg = h + 1;
    switch (h->opcode) {
    case FUSE_INIT: return do_init(h, arg);
    case FUSE_LOOKUP: return do_lookup(h, arg);
    case FUSE_FORGET: case FUSE_BATCH_FORGET: case FUSE_INTERRUPT:
        return; /* no reply; nodes are never reused, so a forget needs nothing */
    case FUSE_GETATTR: return do_getattr(h, arg);
    case FUSE_SETATTR: return do_setattr(h, arg);
    case FUSE_OPEN: return do_open(h, arg);
    case FUSE_RELEASE: return do_release(h, arg);
    case FUSE_READ: return do_read(h, arg, out);
    case FUSE_WRITE: return do_write(h, arg);
    case FUSE_FLUSH: return reply(h->unique, 0, NULL, 0);
    case FUSE_FSYNC: {
        const struct fuse_fsync_in *in = arg;
        int r = (in->fsync_flags & 1) ? fdatasync((int)(uint32_t)in->fh) : fsync((int)(uint32_t)in->fh);
        return reply(h->unique, r ? errno : 0, NULL, 0);
    }
    case FUSE_OPENDIR: return do_opendir(h);
    case FUSE_READDIR: return do_readdir(h, arg, out);
    case FUSE_RELEASEDIR:
        closedir((DIR *)(uintptr_t)((const struct fuse_release_in *)arg)->fh);
        return reply(h->unique, 0, NULL, 0);
    case FUSE_STATFS: return do_statfs(h);
    case FUSE_READLINK: return do_readlink(h, out);
    case FUSE_DESTROY: return reply(h->unique, 0, NULL, 0);
    default: return reply(h->unique, ENOSYS, NULL, 0); /* ACCESS, xattrs …: the kernel stops asking */
    }
}

static void *worker(void *unused)
{
    char *msg = malloc(BUFSIZE), *out = malloc(MAX_WRITE);
    if (!msg || !out)
        die("malloc");
    for (;;) {
        ssize_t n = read(fs.dev, msg, BUFSIZE);
        if (n > 0 && (size_t)n >= sizeof(struct fuse_in_header)) {
            handle(msg, out);
        } else if (n == 0 || errno == ENODEV) {
            _exit(0); /* unmounted (ENODEV), or the socket we were handed closed */
        } else if (n < 0 && errno != EINTR && errno != EAGAIN && errno != ENOENT) {
            die("reading requests");
        }
    }
    return NULL;
}

static void on_signal(int sig)
{
    if (fs.mounted)
        umount2(fs.mountpoint, MNT_DETACH);
    _exit(0);
}

static double seconds(const char *opt, const char *value)
{
    char *end;
    double v = strtod(value, &end);
    if (*end || v < 0) {
        fprintf(stderr, "fastpt: bad %s: %s\n", opt, value);
        exit(2);
    }
    return v;
}

int main(int argc, char **argv)
{
    char extra[256] = "";
    const char *args[2];
    int nargs = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-o") && i + 1 < argc) {
            char *opts = strdup(argv[++i]), *save, *o;
            for (o = strtok_r(opts, ",", &save); o; o = strtok_r(NULL, ",", &save)) {
                if (!strncmp(o, "attr_timeout=", 13))
                    fs.attr_timeout = seconds("attr_timeout", o + 13);
                else if (!strncmp(o, "entry_timeout=", 14))
                    fs.entry_timeout = seconds("entry_timeout", o + 14);
                else if (!strcmp(o, "allow_other") || !strcmp(o, "default_permissions"))
                    strcat(strcat(extra, ","), o);
                else {
                    fprintf(stderr, "fastpt: unknown option %s\n", o);
                    return 2;
                }
            }
            free(opts);
        } else if (!strcmp(argv[i], "--no-passthrough")) {
            fs.passthrough = 0;
        } else if (!strcmp(argv[i], "--threads") && i + 1 < argc) {
            fs.threads = atoi(argv[++i]);
        } else if (argv[i][0] != '-' && nargs < 2) {
            args[nargs++] = argv[i];
        } else {
            fprintf(stderr, "usage: fastpt [-o OPTS] [--no-passthrough] [--threads N] SOURCE MOUNTPOINT\n");
            return 2;
        }
    }
    if (nargs != 2 || fs.threads < 1) {
        fprintf(stderr, "usage: fastpt [-o OPTS] [--no-passthrough] [--threads N] SOURCE MOUNTPOINT\n");
        return 2;
    }
    fs.src = open(args[0], O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fs.src < 0)
        die(args[0]);
    struct stat root;
    if (fstat(fs.src, &root))
        die(args[0]);
    if (node_for(root.st_ino, ".") != FUSE_ROOT_ID)
        return 1;
    fs.mountpoint = args[1];
    char tail;
    if (sscanf(fs.mountpoint, "/dev/fd/%d%c", &fs.dev, &tail) == 1) {
        if (fcntl(fs.dev, F_GETFD) < 0)
            die(fs.mountpoint);
    } else {
        fs.dev = open("/dev/fuse", O_RDWR | O_CLOEXEC);
        if (fs.dev < 0)
            die("/dev/fuse");
        char data[512];
        snprintf(data, sizeof data, "fd=%d,rootmode=%o,user_id=%u,group_id=%u%s", fs.dev,
                 root.st_mode & S_IFMT, getuid(), getgid(), extra);
        if (mount("fastpt", fs.mountpoint, "fuse.fastpt", MS_NOSUID | MS_NODEV, data))
            die(fs.mountpoint);
        fs.mounted = 1;
    }
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    signal(SIGHUP, on_signal);
    for (int i = 1; i < fs.threads; i++) {
        pthread_t t;
        if (pthread_create(&t, NULL, worker, NULL))
            die("pthread_create");
    }
    worker(NULL);
    return 0;
}
