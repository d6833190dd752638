# cython: language_level=3, wraparound=False, cdivision=True, initializedcheck=False
"""WireGuard transport data path in Cython over OpenSSL libcrypto (the fast path).

Same API and behaviour as the pure-Python reference in ``crypto/transport.py`` and
``crypto/replay.py``; ``crypto/backend.py`` picks one of the two. The per-packet work of a whole
batch runs in one ``with nogil:`` section: buffer pointers are gathered (and pinned with the buffer
protocol, so no other thread can resize a bytearray underneath us) while the GIL is held, then
ChaCha20-Poly1305 runs in place through one reused ``EVP_CIPHER_CTX`` per direction (or, for
messages of at most 128 bytes, the compact scalar code of ``_chacha_small.h``, which is much
faster on a cold wake-up) and the replay window (a C bitmap) is updated, then the results are
written back to the Python lists.

Threading contract: one event loop owns a ``TransportCipher``. Calling it from a second thread
while a batch is in flight raises ``RuntimeError`` instead of corrupting the cipher state.
"""

from cpython.buffer cimport PyBUF_WRITABLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.stdint cimport uint32_t, uint64_t
from libc.string cimport memcpy, memset

from operator import index


cdef extern from "openssl/evp.h" nogil:
    ctypedef struct EVP_CIPHER_CTX:
        pass
    ctypedef struct EVP_CIPHER:
        pass
    ctypedef struct ENGINE:
        pass
    const EVP_CIPHER *EVP_chacha20_poly1305()
    EVP_CIPHER_CTX *EVP_CIPHER_CTX_new()
    void EVP_CIPHER_CTX_free(EVP_CIPHER_CTX *ctx)
    int EVP_CipherInit_ex(EVP_CIPHER_CTX *ctx, const EVP_CIPHER *cipher, ENGINE *impl,
                          const unsigned char *key, const unsigned char *iv, int enc)
    int EVP_CipherUpdate(EVP_CIPHER_CTX *ctx, unsigned char *out, int *outl,
                         const unsigned char *inp, int inl)
    int EVP_CipherFinal_ex(EVP_CIPHER_CTX *ctx, unsigned char *out, int *outl)
    int EVP_CIPHER_CTX_ctrl(EVP_CIPHER_CTX *ctx, int type, int arg, void *ptr)
    enum:
        EVP_CTRL_AEAD_SET_TAG
        EVP_CTRL_AEAD_GET_TAG


cdef extern from "openssl/crypto.h" nogil:
    void OPENSSL_cleanse(void *ptr, size_t length)


# Small messages (at most WGPY_SMALL_MAX bytes: pings, ACKs, keepalives) are sealed and opened
# by compact scalar C instead of EVP: as fast when hot, far faster on a cold wake-up. See the
# header for why and how.
cdef extern from "_chacha_small.h" nogil:
    enum:
        WGPY_SMALL_MAX
    void wgpy_small_seal(const unsigned char *key, uint64_t counter, unsigned char *buf, size_t length,
                         unsigned char *tag)
    int wgpy_small_open(const unsigned char *key, uint64_t counter, unsigned char *buf, size_t length,
                        const unsigned char *tag)
    void wgpy_small_seal_ad(const unsigned char *key, const unsigned char *nonce, const unsigned char *ad,
                            size_t adlen, unsigned char *buf, size_t length, unsigned char *tag)
    int wgpy_small_open_ad(const unsigned char *key, const unsigned char *nonce, const unsigned char *ad,
                           size_t adlen, unsigned char *buf, size_t length, const unsigned char *tag)


# Whole batches (of at least _batch_min messages) are sealed and opened by the multi-buffer
# ChaCha20-Poly1305 of _chacha_batch.h (SIMD lanes across packets) when the CPU has AVX-512 IFMA;
# otherwise by the per-packet code below. WGPY_AEAD (read once at import) forces a path.
cdef extern from "_chacha_batch.h" nogil:
    enum:
        WGPY_BATCH_EVP
        WGPY_BATCH_AVX512
        WGPY_BATCH_AVX2
    ctypedef struct wgpy_batch_msg:
        unsigned char *data
        size_t len
        uint64_t counter
        unsigned char *tag
        const unsigned char *ad
        size_t adlen
        uint32_t nonce0
    int wgpy_batch_supported(int impl)
    void wgpy_batch_seal(int impl, const unsigned char *key, const wgpy_batch_msg *m, size_t n)
    void wgpy_batch_verify(int impl, const unsigned char *key, const wgpy_batch_msg *m, size_t n, int *ok)
    void wgpy_batch_xor(int impl, const unsigned char *key, const wgpy_batch_msg *m, size_t n,
                        const int *select)


