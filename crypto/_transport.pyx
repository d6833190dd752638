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

Threading contract (the WireGuard daemon's ``workers N``, docs/multicore.md section 4): several
threads may seal and open with one ``TransportCipher`` at once. The send counter is reserved a
batch at a time by an atomic compare-and-swap (``wgpy_reserve_counters``), so no counter (nonce)
is ever handed out twice; the replay window is updated under a per-keypair spinlock taken once
per batch, after the batch's tags verified. The per-batch scratch (pinned views, sizes, the EVP
contexts) is the cipher's own for the first thread in; a thread that finds it in use takes its
own thread's scratch (:class:`_Scratch`, keyed for the call and wiped after it). ``zero()``
while batches are in flight takes effect at once for new calls and erases the keys when the
last batch in flight returns.
"""

from cpython.buffer cimport PyBUF_WRITABLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.stdint cimport uint32_t, uint64_t
from libc.string cimport memcpy, memset

import threading
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


from wgpy_ints cimport wgpy_set_length  # include/wgpy_ints.pxd: batch lengths as kept ints


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


cdef extern from *:
    """
    #include <sched.h>
    /* Reserve up to n consecutive send counters below limit: *first is the first one, the
       return value how many were reserved (0 once the counter reached the limit). A
       compare-and-swap rather than a plain fetch-add, so the counter never passes the limit
       (a fetch-add past it would eventually wrap to 0 and hand out used nonces again). Two
       threads never get overlapping blocks: this is what makes sharing a keypair safe. */
    static inline uint64_t wgpy_reserve_counters(uint64_t *counter, uint64_t n, uint64_t limit,
                                                 uint64_t *first) {
        uint64_t current = __atomic_load_n(counter, __ATOMIC_RELAXED);
        for (;;) {
            uint64_t take;
            if (current >= limit) {
                *first = current;
                return 0;
            }
            take = limit - current < n ? limit - current : n;
            if (__atomic_compare_exchange_n(counter, &current, current + take, 0,
                                            __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
                *first = current;
                return take;
            }
        }
    }
    static inline uint64_t wgpy_load_counter(const uint64_t *counter) {
        return __atomic_load_n(counter, __ATOMIC_RELAXED);
    }
    /* The replay window's lock: held for a few bit operations per datagram of one batch. */
    static inline void wgpy_spin_lock(int *lock) {
        unsigned spins = 0;
        while (__atomic_exchange_n(lock, 1, __ATOMIC_ACQUIRE)) {
            while (__atomic_load_n(lock, __ATOMIC_RELAXED)) {
                if (++spins > 64) { sched_yield(); spins = 0; }
            }
        }
    }
    static inline void wgpy_spin_unlock(int *lock) {
        __atomic_store_n(lock, 0, __ATOMIC_RELEASE);
    }
    """
    uint64_t wgpy_reserve_counters(uint64_t *counter, uint64_t n, uint64_t limit, uint64_t *first) nogil
    uint64_t wgpy_load_counter(const uint64_t *counter) nogil
    void wgpy_spin_lock(int *lock) nogil
    void wgpy_spin_unlock(int *lock) nogil


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
    R_PENDING = 6               # authentic, its counter not yet checked against the window


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


cdef inline void write_header(unsigned char *p, Py_ssize_t size, Py_ssize_t padded, uint32_t remote_index,
                              uint64_t counter) noexcept nogil:
    """Before sealing (both seal paths): zero the padding after the ``size`` plaintext bytes up
    to ``padded``, and write the transport header (type 4, the receiver's index, the counter)."""
    if padded > size:
        memset(p + C_HEADROOM + size, 0, padded - size)
    store_le32(p, C_MESSAGE_TRANSPORT)
    store_le32(p + 4, remote_index)
    store_le64(p + 8, counter)


cdef inline int header_check(const unsigned char *p, Py_ssize_t size, uint64_t *counter) noexcept nogil:
    """The checks on a transport datagram before its tag (both open paths, in this order):
    R_TOO_SHORT, R_COUNTER_LIMIT, else R_PENDING with ``*counter`` read from its header."""
    if size < C_HEADROOM + C_TAG:
        return R_TOO_SHORT
    counter[0] = load_le64(p + 8)
    if counter[0] >= WGPY_REJECT_AFTER_MESSAGES:
        return R_COUNTER_LIMIT
    return R_PENDING


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


# --- Per-batch scratch ------------------------------------------------------------------------

cdef struct batch_scratch:
    # grown on demand and reused: pinned views, per-packet sizes, codes and counters
    Py_buffer *views
    Py_ssize_t *sizes
    Py_ssize_t *padded
    int *codes
    uint64_t *counters
    wgpy_batch_msg *msgs            # the batch AEAD's messages, their packets' indices, tag verdicts
    Py_ssize_t *index
    int *ok
    Py_ssize_t capacity
    # the contexts a batch seals/opens with (a cipher's own, keyed once; or a thread's, keyed
    # for one call and wiped after it)
    EVP_CIPHER_CTX *seal_ctx
    EVP_CIPHER_CTX *open_ctx


cdef void scratch_free_arrays(batch_scratch *s) noexcept:
    PyMem_Free(s.views)
    PyMem_Free(s.sizes)
    PyMem_Free(s.padded)
    PyMem_Free(s.codes)
    PyMem_Free(s.counters)
    PyMem_Free(s.msgs)
    PyMem_Free(s.index)
    PyMem_Free(s.ok)
    s.msgs = NULL
    s.index = NULL
    s.ok = NULL
    s.views = NULL
    s.sizes = NULL
    s.padded = NULL
    s.codes = NULL
    s.counters = NULL
    s.capacity = 0


cdef int scratch_reserve(batch_scratch *s, Py_ssize_t count) except -1:
    if count <= s.capacity:
        return 0
    scratch_free_arrays(s)
    s.views = <Py_buffer *>PyMem_Malloc(count * sizeof(Py_buffer))
    s.sizes = <Py_ssize_t *>PyMem_Malloc(count * sizeof(Py_ssize_t))
    s.padded = <Py_ssize_t *>PyMem_Malloc(count * sizeof(Py_ssize_t))
    s.codes = <int *>PyMem_Malloc(count * sizeof(int))
    s.counters = <uint64_t *>PyMem_Malloc(count * sizeof(uint64_t))
    s.msgs = <wgpy_batch_msg *>PyMem_Malloc(count * sizeof(wgpy_batch_msg))
    s.index = <Py_ssize_t *>PyMem_Malloc(count * sizeof(Py_ssize_t))
    s.ok = <int *>PyMem_Malloc(count * sizeof(int))
    if (s.views == NULL or s.sizes == NULL or s.padded == NULL or s.codes == NULL
            or s.counters == NULL or s.msgs == NULL or s.index == NULL or s.ok == NULL):
        scratch_free_arrays(s)
        raise MemoryError()
    s.capacity = count
    return 0


cdef int plan_seal(batch_scratch *s, Py_ssize_t i, Py_ssize_t size, Py_ssize_t cap,
                   Py_ssize_t mtu) except -1:
    """Check packet ``i`` of a batch to seal (``size`` bytes at HEADROOM of a ``cap``-byte buffer)
    and note its size and padded size in ``s`` (GIL held: raises seal_batch's ValueErrors)."""
    cdef Py_ssize_t padded
    if size < 0 or size > MAX_PAYLOAD or C_HEADROOM + size > cap:
        raise ValueError(f"packet {i}: length {size} does not fit its buffer")
    if size > mtu:
        padded = size
    else:
        padded = (size + 15) & ~(<Py_ssize_t>15)
        if padded > mtu:
            padded = mtu
    if C_HEADROOM + padded + C_TAG > cap:
        raise ValueError(
            f"packet {i}: buffer of {cap} bytes cannot hold {C_HEADROOM + padded + C_TAG} sealed bytes")
    s.sizes[i] = size
    s.padded[i] = padded
    return 0


cdef int plan_open(batch_scratch *s, Py_ssize_t i, Py_ssize_t size, Py_ssize_t cap) except -1:
    """Check datagram ``i`` of a batch to open (``size`` bytes of a ``cap``-byte buffer) and note
    its size in ``s`` (GIL held: raises open_batch's ValueError)."""
    if size < 0 or size > MAX_PAYLOAD or size > cap:
        raise ValueError(f"packet {i}: length {size} does not fit its buffer")
    s.sizes[i] = size
    return 0


cdef unsigned char _ZERO_KEY[C_KEY]
memset(_ZERO_KEY, 0, C_KEY)


cdef class _Scratch:
    """One thread's scratch for batches of a cipher whose own scratch another thread is using
    (see the module doc). Its contexts carry no key between calls."""

    cdef batch_scratch s

    def __cinit__(self) -> None:
        memset(&self.s, 0, sizeof(batch_scratch))
        self.s.seal_ctx = EVP_CIPHER_CTX_new()
        self.s.open_ctx = EVP_CIPHER_CTX_new()
        if self.s.seal_ctx == NULL or self.s.open_ctx == NULL:
            raise MemoryError()
        if (EVP_CipherInit_ex(self.s.seal_ctx, EVP_chacha20_poly1305(), NULL, _ZERO_KEY, NULL, 1) != 1
                or EVP_CipherInit_ex(self.s.open_ctx, EVP_chacha20_poly1305(), NULL, _ZERO_KEY, NULL, 0) != 1):
            raise RuntimeError("OpenSSL: cannot set up ChaCha20-Poly1305")

    def __dealloc__(self) -> None:
        EVP_CIPHER_CTX_free(self.s.seal_ctx)
        EVP_CIPHER_CTX_free(self.s.open_ctx)
        scratch_free_arrays(&self.s)


_threads = threading.local()


cdef _Scratch _thread_scratch():
    scratch = getattr(_threads, "scratch", None)
    if scratch is None:
        scratch = _threads.scratch = _Scratch()
    return <_Scratch>scratch


cdef class TransportCipher:
    """Transport keys of one keypair (both directions) and its counters.

    May be used by several threads at once (see the module doc). The caller owns every buffer;
    nothing is kept after a call returns. See crypto/transport.py for the full contract (same
    behaviour).
    """

    cdef EVP_CIPHER_CTX *_seal_ctx
    cdef EVP_CIPHER_CTX *_open_ctx
    cdef unsigned char _send_key[C_KEY]
    cdef unsigned char _receive_key[C_KEY]
    cdef uint32_t _remote_index
    cdef uint64_t _send_counter     # the next counter to reserve (atomic: wgpy_reserve_counters)
    cdef replay_window _window      # under _window_lock
    cdef int _window_lock
    cdef bint _zeroed
    # The cipher's own scratch (the first thread in uses it; ``_own_busy`` while it does), the
    # batches in flight (``_users``) and a zero() waiting for them. All three are read and
    # written with the GIL held.
    cdef batch_scratch _own
    cdef bint _own_busy
    cdef int _users
    cdef bint _zero_pending

    def __cinit__(self, send_key, receive_key, remote_index, *, send_counter=0) -> None:
        # bytes-like keys only: bytes(32) would be 32 zero bytes, a valid-looking key
        cdef bytes send = bytes(memoryview(send_key))
        cdef bytes receive = bytes(memoryview(receive_key))
        remote_index = index(remote_index)
        send_counter = index(send_counter)
        memset(&self._own, 0, sizeof(batch_scratch))
        self._seal_ctx = NULL
        self._open_ctx = NULL
        self._zeroed = True
        self._own_busy = False
        self._users = 0
        self._zero_pending = False
        self._window_lock = 0
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
        scratch_free_arrays(&self._own)

    cdef void _erase(self) noexcept:
        OPENSSL_cleanse(self._send_key, C_KEY)
        OPENSSL_cleanse(self._receive_key, C_KEY)
        EVP_CIPHER_CTX_free(self._seal_ctx)   # frees and cleanses the expanded key state
        EVP_CIPHER_CTX_free(self._open_ctx)
        self._seal_ctx = NULL
        self._open_ctx = NULL
        self._zeroed = True

    cdef batch_scratch *_enter(self, bint seal) except NULL:
        """The scratch for one batch (GIL held): the cipher's own if free, else this thread's,
        keyed for the call. Pair with :meth:`_leave`."""
        cdef _Scratch theirs
        cdef batch_scratch *s
        if not self._own_busy:
            self._own_busy = True
            self._own.seal_ctx = self._seal_ctx
            self._own.open_ctx = self._open_ctx
            self._users += 1
            return &self._own
        theirs = _thread_scratch()
        s = &theirs.s
        if seal:
            if EVP_CipherInit_ex(s.seal_ctx, NULL, NULL, self._send_key, NULL, 1) != 1:
                raise RuntimeError("OpenSSL: cannot key ChaCha20-Poly1305 (seal)")
        elif EVP_CipherInit_ex(s.open_ctx, NULL, NULL, self._receive_key, NULL, 0) != 1:
            raise RuntimeError("OpenSSL: cannot key ChaCha20-Poly1305 (open)")
        self._users += 1
        return s

    cdef void _leave(self, batch_scratch *s, bint seal) noexcept:
        """End a batch begun by :meth:`_enter` (GIL held): a thread's scratch loses the key; the
        last batch out runs a zero() that waited for it."""
        if s == &self._own:
            self._own_busy = False
        elif seal:
            EVP_CipherInit_ex(s.seal_ctx, NULL, NULL, _ZERO_KEY, NULL, 1)
        else:
            EVP_CipherInit_ex(s.open_ctx, NULL, NULL, _ZERO_KEY, NULL, 0)
        self._users -= 1
        if self._users == 0 and self._zero_pending:
            self._zero_pending = False
            self._erase()
            window_reset(&self._window)

    @property
    def send_counter(self) -> int:
        """The counter the next sealed packet will carry (the next one not yet reserved)."""
        return wgpy_load_counter(&self._send_counter)

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
        """Erase the key material; afterwards seal_batch seals nothing, open_batch says EXPIRED.

        With batches in flight on other threads, new calls see the cipher zeroed at once and
        the keys are erased when the last of those batches returns."""
        if self._users:
            self._zeroed = True
            self._zero_pending = True
            return
        self._erase()
        window_reset(&self._window)

    def seal_batch(self, list bufs not None, list lengths not None, Py_ssize_t mtu) -> int:
        """Seal a prefix of the batch in place; see crypto/transport.py for the contract."""
        cdef Py_ssize_t n = len(bufs)
        cdef Py_ssize_t count, i, size, done
        cdef Py_ssize_t pinned
        cdef uint64_t first, remaining
        cdef batch_scratch *s
        if len(lengths) < n:
            raise ValueError("lengths is shorter than bufs")
        if mtu < 0:
            raise ValueError("mtu must be non-negative")
        if self._zeroed or n == 0:
            return 0
        remaining = WGPY_REJECT_AFTER_MESSAGES - wgpy_load_counter(&self._send_counter)
        count = n if <uint64_t>n <= remaining else <Py_ssize_t>remaining
        if count == 0:
            return 0
        pinned = 0
        s = self._enter(True)
        try:
            scratch_reserve(s, count)
            # With the GIL: pin every buffer and check every size before touching anything.
            for i in range(count):
                size = lengths[i]
                PyObject_GetBuffer(bufs[i], &s.views[i], PyBUF_WRITABLE)
                pinned = i + 1
                plan_seal(s, i, size, s.views[i].len, mtu)
            # The batch's counters, reserved at once: never handed to another batch or thread,
            # even if sealing fails (an unused counter is a gap the receiver's window ignores).
            count = <Py_ssize_t>wgpy_reserve_counters(&self._send_counter, <uint64_t>count,
                                                       WGPY_REJECT_AFTER_MESSAGES, &first)
            if count == 0:  # another thread took the last counters meanwhile
                return 0
            with nogil:
                done = self._seal_all(s, first, count)
            for i in range(done):
                wgpy_set_length(lengths, i, C_HEADROOM + s.padded[i] + C_TAG)
            if done != count:
                raise RuntimeError(f"OpenSSL: sealing packet {done} failed")
            return count
        finally:
            release_views(s.views, pinned)
            self._leave(s, True)

    cdef Py_ssize_t _seal_all(self, batch_scratch *s, uint64_t first, Py_ssize_t count) noexcept nogil:
        cdef Py_ssize_t i, size, padded
        cdef unsigned char *p
        cdef unsigned char nonce[12]
        cdef int outl
        if _batch != WGPY_BATCH_EVP and count >= _batch_min:
            return self._seal_batched(s, first, count)
        memset(nonce, 0, 12)
        for i in range(count):
            p = <unsigned char *>s.views[i].buf
            size = s.sizes[i]
            padded = s.padded[i]
            write_header(p, size, padded, self._remote_index, first + <uint64_t>i)
            if padded <= WGPY_SMALL_MAX:
                wgpy_small_seal(self._send_key, first + <uint64_t>i, p + C_HEADROOM,
                                <size_t>padded, p + C_HEADROOM + padded)
                continue
            memcpy(nonce + 4, p + 8, 8)
            if wgpy_set_nonce(s.seal_ctx, nonce, 1) != 1:
                return i
            if padded > 0 and EVP_CipherUpdate(s.seal_ctx, p + C_HEADROOM, &outl,
                                               p + C_HEADROOM, <int>padded) != 1:
                return i
            if EVP_CipherFinal_ex(s.seal_ctx, p + C_HEADROOM + padded, &outl) != 1:
                return i
            if EVP_CIPHER_CTX_ctrl(s.seal_ctx, EVP_CTRL_AEAD_GET_TAG, C_TAG,
                                   p + C_HEADROOM + padded) != 1:
                return i
        return count

    cdef Py_ssize_t _seal_batched(self, batch_scratch *s, uint64_t first,
                                  Py_ssize_t count) noexcept nogil:
        """Headers and padding per packet, then the AEAD of the whole batch in SIMD lanes, with
        the counters ``first ..`` that seal_batch reserved for this batch."""
        cdef Py_ssize_t i, size, padded
        cdef unsigned char *p
        for i in range(count):
            p = <unsigned char *>s.views[i].buf
            size = s.sizes[i]
            padded = s.padded[i]
            write_header(p, size, padded, self._remote_index, first + <uint64_t>i)
            s.msgs[i].data = p + C_HEADROOM
            s.msgs[i].len = <size_t>padded
            s.msgs[i].counter = first + <uint64_t>i
            s.msgs[i].tag = p + C_HEADROOM + padded
            s.msgs[i].ad = NULL
            s.msgs[i].adlen = 0
            s.msgs[i].nonce0 = 0
        wgpy_batch_seal(_batch, self._send_key, s.msgs, <size_t>count)
        return count

    def open_batch(self, list bufs not None, list lengths not None,
                   list results not None) -> int:
        """Open the batch in place; see crypto/transport.py for the contract."""
        cdef Py_ssize_t n = len(bufs)
        cdef Py_ssize_t i, size, accepted
        cdef Py_ssize_t pinned
        cdef batch_scratch *s
        if len(lengths) < n or len(results) < n:
            raise ValueError("lengths or results is shorter than bufs")
        if self._zeroed:
            for i in range(n):
                results[i] = R_EXPIRED
            return 0
        if n == 0:
            return 0
        pinned = 0
        s = self._enter(False)
        try:
            scratch_reserve(s, n)
            for i in range(n):
                size = lengths[i]
                PyObject_GetBuffer(bufs[i], &s.views[i], PyBUF_WRITABLE)
                pinned = i + 1
                plan_open(s, i, size, s.views[i].len)
            with nogil:
                accepted = self._open_all(s, n)
            for i in range(n):
                results[i] = s.codes[i]
                if s.codes[i] == R_OK:
                    wgpy_set_length(lengths, i, s.sizes[i])
            return accepted
        finally:
            release_views(s.views, pinned)
            self._leave(s, False)

    cdef Py_ssize_t _open_all(self, batch_scratch *s, Py_ssize_t count) noexcept nogil:
        cdef Py_ssize_t i, body
        cdef Py_ssize_t accepted = 0
        cdef unsigned char *p
        cdef unsigned char nonce[12]
        cdef unsigned char sink[16]
        cdef uint64_t counter
        cdef int outl
        cdef bint authentic
        if _batch != WGPY_BATCH_EVP and count >= _batch_min:
            return self._open_batched(s, count)
        memset(nonce, 0, 12)
        for i in range(count):
            p = <unsigned char *>s.views[i].buf
            s.codes[i] = header_check(p, s.sizes[i], &counter)
            if s.codes[i] != R_PENDING:
                continue
            body = s.sizes[i] - C_HEADROOM - C_TAG
            if body <= WGPY_SMALL_MAX:
                authentic = wgpy_small_open(self._receive_key, counter, p + C_HEADROOM, <size_t>body,
                                            p + C_HEADROOM + body)
            else:
                memcpy(nonce + 4, p + 8, 8)
                authentic = (wgpy_set_nonce(s.open_ctx, nonce, 0) == 1
                             and (body == 0 or EVP_CipherUpdate(s.open_ctx, p + C_HEADROOM, &outl,
                                                                p + C_HEADROOM, <int>body) == 1)
                             and EVP_CIPHER_CTX_ctrl(s.open_ctx, EVP_CTRL_AEAD_SET_TAG, C_TAG,
                                                     p + C_HEADROOM + body) == 1
                             and EVP_CipherFinal_ex(s.open_ctx, sink, &outl) == 1)
            if not authentic:
                s.codes[i] = R_AUTH
                continue
            s.codes[i] = R_PENDING
            s.counters[i] = counter
            s.sizes[i] = body
        return self._validate_all(s, count)

    cdef Py_ssize_t _validate_all(self, batch_scratch *s, Py_ssize_t count) noexcept nogil:
        """The replay check of a batch's authentic datagrams (R_PENDING), in batch order, under
        the window's lock (taken once per batch): only an authenticated counter may move the
        window, and a datagram opened by two threads at once is accepted by one of them."""
        cdef Py_ssize_t i
        cdef Py_ssize_t accepted = 0
        wgpy_spin_lock(&self._window_lock)
        for i in range(count):
            if s.codes[i] != R_PENDING:
                continue
            if window_validate(&self._window, s.counters[i]):
                s.codes[i] = R_OK
                accepted += 1
            else:
                s.codes[i] = R_REPLAY
        wgpy_spin_unlock(&self._window_lock)
        return accepted

    cdef Py_ssize_t _open_batched(self, batch_scratch *s, Py_ssize_t count) noexcept nogil:
        """The checks of _open_all in the same order with the same codes: the tags of the whole
        batch verified in SIMD lanes first, then the replay check of the authentic ones
        (_validate_all, under the window's lock); only packets that pass every check are
        decrypted."""
        cdef Py_ssize_t i, j, body
        cdef Py_ssize_t candidates = 0
        cdef Py_ssize_t accepted
        cdef unsigned char *p
        cdef uint64_t counter
        for i in range(count):
            p = <unsigned char *>s.views[i].buf
            s.codes[i] = header_check(p, s.sizes[i], &counter)
            if s.codes[i] != R_PENDING:
                continue
            body = s.sizes[i] - C_HEADROOM - C_TAG
            s.msgs[candidates].data = p + C_HEADROOM
            s.msgs[candidates].len = <size_t>body
            s.msgs[candidates].counter = counter
            s.msgs[candidates].tag = p + C_HEADROOM + body
            s.msgs[candidates].ad = NULL
            s.msgs[candidates].adlen = 0
            s.msgs[candidates].nonce0 = 0
            s.index[candidates] = i
            candidates += 1
        wgpy_batch_verify(_batch, self._receive_key, s.msgs, <size_t>candidates, s.ok)
        for j in range(candidates):
            i = s.index[j]
            if s.ok[j]:
                s.codes[i] = R_PENDING
                s.counters[i] = s.msgs[j].counter
            else:
                s.codes[i] = R_AUTH
        # Only an authenticated counter may move the window; a replay stays encrypted.
        accepted = self._validate_all(s, count)
        for j in range(candidates):
            i = s.index[j]
            if s.codes[i] == R_OK:
                s.sizes[i] = <Py_ssize_t>s.msgs[j].len
            else:
                s.ok[j] = 0
        wgpy_batch_xor(_batch, self._receive_key, s.msgs, <size_t>candidates, s.ok)
        return accepted


# --- C entry points for a native caller (tunnel/wireguard/_worker.pyx) ----------------------
#
# The same work as seal_batch/open_batch over C arrays of packet addresses, split so that the
# caller can run it inside its own ``with nogil:`` section together with other native work
# (the batch I/O): ``*_begin`` (GIL held: the checks, the scratch, the same errors as the
# Python methods), ``*_run`` (nogil: the counters, the AEAD, the replay window), ``*_end``
# (GIL held: the scratch back; a zero() that waited for the batch runs). A cipher between
# begin and end counts as a batch in flight (zero() waits for it, as for the Python calls).
# Exported as PyCapsules in ``_capi`` (names below); the caller keeps the cipher alive.

cdef void *_capi_seal_begin(void *c, unsigned char **ptrs, Py_ssize_t *lens, Py_ssize_t *caps,
                            Py_ssize_t n, Py_ssize_t mtu, Py_ssize_t *count_out) except? NULL:
    """Checks and scratch for sealing packets ``ptrs[i][16:16+lens[i]]`` (buffers of
    ``caps[i]`` bytes); ``*count_out`` how many to seal (0: nothing, and NULL is returned
    without an exception). Raises the ValueError of seal_batch."""
    cdef TransportCipher self = <TransportCipher>c
    cdef Py_ssize_t count, i
    cdef uint64_t remaining
    cdef batch_scratch *s
    count_out[0] = 0
    if mtu < 0:
        raise ValueError("mtu must be non-negative")
    if self._zeroed or n == 0:
        return NULL
    remaining = WGPY_REJECT_AFTER_MESSAGES - wgpy_load_counter(&self._send_counter)
    count = n if <uint64_t>n <= remaining else <Py_ssize_t>remaining
    if count == 0:
        return NULL
    s = self._enter(True)
    try:
        scratch_reserve(s, count)
        for i in range(count):
            plan_seal(s, i, lens[i], caps[i], mtu)
            s.views[i].buf = ptrs[i]
    except BaseException:
        self._leave(s, True)
        raise
    count_out[0] = count
    return s


cdef Py_ssize_t _capi_seal_run(void *c, void *scratch, Py_ssize_t count, Py_ssize_t *lens) noexcept nogil:
    """Reserve the batch's counters and seal (no GIL); ``lens[i]`` become datagram lengths.
    Returns how many were sealed, or ``-1 - done`` if OpenSSL failed at packet ``done``."""
    cdef batch_scratch *s = <batch_scratch *>scratch
    cdef uint64_t first
    cdef Py_ssize_t i, done
    if (<TransportCipher>c)._zeroed:  # zero() ran since begin: seal nothing (keys live until end)
        return 0
    count = <Py_ssize_t>wgpy_reserve_counters(&(<TransportCipher>c)._send_counter, <uint64_t>count,
                                               WGPY_REJECT_AFTER_MESSAGES, &first)
    if count == 0:
        return 0
    done = (<TransportCipher>c)._seal_all(s, first, count)
    for i in range(done):
        lens[i] = C_HEADROOM + s.padded[i] + C_TAG
    return count if done == count else -1 - done


cdef void *_capi_open_begin(void *c, unsigned char **ptrs, Py_ssize_t *lens, Py_ssize_t *caps,
                            Py_ssize_t n) except? NULL:
    """Checks and scratch for opening datagrams ``ptrs[i][:lens[i]]``; NULL without an
    exception when there is nothing to do (n == 0, or the cipher is zeroed: the run then says
    EXPIRED). Raises the ValueError of open_batch."""
    cdef TransportCipher self = <TransportCipher>c
    cdef Py_ssize_t i
    cdef batch_scratch *s
    if self._zeroed or n == 0:
        return NULL
    s = self._enter(False)
    try:
        scratch_reserve(s, n)
        for i in range(n):
            plan_open(s, i, lens[i], caps[i])
            s.views[i].buf = ptrs[i]
    except BaseException:
        self._leave(s, False)
        raise
    return s


cdef Py_ssize_t _capi_open_run(void *c, void *scratch, Py_ssize_t n, Py_ssize_t *lens,
                               int *codes) noexcept nogil:
    """Open in place (no GIL): ``codes[i]`` as open_batch's results, ``lens[i]`` the plaintext
    length of the accepted; ``scratch`` NULL (from begin) means all EXPIRED. Returns how many
    were accepted."""
    cdef batch_scratch *s = <batch_scratch *>scratch
    cdef Py_ssize_t i, accepted
    if s == NULL or (<TransportCipher>c)._zeroed:
        for i in range(n):
            codes[i] = R_EXPIRED
        return 0
    accepted = (<TransportCipher>c)._open_all(s, n)
    for i in range(n):
        codes[i] = s.codes[i]
        if s.codes[i] == R_OK:
            lens[i] = s.sizes[i]
    return accepted


cdef void _capi_end(void *c, void *scratch, bint seal) noexcept:
    """End a batch begun by ``*_begin`` (GIL held; nothing for a NULL scratch)."""
    if scratch != NULL:
        (<TransportCipher>c)._leave(<batch_scratch *>scratch, seal)


from cpython.pycapsule cimport PyCapsule_New

cdef uint64_t _capi_send_counter(void *c) noexcept nogil:
    """The counter the next sealed packet would carry (``send_counter``, an atomic load): the
    lanes' counter-headroom check without a Python attribute lookup."""
    return wgpy_load_counter(&(<TransportCipher>c)._send_counter)


_capi = {
    "send_counter": PyCapsule_New(<void *>_capi_send_counter, b"wgpy.cipher.send_counter", NULL),
    "seal_begin": PyCapsule_New(<void *>_capi_seal_begin, b"wgpy.cipher.seal_begin", NULL),
    "seal_run": PyCapsule_New(<void *>_capi_seal_run, b"wgpy.cipher.seal_run", NULL),
    "open_begin": PyCapsule_New(<void *>_capi_open_begin, b"wgpy.cipher.open_begin", NULL),
    "open_run": PyCapsule_New(<void *>_capi_open_run, b"wgpy.cipher.open_run", NULL),
    "end": PyCapsule_New(<void *>_capi_end, b"wgpy.cipher.end", NULL),
}
