# cython: language_level=3, wraparound=False, boundscheck=False, cdivision=True, initializedcheck=False
"""Handshake screening for a whole batch in Cython (the fast path of ``crypto/screen.py``).

Same API, results and errors as the pure-Python reference; read its docstring for the contract.
A forged initiation costs here one keyed BLAKE2s over its 116 bytes (mac1), and under load one
over the source address (the cookie), one over 132 bytes (mac2) and, for the reply, an
XChaCha20-Poly1305 seal of 16 bytes: a few microseconds, no Diffie-Hellman, no Python frame.

Primitives: keyed BLAKE2s-128 is OpenSSL 3's EVP_MAC "BLAKE2SMAC" with ``size`` 16 (one context,
re-keyed per MAC); XChaCha20-Poly1305 is libsodium's ``crypto_aead_xchacha20poly1305_ietf_encrypt``
(the library pynacl wraps, so the pure twin uses the very same construction); comparisons are
constant-time (``CRYPTO_memcmp``). Nonces come from the caller's ``random`` (the engine's: the
OS by default), one call per batch.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from libc.string cimport memcpy, memset


cdef extern from "openssl/evp.h" nogil:
    ctypedef struct EVP_MAC:
        pass
    ctypedef struct EVP_MAC_CTX:
        pass
    ctypedef struct OSSL_LIB_CTX:
        pass
    EVP_MAC *EVP_MAC_fetch(OSSL_LIB_CTX *libctx, const char *algorithm, const char *properties)
    EVP_MAC_CTX *EVP_MAC_CTX_new(EVP_MAC *mac)


cdef extern from "openssl/crypto.h" nogil:
    int CRYPTO_memcmp(const void *a, const void *b, size_t length)


cdef extern from "sodium.h" nogil:
    int sodium_init()
    int crypto_aead_xchacha20poly1305_ietf_encrypt(
        unsigned char *c, unsigned long long *clen, const unsigned char *m, unsigned long long mlen,
        const unsigned char *ad, unsigned long long adlen, const unsigned char *nsec,
        const unsigned char *npub, const unsigned char *k)


cdef extern from *:
    """
    #include <openssl/evp.h>
    #include <openssl/params.h>
    #include <arpa/inet.h>

    /* out = BLAKE2s(key, data) with a 16-byte digest (WireGuard's MAC). */
    static int wgpy_mac16(EVP_MAC_CTX *ctx, const unsigned char *key, size_t keylen,
                          const unsigned char *data, size_t len, unsigned char *out) {
        size_t size = 16, outl = 0;
        OSSL_PARAM params[2];
        params[0] = OSSL_PARAM_construct_size_t("size", &size);
        params[1] = OSSL_PARAM_construct_end();
        if (!EVP_MAC_init(ctx, key, keylen, params)) return 0;
        if (!EVP_MAC_update(ctx, data, len)) return 0;
        return EVP_MAC_final(ctx, out, &outl, 16) && outl == 16;
    }

    /* The packed address of an IP literal into out (4 or 16 bytes); returns its size, 0 if bad. */
    static int wgpy_pack_ip(const char *text, unsigned char *out) {
        if (inet_pton(AF_INET, text, out) == 1) return 4;
        if (inet_pton(AF_INET6, text, out) == 1) return 16;
        return 0;
    }
    """
    int wgpy_mac16(EVP_MAC_CTX *ctx, const unsigned char *key, size_t keylen,
                   const unsigned char *data, size_t len, unsigned char *out) nogil
    int wgpy_pack_ip(const char *text, unsigned char *out) nogil


# Verdicts (identical values in crypto/screen.py).
PASSED = 0
PASSED_LOADED = 1
INVALID_MAC1 = 2
COOKIE = 3

MAC_SIZE = 16
KEY_SIZE = 32
NONCE_SIZE = 24
REPLY_SIZE = 64

cdef enum:
    _MAC = 16
    _NONCE = 24

cdef EVP_MAC_CTX *_ctx = NULL
cdef unsigned char _ZERO[16]
memset(_ZERO, 0, 16)


cdef int _init() except -1:
    global _ctx
    if sodium_init() < 0:
        raise ImportError("libsodium failed to initialise")
    cdef EVP_MAC *algorithm = EVP_MAC_fetch(NULL, b"BLAKE2SMAC", NULL)
    if algorithm == NULL:
        raise ImportError("OpenSSL has no BLAKE2SMAC (OpenSSL 3 is required)")
    _ctx = EVP_MAC_CTX_new(algorithm)  # the module keeps the algorithm and its context for good
    if _ctx == NULL:
        raise MemoryError()
    return 0


_init()


cdef int _mac(const unsigned char *key, size_t keylen, const unsigned char *data, size_t length,
              unsigned char *out) except -1:
    if not wgpy_mac16(_ctx, key, keylen, data, length, out):
        raise RuntimeError("OpenSSL BLAKE2SMAC failed")
    return 0


def source_bytes(source) -> bytes:
    """The cookie input for ``source``: packed address, then the port (2 bytes, little-endian)."""
    cdef unsigned char out[18]
    cdef int size = _source(source, out)
    return PyBytes_FromStringAndSize(<char *>out, size)


cdef int _source(source, unsigned char *out) except -1:
    """Write source's cookie input into out (18 bytes of room); return its size."""
    port = source.port
    if not isinstance(port, int) or not 0 <= port < 65536:
        raise ValueError(f"invalid source port {port!r}")
    ip = source.ip
    cdef bytes text = ip.encode("ascii", "replace") if isinstance(ip, str) else b""
    cdef int size = 0
    if b"\0" not in text:
        size = wgpy_pack_ip(PyBytes_AS_STRING(text), out)
    if size == 0:
        raise ValueError(f"invalid source address {ip!r}")
    cdef int p = port
    out[size] = p & 0xFF
    out[size + 1] = (p >> 8) & 0xFF
    return size + 2