cdef extern from *:
    """
    #include <openssl/evp.h>
    #define WGPY_REJECT_AFTER_MESSAGES 0xFFFFFFFFFFFFDFFFULL

    /* Set a new nonce on a context whose cipher and key are already set. OpenSSL 3's
       EVP_CipherInit_ex2 skips the legacy lookups EVP_CipherInit_ex still does per call. */
    static int wgpy_set_nonce(EVP_CIPHER_CTX *ctx, const unsigned char *nonce, int enc) {
    #if OPENSSL_VERSION_NUMBER >= 0x30000000L
        return EVP_CipherInit_ex2(ctx, NULL, NULL, nonce, enc, NULL);
    #else
        return EVP_CipherInit_ex(ctx, NULL, NULL, NULL, nonce, enc);
    #endif
    }
    """
    uint64_t WGPY_REJECT_AFTER_MESSAGES
    int wgpy_set_nonce(EVP_CIPHER_CTX *ctx, const unsigned char *nonce, int enc) nogil


# --- Which batch AEAD runs (testing and measuring hooks; the twin has the same two) ---

_BATCH_NAMES = {"evp": WGPY_BATCH_EVP, "avx512": WGPY_BATCH_AVX512, "avx2": WGPY_BATCH_AVX2}
cdef int _batch = WGPY_BATCH_EVP
cdef Py_ssize_t _batch_min = 3      # smaller batches stay on the per-packet path (faster there)


def _set_batch_impl(name) -> str:
    """Use the batch AEAD ``name`` from now on ("auto", "evp", "avx512", "avx2"); returns the
    name in use before. ValueError for an unknown name or one this CPU cannot run."""
    global _batch
    previous = _batch_impl()
    if name == "auto":
        _batch = WGPY_BATCH_AVX512 if wgpy_batch_supported(WGPY_BATCH_AVX512) else WGPY_BATCH_EVP
        return previous
    if name not in _BATCH_NAMES:
        raise ValueError(f"unknown batch AEAD {name!r}: expected auto, evp, avx512 or avx2")
    code = _BATCH_NAMES[name]
    if code != WGPY_BATCH_EVP and not wgpy_batch_supported(code):
        raise ValueError(f"batch AEAD {name!r} needs AVX-512 F/BW/VL/IFMA, which this CPU lacks")
    _batch = code
    return previous


def _batch_impl() -> str:
    """The batch AEAD in use: "evp" (per packet, OpenSSL and the small scalar code), "avx512"
    or "avx2" (the multi-buffer code of _chacha_batch.h, by its ChaCha20 width)."""
    for name, code in _BATCH_NAMES.items():
        if code == _batch:
            return name
    raise AssertionError(_batch)


def _init_batch() -> None:
    import os
    name = os.environ.get("WGPY_AEAD", "auto") or "auto"
    try:
        _set_batch_impl(name)
    except ValueError as error:
        raise RuntimeError(f"WGPY_AEAD={name}: {error}") from None


_init_batch()


# --- Public constants (identical values in crypto/transport.py) ---
HEADROOM = 16
TAG_SIZE = 16
KEY_SIZE = 32
REJECT_AFTER_MESSAGES = (1 << 64) - (1 << 13) - 1
WINDOW_SIZE = 8128

OK = 0
TOO_SHORT = 1
AUTH = 2
REPLAY = 3
COUNTER_LIMIT = 4
EXPIRED = 5
REASONS = ("ok", "too_short", "auth", "replay", "counter_limit", "expired")

