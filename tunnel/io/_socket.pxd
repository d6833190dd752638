# The socket declarations the batch I/O modules share (tunnel/io/_io.pyx, tunnel/vxlan/_fast.pyx):
# struct msghdr / mmsghdr and the multi-message calls of <sys/socket.h>, which Cython's bundled
# posix declarations lack, and socket_family(). Field names only; the C compiler takes the
# layout from the header.

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
    enum:
        SOL_SOCKET
        SO_DOMAIN
        AF_INET6


cdef inline int socket_family(int fd) noexcept nogil:
    """The address family of socket ``fd`` (SO_DOMAIN), or -1 if it is not a socket."""
    cdef int family = 0
    cdef socklen_t size = sizeof(family)
    if getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &family, &size) != 0:
        return -1
    return family
