/*
 * An LD_PRELOAD shim that makes a replica's disk fail with EIO on demand,
 * for raft-node/tests/disk_faults.rs. Built by that test with `cc -shared`.
 *
 * While the file named by QM_EIO_SHIM_TRIGGER exists and holds a directory
 * path, every write, pwrite, writev, fsync, fdatasync and sync_file_range
 * on a file under that directory fails with EIO, as a dying drive's would.
 * Remove the trigger file (or empty it) and I/O works again. Sockets, pipes
 * and files elsewhere are never touched, so the replica keeps talking to its
 * peers and clients. Without QM_EIO_SHIM_TRIGGER the shim does nothing.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

/* The failing directory if the trigger is armed, else an empty string. */
static int armed_prefix(char *prefix, size_t size) {
    const char *trigger = getenv("QM_EIO_SHIM_TRIGGER");
    if (trigger == NULL || trigger[0] == '\0') return 0;
    /* The raw syscall: open() from here would recurse through nothing we
       wrap, but read() of the trigger must not be wrapped either (it isn't). */
    int fd = open(trigger, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    ssize_t n = read(fd, prefix, size - 1);
    close(fd);
    if (n <= 0) return 0;
    prefix[n] = '\0';
    while (n > 0 && (prefix[n - 1] == '\n' || prefix[n - 1] == '/')) prefix[--n] = '\0';
    return n > 0;
}

/* Whether fd is a file under the armed directory. */
static int fails(int fd) {
    char prefix[PATH_MAX];
    if (!armed_prefix(prefix, sizeof prefix)) return 0;
    char link[64], path[PATH_MAX];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, sizeof path - 1);
    if (n <= 0) return 0;
    path[n] = '\0';
    size_t len = strlen(prefix);
    return strncmp(path, prefix, len) == 0 && (path[len] == '/' || path[len] == '\0');
}

#define REAL(name) static __typeof__(name) *real = NULL; if (!real) real = (__typeof__(name) *)dlsym(RTLD_NEXT, #name)
#define FAIL_IF(fd) do { if (fails(fd)) { errno = EIO; return -1; } } while (0)

ssize_t write(int fd, const void *buf, size_t count) { REAL(write); FAIL_IF(fd); return real(fd, buf, count); }
ssize_t pwrite(int fd, const void *buf, size_t count, off_t offset) { REAL(pwrite); FAIL_IF(fd); return real(fd, buf, count, offset); }
ssize_t pwrite64(int fd, const void *buf, size_t count, off64_t offset) { REAL(pwrite64); FAIL_IF(fd); return real(fd, buf, count, offset); }
ssize_t writev(int fd, const struct iovec *iov, int iovcnt) { REAL(writev); FAIL_IF(fd); return real(fd, iov, iovcnt); }
ssize_t pwritev(int fd, const struct iovec *iov, int iovcnt, off_t offset) { REAL(pwritev); FAIL_IF(fd); return real(fd, iov, iovcnt, offset); }
int fsync(int fd) { REAL(fsync); FAIL_IF(fd); return real(fd); }
int fdatasync(int fd) { REAL(fdatasync); FAIL_IF(fd); return real(fd); }
int sync_file_range(int fd, off64_t offset, off64_t nbytes, unsigned int flags) { REAL(sync_file_range); FAIL_IF(fd); return real(fd, offset, nbytes, flags); }