# Implementation constants of the C side (kept as an enum so they fold at compile time).
cdef enum:
    C_HEADROOM = 16
    C_TAG = 16
    C_KEY = 32
    C_MESSAGE_TRANSPORT = 4
    RING_BLOCKS = 128           # blocks of 64 bits: 8192 bits, one block kept as slack
    RING_MASK = 127
    BLOCK_SHIFT = 6
    BLOCK_MASK = 63
    C_WINDOW = 8128             # (RING_BLOCKS - 1) * 64
    MAX_PAYLOAD = 1 << 30       # EVP takes int lengths; anything near this is a caller bug
    R_OK = 0
    R_TOO_SHORT = 1
    R_AUTH = 2
    R_REPLAY = 3
    R_COUNTER_LIMIT = 4
    R_EXPIRED = 5


# --- Replay window -------------------------------------------------------------------------

cdef struct replay_window:
    uint64_t last                   # highest counter accepted so far (0 before any)
    uint64_t blocks[RING_BLOCKS]    # ring of bitmaps; block b covers counters 64b .. 64b+63


cdef inline void window_reset(replay_window *w) noexcept nogil:
    memset(w, 0, sizeof(replay_window))


cdef inline bint window_validate(replay_window *w, uint64_t counter) noexcept nogil:
    """Accept-and-record ``counter``; 0 if seen, older than the window, or past the limit."""
    cdef uint64_t block = counter >> BLOCK_SHIFT
    cdef uint64_t current, ahead, step
    cdef uint64_t bit
    if counter >= WGPY_REJECT_AFTER_MESSAGES:
        return 0
    if counter > w.last:
        # Moving forward: every block that enters the window is stale from a lap ago; clear it.
        current = w.last >> BLOCK_SHIFT
        ahead = block - current
        if ahead > RING_BLOCKS:
            ahead = RING_BLOCKS
        step = 1
        while step <= ahead:
            w.blocks[(current + step) & RING_MASK] = 0
            step += 1
        w.last = counter
    elif w.last - counter > C_WINDOW:
        return 0
    bit = (<uint64_t>1) << (counter & BLOCK_MASK)
    if w.blocks[block & RING_MASK] & bit:
        return 0
    w.blocks[block & RING_MASK] |= bit
    return 1


cdef inline uint64_t load_le64(const unsigned char *p) noexcept nogil:
    cdef uint64_t v = 0
    cdef int k
    for k in range(7, -1, -1):
        v = (v << 8) | p[k]
    return v


cdef inline void store_le32(unsigned char *p, uint32_t v) noexcept nogil:
    cdef int k
    for k in range(4):
        p[k] = <unsigned char>(v & 0xFF)
        v >>= 8


cdef inline void store_le64(unsigned char *p, uint64_t v) noexcept nogil:
    cdef int k
    for k in range(8):
        p[k] = <unsigned char>(v & 0xFF)
        v >>= 8


cdef tuple _aead_args(object key, object nonce, object data, object ad):
    cdef bytes k = bytes(memoryview(key)), n = bytes(memoryview(nonce))
    cdef bytes d = bytes(memoryview(data)), a = bytes(memoryview(ad))
    if len(k) != C_KEY:
        raise ValueError("key must be 32 bytes")
    if len(n) != 12:
        raise ValueError("nonce must be 12 bytes")
    return k, n, d, a


def aead_seal(key, nonce, plaintext, ad=b"") -> bytes:
    """RFC 8439 ChaCha20-Poly1305 by the hand-written code of ``_chacha_small.h`` (any length,
    any nonce, additional data): ciphertext || tag. See crypto/transport.py for the contract."""
    cdef bytes k, n, a
    cdef bytearray out
    cdef unsigned char *p
    cdef Py_ssize_t size
    k, n, d, a = _aead_args(key, nonce, plaintext, ad)
    size = len(d)
    out = bytearray(size + C_TAG)
    out[:size] = d
    p = out
    wgpy_small_seal_ad(k, n, a, <size_t>len(a), p, <size_t>size, p + size)
    return bytes(out)


def aead_open(key, nonce, sealed, ad=b""):
    """The plaintext of ``sealed``, or None if not authentic; see crypto/transport.py."""
    cdef bytes k, n, a
    cdef bytearray out
    cdef unsigned char *p
    cdef Py_ssize_t size
    k, n, d, a = _aead_args(key, nonce, sealed, ad)
    if len(d) < C_TAG:
        return None
    size = len(d) - C_TAG
    out = bytearray(d)
    p = out
    if not wgpy_small_open_ad(k, n, a, <size_t>len(a), p, <size_t>size, p + size):
        return None
    return bytes(out[:size])


