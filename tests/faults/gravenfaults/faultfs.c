/* LD_PRELOAD shim for the fault harness: makes fsync or writes to regular files fail with EIO
 * while a one-byte control file says so, without touching anything else.
 *
 * GRAVEN_FAULTFS_CTL names the control file; it is mapped once (MAP_SHARED), so the harness
 * switches faults by writing one byte and the node pays no system call per check:
 *   '0' normal;  'f' fsync/fdatasync fail with EIO;  'w' writes to regular files and fsync fail.
 * Sockets and pipes (fd of another type) are never affected.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

static volatile const char *ctl;
static int ctl_tried;

static char mode(void) {
    if (!ctl_tried) {
        ctl_tried = 1;
        const char *path = getenv("GRAVEN_FAULTFS_CTL");
        if (path) {
            int fd = open(path, O_RDONLY | O_CLOEXEC);
            if (fd >= 0) {
                void *p = mmap(NULL, 1, PROT_READ, MAP_SHARED, fd, 0);
                close(fd);
                if (p != MAP_FAILED) ctl = p;
            }
        }
    }
    return ctl ? ctl[0] : '0';
}

static int regular(int fd) {
    struct stat st;
    return fd > 2 && fstat(fd, &st) == 0 && S_ISREG(st.st_mode);
}

#define REAL(name) static __typeof__(name) *real_##name; \
    if (!real_##name) real_##name = (__typeof__(name) *)dlsym(RTLD_NEXT, #name)

int fsync(int fd) {
    REAL(fsync);
    char m = mode();
    if ((m == 'f' || m == 'w') && regular(fd)) { errno = EIO; return -1; }
    return real_fsync(fd);
}

int fdatasync(int fd) {
    REAL(fdatasync);
    char m = mode();
    if ((m == 'f' || m == 'w') && regular(fd)) { errno = EIO; return -1; }
    return real_fdatasync(fd);
}

ssize_t write(int fd, const void *buf, size_t n) {
    REAL(write);
    if (mode() == 'w' && regular(fd)) { errno = EIO; return -1; }
    return real_write(fd, buf, n);
}

ssize_t pwrite(int fd, const void *buf, size_t n, off_t off) {
    REAL(pwrite);
    if (mode() == 'w' && regular(fd)) { errno = EIO; return -1; }
    return real_pwrite(fd, buf, n, off);
}

ssize_t pwrite64(int fd, const void *buf, size_t n, off64_t off) {
    REAL(pwrite64);
    if (mode() == 'w' && regular(fd)) { errno = EIO; return -1; }
    return real_pwrite64(fd, buf, n, off);
}

ssize_t writev(int fd, const struct iovec *iov, int cnt) {
    REAL(writev);
    if (mode() == 'w' && regular(fd)) { errno = EIO; return -1; }
    return real_writev(fd, iov, cnt);
}