cdef int _check_key(str name, bytes key) except -1:
    if len(key) != KEY_SIZE:
        raise ValueError(f"{name} must be {KEY_SIZE} bytes, got {len(key)}")
    return 0


def screen_batch(bytes mac1_key not None, bytes cookie_key not None, bytes secret not None, bufs, lengths,
                 indices, sources, Py_ssize_t load_after, random, bytearray verdicts not None,
                 list replies not None):
    """Screen the handshake messages ``indices`` of a batch (see crypto/screen.py)."""
    _check_key("mac1_key", mac1_key)
    _check_key("cookie_key", cookie_key)
    if len(secret) and len(secret) != KEY_SIZE:
        raise ValueError(f"secret must be {KEY_SIZE} bytes or empty, got {len(secret)}")
    cdef list order = list(indices)
    cdef Py_ssize_t n_verdicts = len(verdicts)
    cdef Py_ssize_t n = len(bufs)
    cdef Py_ssize_t n_lengths = len(lengths)
    cdef Py_ssize_t n_sources = len(sources)
    cdef Py_ssize_t i
    for item in order:
        i = item
        if not 0 <= i < n_verdicts or i >= n or i >= n_lengths or i >= n_sources:
            raise ValueError(f"index {item} is outside the batch or the verdicts")
    cdef unsigned char *verdict = <unsigned char *>verdicts
    cdef const unsigned char *k1 = <const unsigned char *>PyBytes_AS_STRING(mac1_key)
    cdef const unsigned char *kc = <const unsigned char *>PyBytes_AS_STRING(cookie_key)
    cdef const unsigned char *ks = <const unsigned char *>PyBytes_AS_STRING(secret)
    cdef bint have_secret = len(secret) != 0
    cdef list passed = []
    cdef list cookie_for = []
    cdef bytearray cookies = bytearray()
    cdef Py_ssize_t invalid = 0, counted = 0, size, length
    cdef const unsigned char[::1] view
    cdef unsigned char digest[_MAC]
    cdef unsigned char cookie[_MAC]
    cdef unsigned char src[18]
    cdef int src_size = 0
    last_source = None
    for item in order:
        i = item
        view = bufs[i]
        length = lengths[i]
        if length < 2 * _MAC + 8 or length > view.shape[0]:
            raise ValueError(f"message {item} is not a handshake message")
        size = length
        if view[0] == 3:  # a cookie reply: no MACs to check, handled by the engine in its place
            verdict[i] = PASSED
            passed.append(item)
            continue
        _mac(k1, 32, &view[0], size - 2 * _MAC, digest)
        if CRYPTO_memcmp(digest, &view[size - 2 * _MAC], _MAC) != 0:
            verdict[i] = INVALID_MAC1
            invalid += 1
            continue
        counted += 1
        if counted < load_after:
            verdict[i] = PASSED
            passed.append(item)
            continue
        if not have_secret:
            raise ValueError("the batch came under load without a cookie secret")
        source = sources[i]
        if source is not last_source:  # the batch I/O repeats one object for a repeated source
            src_size = _source(source, src)
            _mac(ks, 32, src, src_size, cookie)
            last_source = source
        if CRYPTO_memcmp(&view[size - _MAC], _ZERO, _MAC) != 0:  # an all-zero mac2: no cookie
            _mac(cookie, _MAC, &view[0], size - _MAC, digest)
            if CRYPTO_memcmp(digest, &view[size - _MAC], _MAC) == 0:
                verdict[i] = PASSED_LOADED
                passed.append(item)
                continue
        verdict[i] = COOKIE
        cookie_for.append(item)
        cookies += (<char *>cookie)[:_MAC]
    cdef Py_ssize_t count = len(cookie_for)
    if count == 0:
        return passed, invalid, 0, counted
    nonces = random(_NONCE * count)
    cdef const unsigned char[::1] nonce_view = nonces
    if nonce_view.shape[0] != _NONCE * count:
        raise ValueError(f"random returned {nonce_view.shape[0]} bytes, wanted {_NONCE * count}")
    cdef const unsigned char *cookie_bytes = <const unsigned char *>(<char *>cookies)
    cdef bytes reply
    cdef unsigned char *out
    cdef unsigned long long sealed_length
    cdef Py_ssize_t k
    for k in range(count):
        i = cookie_for[k]
        view = bufs[i]
        size = lengths[i]
        reply = PyBytes_FromStringAndSize(NULL, 64)
        out = <unsigned char *>PyBytes_AS_STRING(reply)
        memset(out, 0, 8)
        out[0] = 3
        memcpy(out + 4, &view[4], 4)  # the receiver of the reply is the message's sender
        memcpy(out + 8, &nonce_view[_NONCE * k], _NONCE)
        crypto_aead_xchacha20poly1305_ietf_encrypt(
            out + 32, &sealed_length, cookie_bytes + _MAC * k, _MAC, &view[size - 2 * _MAC], _MAC, NULL,
            out + 8, kc)
        replies.append((reply, sources[i]))
    return passed, invalid, count, counted