def _aead_batch(key, items, bint seal) -> list:
    """Testing hook: RFC 8439 AEAD of several messages under one key in one call of the batch
    code in use (_batch_impl(); with "evp", message by message through aead_seal/aead_open).
    ``items``: (nonce, ad, data) tuples; seal -> ciphertext || tag per item, open -> the
    plaintext or None per item. Same results as crypto/transport.py's twin."""
    cdef bytes k = bytes(memoryview(key))
    cdef Py_ssize_t n = len(items), i, size
    cdef wgpy_batch_msg *msgs
    cdef int *ok
    cdef unsigned char *p
    cdef const unsigned char *q
    if len(k) != C_KEY:
        raise ValueError("key must be 32 bytes")
    if _batch == WGPY_BATCH_EVP:
        if seal:
            return [aead_seal(k, nonce, data, ad) for nonce, ad, data in items]
        return [aead_open(k, nonce, data, ad) for nonce, ad, data in items]
    nonces, ads, outs = [], [], []
    for nonce, ad, data in items:
        nonce = bytes(memoryview(nonce))
        if len(nonce) != 12:
            raise ValueError("nonce must be 12 bytes")
        data = bytes(memoryview(data))
        if not seal and len(data) < C_TAG:
            outs.append(None)
        else:
            outs.append(bytearray(data + bytes(C_TAG) if seal else data))
        nonces.append(nonce)
        ads.append(bytes(memoryview(ad)))
    msgs = <wgpy_batch_msg *>PyMem_Malloc((n + 1) * sizeof(wgpy_batch_msg))
    ok = <int *>PyMem_Malloc((n + 1) * sizeof(int))
    index_of = []
    try:
        if msgs == NULL or ok == NULL:
            raise MemoryError()
        for i in range(n):
            if outs[i] is None:
                continue
            j = len(index_of)
            index_of.append(i)
            p = <unsigned char *>(<bytearray>outs[i])
            size = len(outs[i]) - C_TAG
            q = <const unsigned char *>(<bytes>nonces[i])
            msgs[j].data = p
            msgs[j].len = <size_t>size
            msgs[j].tag = p + size
            msgs[j].nonce0 = (<uint32_t>q[0]) | (<uint32_t>q[1] << 8) | (<uint32_t>q[2] << 16) | (<uint32_t>q[3] << 24)
            msgs[j].counter = load_le64(q + 4)
            msgs[j].ad = <const unsigned char *>(<bytes>ads[i])
            msgs[j].adlen = <size_t>len(ads[i])
        if seal:
            wgpy_batch_seal(_batch, k, msgs, <size_t>len(index_of))
            return [bytes(out) for out in outs]
        wgpy_batch_verify(_batch, k, msgs, <size_t>len(index_of), ok)
        wgpy_batch_xor(_batch, k, msgs, <size_t>len(index_of), ok)
        result = [None] * n
        for j, i in enumerate(index_of):
            if ok[j]:
                result[i] = bytes(outs[i][:len(outs[i]) - C_TAG])
        return result
    finally:
        PyMem_Free(msgs)
        PyMem_Free(ok)


def padded_length(size, mtu) -> int:
    """Plaintext length after padding: a multiple of 16, never past max(mtu, size)."""
    size = index(size)  # integers only (TypeError for 1.5), as in crypto/transport.py
    mtu = index(mtu)
    if size > mtu:
        return size
    return min((size + 15) & ~15, mtu)


cdef object _check_counter(object counter):
    counter = index(counter)  # <uint64_t> would truncate a float
    if counter < 0:
        raise ValueError("counter must be non-negative")
    return counter


cdef class ReplayFilter:
    """Sliding replay window of WINDOW_SIZE (8128) packets, as in wireguard-go and the kernel.

    ``validate`` must be called only after the packet's AEAD tag verified: a forged packet must
    never move the window.
    """

    cdef replay_window _window

    def __cinit__(self) -> None:
        window_reset(&self._window)

    def reset(self) -> None:
        """Forget every counter seen (a fresh keypair starts with a fresh window)."""
        window_reset(&self._window)

    def validate(self, counter) -> bool:
        """Accept-and-record ``counter``; False if seen, too old, or >= REJECT_AFTER_MESSAGES."""
        counter = _check_counter(counter)
        if counter >= REJECT_AFTER_MESSAGES:
            return False
        return bool(window_validate(&self._window, <uint64_t>counter))


