# The socket declarations the batch I/O modules share (tunnel/_io.pyx, tunnel/vxlan/_fast.pyx):
# struct msghdr / mmsghdr and the multi-message calls of <sys/socket.h>, which Cython's bundled
# posix declarations lack. Field names only; the C compiler takes the layout from the header.

from posix.uio cimport iovec

cdef extern from "<sys/socket.h>" nogil:
    ctypedef unsigned int socklen_t
    struct msghdr:
        void *msg_name
        socklen_t msg_namelen
        iovec *msg_iov
        size_t msg_iovlen
        void *msg_control
        size_t msg_controllen
        int msg_flags
    struct mmsghdr:
        msghdr msg_hdr
        unsigned int msg_len
    int recvmmsg(int fd, mmsghdr *msgs, unsigned int vlen, int flags, void *timeout)
    int sendmmsg(int fd, mmsghdr *msgs, unsigned int vlen, int flags)
    ssize_t sendmsg(int fd, const msghdr *msg, int flags)
    int setsockopt(int fd, int level, int name, const void *value, socklen_t len)
    int getsockopt(int fd, int level, int name, void *value, socklen_t *len)
