"""The batch I/O's constants, defined once for both twins (``_io.pyx`` and ``io_ref.py``).

The kernel's ABI values (the virtio-net header and its GSO types, ``include/uapi/linux/
virtio_net.h``), the batch limits the I/O objects keep to, and the errno sets by which a caller
tells what a failure means. ``tunnel/io/_io.pyx`` re-exports these and, at import, checks its
compile-time copies (C enums, which C code needs as constants) against them.
"""

from __future__ import annotations

import errno

# struct virtio_net_hdr (no num_buffers): flags, gso_type, hdr_len, gso_size, csum_start, csum_offset
VNET_HDR_LEN = 10
VNET_F_NEEDS_CSUM = 1  # VIRTIO_NET_HDR_F_NEEDS_CSUM: finish the checksum at csum_start + csum_offset
VNET_F_DATA_VALID = 2  # VIRTIO_NET_HDR_F_DATA_VALID
GSO_NONE = 0
GSO_TCPV4 = 1
GSO_UDP = 3
GSO_TCPV6 = 4
GSO_ECN = 0x80

MAX_GSO_SEGMENTS = 64  # datagrams per UDP_SEGMENT message (UDP_MAX_SEGMENTS)
MAX_GSO_BYTES = 65000  # payload bytes per UDP_SEGMENT message
GRO_SEGMENTS = 64  # segments per coalesced TUN write
GRO_BYTES = 65535  # the largest IP packet
GRO_MESSAGE = 65536  # scratch bytes per coalesced UDP message: the largest UDP payload fits
SUPER_PACKET = 65536  # scratch for one TUN super-packet

# sendmsg errors meaning the sticky source address is gone (send again from any address).
SOURCE_GONE = frozenset({errno.EINVAL, errno.EADDRNOTAVAIL, errno.ENETUNREACH})
# sendmsg errors meaning the kernel or NIC refused UDP_SEGMENT (send the datagrams one by one).
GSO_REFUSED = frozenset({errno.EIO, errno.EINVAL})
# read/write errors meaning the TUN device behind the fd is gone (EBADFD) or may be.
TUN_GONE = frozenset({errno.EBADFD, errno.EBADF, errno.EIO, errno.ENXIO, errno.ENODEV})