cdef inline void release_views(Py_buffer *views, Py_ssize_t count) noexcept:
    cdef Py_ssize_t i
    for i in range(count):
        PyBuffer_Release(&views[i])


cdef class TransportCipher:
    """Transport keys of one keypair (both directions) and its counters.

    Single-threaded: one event loop owns it. The caller owns every buffer; nothing is kept after
    a call returns. See crypto/transport.py for the full contract (same behaviour).
    """

    cdef EVP_CIPHER_CTX *_seal_ctx
    cdef EVP_CIPHER_CTX *_open_ctx
    cdef unsigned char _send_key[C_KEY]
    cdef unsigned char _receive_key[C_KEY]
    cdef uint32_t _remote_index
    cdef uint64_t _send_counter
    cdef replay_window _window
    cdef bint _zeroed
    cdef bint _busy
    # Per-batch scratch, grown on demand and reused: pinned views and per-packet sizes.
    cdef Py_buffer *_views
    cdef Py_ssize_t *_sizes
    cdef Py_ssize_t *_padded
    cdef int *_codes
    cdef wgpy_batch_msg *_msgs
    cdef Py_ssize_t *_index
    cdef int *_ok
    cdef Py_ssize_t _capacity

    def __cinit__(self, send_key, receive_key, remote_index, *, send_counter=0) -> None:
        # bytes-like keys only: bytes(32) would be 32 zero bytes, a valid-looking key
        cdef bytes send = bytes(memoryview(send_key))
        cdef bytes receive = bytes(memoryview(receive_key))
        remote_index = index(remote_index)
        send_counter = index(send_counter)
        self._views = NULL
        self._sizes = NULL
        self._padded = NULL
        self._codes = NULL
        self._msgs = NULL
        self._index = NULL
        self._ok = NULL
        self._capacity = 0
        self._seal_ctx = NULL
        self._open_ctx = NULL
        self._zeroed = True
        self._busy = False
        if len(send) != C_KEY or len(receive) != C_KEY:
            raise ValueError("transport keys must be 32 bytes")
        if not 0 <= remote_index <= 0xFFFFFFFF:
            raise ValueError("remote_index must fit in 32 bits")
        if not 0 <= send_counter <= REJECT_AFTER_MESSAGES:
            raise ValueError("send_counter out of range")
        memcpy(self._send_key, <const char *>send, C_KEY)
        memcpy(self._receive_key, <const char *>receive, C_KEY)
        self._remote_index = <uint32_t>remote_index
        self._send_counter = <uint64_t>send_counter
        window_reset(&self._window)
        self._seal_ctx = EVP_CIPHER_CTX_new()
        self._open_ctx = EVP_CIPHER_CTX_new()
        if self._seal_ctx == NULL or self._open_ctx == NULL:
            raise MemoryError()
        if EVP_CipherInit_ex(self._seal_ctx, EVP_chacha20_poly1305(), NULL,
                             self._send_key, NULL, 1) != 1:
            raise RuntimeError("OpenSSL: cannot set up ChaCha20-Poly1305 (seal)")
        if EVP_CipherInit_ex(self._open_ctx, EVP_chacha20_poly1305(), NULL,
                             self._receive_key, NULL, 0) != 1:
            raise RuntimeError("OpenSSL: cannot set up ChaCha20-Poly1305 (open)")
        self._zeroed = False

    def __dealloc__(self) -> None:
        self._erase()
        PyMem_Free(self._views)
        PyMem_Free(self._sizes)
        PyMem_Free(self._padded)
        PyMem_Free(self._codes)
        PyMem_Free(self._msgs)
        PyMem_Free(self._index)
        PyMem_Free(self._ok)

    cdef void _erase(self) noexcept:
        OPENSSL_cleanse(self._send_key, C_KEY)
        OPENSSL_cleanse(self._receive_key, C_KEY)
        EVP_CIPHER_CTX_free(self._seal_ctx)   # frees and cleanses the expanded key state
        EVP_CIPHER_CTX_free(self._open_ctx)
        self._seal_ctx = NULL
        self._open_ctx = NULL
        self._zeroed = True

    cdef int _reserve(self, Py_ssize_t count) except -1:
        if count <= self._capacity:
            return 0
        PyMem_Free(self._views)
        PyMem_Free(self._sizes)
        PyMem_Free(self._padded)
        PyMem_Free(self._codes)
        PyMem_Free(self._msgs)
        PyMem_Free(self._index)
        PyMem_Free(self._ok)
        self._capacity = 0
        self._views = <Py_buffer *>PyMem_Malloc(count * sizeof(Py_buffer))
        self._sizes = <Py_ssize_t *>PyMem_Malloc(count * sizeof(Py_ssize_t))
        self._padded = <Py_ssize_t *>PyMem_Malloc(count * sizeof(Py_ssize_t))
        self._codes = <int *>PyMem_Malloc(count * sizeof(int))
        self._msgs = <wgpy_batch_msg *>PyMem_Malloc(count * sizeof(wgpy_batch_msg))
        self._index = <Py_ssize_t *>PyMem_Malloc(count * sizeof(Py_ssize_t))
        self._ok = <int *>PyMem_Malloc(count * sizeof(int))
        if (self._views == NULL or self._sizes == NULL or self._padded == NULL
                or self._codes == NULL or self._msgs == NULL or self._index == NULL
                or self._ok == NULL):
            raise MemoryError()
        self._capacity = count
        return 0

    cdef int _enter(self) except -1:
        if self._busy:
            raise RuntimeError("TransportCipher used from two threads at once")
        self._busy = True
        return 0

    @property
    def send_counter(self) -> int:
        """The counter the next sealed packet will carry."""
        return self._send_counter

    @property
    def remote_index(self) -> int:
        """The peer's receiver index written into every sealed header."""
        return self._remote_index

    @property
    def zeroed(self) -> bool:
        """True once zero() ran: the keys are gone and the cipher is inert."""
        return bool(self._zeroed)

    def counter_of(self, buf) -> int:
        """The 64-bit counter in the header of the transport message in ``buf``."""
        cdef const unsigned char[::1] view = buf
        if view.shape[0] < C_HEADROOM:
            raise ValueError("buffer shorter than a transport header")
        return load_le64(&view[8])

    def zero(self) -> None:
        """Erase the key material; afterwards seal_batch seals nothing, open_batch says EXPIRED."""
        if self._busy:
            raise RuntimeError("TransportCipher used from two threads at once")
        self._erase()
        window_reset(&self._window)

    def seal_batch(self, list bufs not None, list lengths not None, Py_ssize_t mtu) -> int:
        """Seal a prefix of the batch in place; see crypto/transport.py for the contract."""
        cdef Py_ssize_t n = len(bufs)
        cdef Py_ssize_t count, i, size, padded, done
        cdef Py_ssize_t pinned
        cdef uint64_t remaining
        if len(lengths) < n:
            raise ValueError("lengths is shorter than bufs")
        if mtu < 0:
            raise ValueError("mtu must be non-negative")
        if self._zeroed or n == 0:
            return 0
        remaining = WGPY_REJECT_AFTER_MESSAGES - self._send_counter
        count = n if <uint64_t>n <= remaining else <Py_ssize_t>remaining
        if count == 0:
            return 0
        pinned = 0
        self._enter()
        try:
            self._reserve(count)
            # With the GIL: pin every buffer and check every size before touching anything.
            for i in range(count):
                size = lengths[i]
                PyObject_GetBuffer(bufs[i], &self._views[i], PyBUF_WRITABLE)
                pinned = i + 1
                if size < 0 or size > MAX_PAYLOAD or C_HEADROOM + size > self._views[i].len:
                    raise ValueError(f"packet {i}: length {size} does not fit its buffer")
                if size > mtu:
                    padded = size
                else:
                    padded = (size + 15) & ~(<Py_ssize_t>15)
                    if padded > mtu:
                        padded = mtu
                if C_HEADROOM + padded + C_TAG > self._views[i].len:
                    raise ValueError(
                        f"packet {i}: buffer of {self._views[i].len} bytes cannot hold "
                        f"{C_HEADROOM + padded + C_TAG} sealed bytes")
                self._sizes[i] = size
                self._padded[i] = padded
            with nogil:
                done = self._seal_all(count)
            # Never reuse a nonce: every counter handed to OpenSSL is consumed, even on failure.
            self._send_counter += <uint64_t>(done if done == count else done + 1)
            for i in range(done):
                lengths[i] = C_HEADROOM + self._padded[i] + C_TAG
            if done != count:
                raise RuntimeError(f"OpenSSL: sealing packet {done} failed")
            return count
        finally:
            release_views(self._views, pinned)
            self._busy = False

    cdef Py_ssize_t _seal_all(self, Py_ssize_t count) noexcept nogil:
        cdef Py_ssize_t i, size, padded
        cdef unsigned char *p
        cdef unsigned char nonce[12]
        cdef int outl
        if _batch != WGPY_BATCH_EVP and count >= _batch_min:
            return self._seal_batched(count)
        memset(nonce, 0, 12)
        for i in range(count):
            p = <unsigned char *>self._views[i].buf
            size = self._sizes[i]
            padded = self._padded[i]
            if padded > size:
                memset(p + C_HEADROOM + size, 0, padded - size)
            store_le32(p, C_MESSAGE_TRANSPORT)
            store_le32(p + 4, self._remote_index)
            store_le64(p + 8, self._send_counter + <uint64_t>i)
            if padded <= WGPY_SMALL_MAX:
                wgpy_small_seal(self._send_key, self._send_counter + <uint64_t>i, p + C_HEADROOM,
                                <size_t>padded, p + C_HEADROOM + padded)
                continue
            memcpy(nonce + 4, p + 8, 8)
            if wgpy_set_nonce(self._seal_ctx, nonce, 1) != 1:
                return i
            if padded > 0 and EVP_CipherUpdate(self._seal_ctx, p + C_HEADROOM, &outl,
                                               p + C_HEADROOM, <int>padded) != 1:
                return i
            if EVP_CipherFinal_ex(self._seal_ctx, p + C_HEADROOM + padded, &outl) != 1:
                return i
            if EVP_CIPHER_CTX_ctrl(self._seal_ctx, EVP_CTRL_AEAD_GET_TAG, C_TAG,
                                   p + C_HEADROOM + padded) != 1:
                return i
        return count

    cdef Py_ssize_t _seal_batched(self, Py_ssize_t count) noexcept nogil:
        """Headers and padding per packet, then the AEAD of the whole batch in SIMD lanes."""
        cdef Py_ssize_t i, size, padded
        cdef unsigned char *p
        for i in range(count):
            p = <unsigned char *>self._views[i].buf
            size = self._sizes[i]
            padded = self._padded[i]
            if padded > size:
                memset(p + C_HEADROOM + size, 0, padded - size)
            store_le32(p, C_MESSAGE_TRANSPORT)
            store_le32(p + 4, self._remote_index)
            store_le64(p + 8, self._send_counter + <uint64_t>i)
            self._msgs[i].data = p + C_HEADROOM
            self._msgs[i].len = <size_t>padded
            self._msgs[i].counter = self._send_counter + <uint64_t>i
            self._msgs[i].tag = p + C_HEADROOM + padded
            self._msgs[i].ad = NULL
            self._msgs[i].adlen = 0
            self._msgs[i].nonce0 = 0
        wgpy_batch_seal(_batch, self._send_key, self._msgs, <size_t>count)
        return count

    def open_batch(self, list bufs not None, list lengths not None,
                   list results not None) -> int:
        """Open the batch in place; see crypto/transport.py for the contract."""
        cdef Py_ssize_t n = len(bufs)
        cdef Py_ssize_t i, size, accepted
        cdef Py_ssize_t pinned
        if len(lengths) < n or len(results) < n:
            raise ValueError("lengths or results is shorter than bufs")
        if self._zeroed:
            for i in range(n):
                results[i] = R_EXPIRED
            return 0
        if n == 0:
            return 0
        pinned = 0
        self._enter()
        try:
            self._reserve(n)
            for i in range(n):
                size = lengths[i]
                PyObject_GetBuffer(bufs[i], &self._views[i], PyBUF_WRITABLE)
                pinned = i + 1
                if size < 0 or size > MAX_PAYLOAD or size > self._views[i].len:
                    raise ValueError(f"packet {i}: length {size} does not fit its buffer")
                self._sizes[i] = size
            with nogil:
                accepted = self._open_all(n)
            for i in range(n):
                results[i] = self._codes[i]
                if self._codes[i] == R_OK:
                    lengths[i] = self._sizes[i]
            return accepted
        finally:
            release_views(self._views, pinned)
            self._busy = False

    cdef Py_ssize_t _open_all(self, Py_ssize_t count) noexcept nogil:
        cdef Py_ssize_t i, size, body
        cdef Py_ssize_t accepted = 0
        cdef unsigned char *p
        cdef unsigned char nonce[12]
        cdef unsigned char sink[16]
        cdef uint64_t counter
        cdef int outl
        cdef bint authentic
        if _batch != WGPY_BATCH_EVP and count >= _batch_min:
            return self._open_batched(count)
        memset(nonce, 0, 12)
        for i in range(count):
            p = <unsigned char *>self._views[i].buf
            size = self._sizes[i]
            if size < C_HEADROOM + C_TAG:
                self._codes[i] = R_TOO_SHORT
                continue
            counter = load_le64(p + 8)
            if counter >= WGPY_REJECT_AFTER_MESSAGES:
                self._codes[i] = R_COUNTER_LIMIT
                continue
            body = size - C_HEADROOM - C_TAG
            if body <= WGPY_SMALL_MAX:
                authentic = wgpy_small_open(self._receive_key, counter, p + C_HEADROOM, <size_t>body,
                                            p + C_HEADROOM + body)
            else:
                memcpy(nonce + 4, p + 8, 8)
                authentic = (wgpy_set_nonce(self._open_ctx, nonce, 0) == 1
                             and (body == 0 or EVP_CipherUpdate(self._open_ctx, p + C_HEADROOM, &outl,
                                                                p + C_HEADROOM, <int>body) == 1)
                             and EVP_CIPHER_CTX_ctrl(self._open_ctx, EVP_CTRL_AEAD_SET_TAG, C_TAG,
                                                     p + C_HEADROOM + body) == 1
                             and EVP_CipherFinal_ex(self._open_ctx, sink, &outl) == 1)
            if not authentic:
                self._codes[i] = R_AUTH
                continue
            # Only an authenticated counter may move the window.
            if not window_validate(&self._window, counter):
                self._codes[i] = R_REPLAY
                continue
            self._codes[i] = R_OK
            self._sizes[i] = body
            accepted += 1
        return accepted

    cdef Py_ssize_t _open_batched(self, Py_ssize_t count) noexcept nogil:
        """The checks of _open_all in the same order with the same codes, the tags of the whole
        batch verified in SIMD lanes first; only packets that pass every check are decrypted."""
        cdef Py_ssize_t i, j, size, body
        cdef Py_ssize_t candidates = 0
        cdef Py_ssize_t accepted = 0
        cdef unsigned char *p
        cdef uint64_t counter
        for i in range(count):
            p = <unsigned char *>self._views[i].buf
            size = self._sizes[i]
            if size < C_HEADROOM + C_TAG:
                self._codes[i] = R_TOO_SHORT
                continue
            counter = load_le64(p + 8)
            if counter >= WGPY_REJECT_AFTER_MESSAGES:
                self._codes[i] = R_COUNTER_LIMIT
                continue
            body = size - C_HEADROOM - C_TAG
            self._msgs[candidates].data = p + C_HEADROOM
            self._msgs[candidates].len = <size_t>body
            self._msgs[candidates].counter = counter
            self._msgs[candidates].tag = p + C_HEADROOM + body
            self._msgs[candidates].ad = NULL
            self._msgs[candidates].adlen = 0
            self._msgs[candidates].nonce0 = 0
            self._index[candidates] = i
            candidates += 1
        wgpy_batch_verify(_batch, self._receive_key, self._msgs, <size_t>candidates, self._ok)
        # In packet order: only an authenticated counter may move the window.
        for j in range(candidates):
            i = self._index[j]
            if not self._ok[j]:
                self._codes[i] = R_AUTH
            elif not window_validate(&self._window, self._msgs[j].counter):
                self._codes[i] = R_REPLAY
                self._ok[j] = 0
            else:
                self._codes[i] = R_OK
                self._sizes[i] = <Py_ssize_t>self._msgs[j].len
                accepted += 1
        wgpy_batch_xor(_batch, self._receive_key, self._msgs, <size_t>candidates, self._ok)
        return accepted
