/* Multi-buffer ChaCha20-Poly1305 (RFC 8439) for a batch of WireGuard transport messages.
 *
 * Why: sealing or opening one ~1400-byte packet at a time through OpenSSL's EVP interface costs
 * ~0.6-0.7 ns per byte on the machines we measured, mostly in the short-input ChaCha20 loop
 * and the per-call EVP overhead, against ~0.22 ns per byte for the same code on long inputs.
 * A batch holds many packets under one key, so the work can be laid out the other way round:
 *
 *   - ChaCha20: each SIMD lane computes one 64-byte block of any packet (its own nonce and block
 *     counter, the key broadcast since a batch is one keypair): 16 lanes with AVX-512F, 8 with
 *     AVX2. A packet's Poly1305 key (block 0) is computed in the same passes as its data blocks.
 *     After the 20 rounds the 16 word-vectors are transposed in registers, so each lane's block
 *     is XORed into its packet as one 64-byte (or two 32-byte) load/store.
 *   - Poly1305: each of 8 lanes of 64 bits authenticates one message with its own (r, s), so no
 *     powers of r are needed. h and r use radix 2^44 (limbs of 44, 44 and 42 bits; 2^130 = 5
 *     mod p, so 2^132 = 20) and the products use AVX-512 IFMA (52-bit multiply-add, low and high
 *     halves; a high half weighs 2^52 = 2^8 * 2^44). When a lane's message ends, its tag is
 *     finished in scalar code and the lane takes the next message, so unequal lengths cost
 *     nothing. In the common stretch (every active lane inside its full 16-byte blocks) the
 *     lanes run with vector-only bookkeeping (gathered loads, a masked pointer add).
 *
 * Entry points (impl is WGPY_BATCH_AVX512 or WGPY_BATCH_AVX2; check wgpy_batch_supported):
 *   wgpy_batch_seal   encrypt every message in place and write its tag;
 *   wgpy_batch_verify compute every message's tag over its ciphertext and compare it with the
 *                     received one in constant time (ok[i] = 1/0); the data is not touched;
 *   wgpy_batch_xor    decrypt (XOR the keystream from block 1 on into) the messages whose
 *                     select[i] is non-zero: the caller does this only for verified messages.
 * WireGuard's nonce is 32 zero bits then the 64-bit little-endian counter; there is no additional
 * data. Poly1305 keys, r and h limbs and pads on the stack are wiped before returning, and every
 * vector register (which held the key and keystream) is zeroed.
 *
 * Both the AVX-512 and the AVX2 variants need AVX-512F/BW/VL + IFMA for Poly1305 (the AVX2
 * variant exists to measure the ChaCha20 width on this hardware); on any other CPU (or a non-x86
 * build) wgpy_batch_supported says 0 and crypto/_transport.pyx stays on OpenSSL's EVP path.
 * Written from RFC 8439 sections 2.1-2.8; checked against the `cryptography` package by
 * tests/test_aead_batch.py.
 */
#ifndef WGPY_CHACHA_BATCH_H
#define WGPY_CHACHA_BATCH_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define WGPY_BATCH_EVP 0
#define WGPY_BATCH_AVX512 1
#define WGPY_BATCH_AVX2 2

/* One message of a batch: `len` bytes at `data` (sealed or opened in place), the tag at `tag`,
   the 96-bit nonce as le32(nonce0) || le64(counter) (WireGuard: nonce0 = 0), and `adlen` bytes
   of additional data at `ad` (WireGuard: none). */
typedef struct {
    uint8_t *data;
    size_t len;
    uint64_t counter;
    uint8_t *tag;
    const uint8_t *ad;
    size_t adlen;
    uint32_t nonce0;
} wgpy_batch_msg;

/* Zero n bytes at p in a way the compiler may not drop as a dead store. */
static void wgpy_batch_wipe(void *p, size_t n) {
#if defined(__GNUC__)
    memset(p, 0, n);
    __asm__ __volatile__("" : : "r"(p) : "memory");
#else
    volatile uint8_t *v = (volatile uint8_t *)p;
    while (n--) *v++ = 0;
#endif
}

#if defined(__x86_64__) && defined(__GNUC__) && !defined(WGPY_NO_BATCH)

#include <immintrin.h>

#define WGPY_T512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512ifma")))
#define WGPY_T256 __attribute__((target("avx2,avx512f,avx512bw,avx512vl,avx512ifma")))

/* Messages handled per chunk (their Poly1305 keys live on the stack meanwhile). */
#define WGPY_CHUNK 64
/* One ChaCha20 block to compute: XOR it into p[0:len] (len <= 64). */
typedef struct {
    uint8_t *p;
    uint64_t nonce;
    uint32_t nonce0;
    uint32_t block;
    uint32_t len;
} wgpy_cc_job;

static inline uint32_t wgpy_b_ld32(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

static inline uint64_t wgpy_b_ld64(const uint8_t *p) {
    return (uint64_t)wgpy_b_ld32(p) | ((uint64_t)wgpy_b_ld32(p + 4) << 32);
}

static inline int wgpy_batch_supported(int impl) {
    __builtin_cpu_init();
    if (!(__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
          __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512ifma")))
        return 0;
    if (impl == WGPY_BATCH_AVX512) return 1;
    if (impl == WGPY_BATCH_AVX2) return __builtin_cpu_supports("avx2");
    return 0;
}

/* ---------------------------------------------------------------- ChaCha20, 16 lanes (zmm) */

#define WGPY_QR16(a, b, c, d)                                                                  \
    a = _mm512_add_epi32(a, b); d = _mm512_xor_si512(d, a); d = _mm512_rol_epi32(d, 16);      \
    c = _mm512_add_epi32(c, d); b = _mm512_xor_si512(b, c); b = _mm512_rol_epi32(b, 12);      \
    a = _mm512_add_epi32(a, b); d = _mm512_xor_si512(d, a); d = _mm512_rol_epi32(d, 8);       \
    c = _mm512_add_epi32(c, d); b = _mm512_xor_si512(b, c); b = _mm512_rol_epi32(b, 7);

/* Four word-vectors (words w..w+3 of 16 blocks) -> o_k whose 128-bit lane L holds words
   w..w+3 of block 4L+k. */
#define WGPY_T4_512(a, b, c, d, o0, o1, o2, o3)                                                \
    {                                                                                          \
        __m512i t0 = _mm512_unpacklo_epi32(a, b), t1 = _mm512_unpackhi_epi32(a, b);            \
        __m512i t2 = _mm512_unpacklo_epi32(c, d), t3 = _mm512_unpackhi_epi32(c, d);            \
        o0 = _mm512_unpacklo_epi64(t0, t2); o1 = _mm512_unpackhi_epi64(t0, t2);                 \
        o2 = _mm512_unpacklo_epi64(t1, t3); o3 = _mm512_unpackhi_epi64(t1, t3);                 \
    }

WGPY_T512 static inline void wgpy_cc16_put(const wgpy_cc_job *job, __m512i ks) {
    __mmask64 m = job->len >= 64 ? ~(__mmask64)0 : (((__mmask64)1 << job->len) - 1);
    __m512i d = _mm512_maskz_loadu_epi8(m, job->p);
    _mm512_mask_storeu_epi8(job->p, m, _mm512_xor_si512(d, ks));
}

/* Blocks of g0..g3 (group-transposed, index k) -> blocks k, 4+k, 8+k, 12+k, XORed in place. */
WGPY_T512 static inline void wgpy_cc16_emit(const wgpy_cc_job *job, int nj, int k, __m512i g0, __m512i g1,
                                            __m512i g2, __m512i g3) {
    __m512i p = _mm512_shuffle_i32x4(g0, g1, 0x44), q = _mm512_shuffle_i32x4(g0, g1, 0xEE);
    __m512i r = _mm512_shuffle_i32x4(g2, g3, 0x44), s = _mm512_shuffle_i32x4(g2, g3, 0xEE);
    if (k < nj) wgpy_cc16_put(job + k, _mm512_shuffle_i32x4(p, r, 0x88));
    if (4 + k < nj) wgpy_cc16_put(job + 4 + k, _mm512_shuffle_i32x4(p, r, 0xDD));
    if (8 + k < nj) wgpy_cc16_put(job + 8 + k, _mm512_shuffle_i32x4(q, s, 0x88));
    if (12 + k < nj) wgpy_cc16_put(job + 12 + k, _mm512_shuffle_i32x4(q, s, 0xDD));
}

WGPY_T512 static void wgpy_cc16(const uint32_t kw[8], const wgpy_cc_job *job, int nj) {
    uint32_t ctr[16], n0[16], n1[16], n2[16];
    int l, i;
    for (l = 0; l < 16; l++) {
        if (l < nj) {
            ctr[l] = job[l].block; n0[l] = job[l].nonce0;
            n1[l] = (uint32_t)job[l].nonce; n2[l] = (uint32_t)(job[l].nonce >> 32);
        } else {
            ctr[l] = n0[l] = n1[l] = n2[l] = 0;
        }
    }
    const __m512i c12 = _mm512_loadu_si512(ctr), c13 = _mm512_loadu_si512(n0);
    const __m512i c14 = _mm512_loadu_si512(n1), c15 = _mm512_loadu_si512(n2);
    __m512i x0 = _mm512_set1_epi32(0x61707865), x1 = _mm512_set1_epi32(0x3320646e);
    __m512i x2 = _mm512_set1_epi32(0x79622d32), x3 = _mm512_set1_epi32(0x6b206574);
    __m512i x4 = _mm512_set1_epi32((int)kw[0]), x5 = _mm512_set1_epi32((int)kw[1]);
    __m512i x6 = _mm512_set1_epi32((int)kw[2]), x7 = _mm512_set1_epi32((int)kw[3]);
    __m512i x8 = _mm512_set1_epi32((int)kw[4]), x9 = _mm512_set1_epi32((int)kw[5]);
    __m512i x10 = _mm512_set1_epi32((int)kw[6]), x11 = _mm512_set1_epi32((int)kw[7]);
    __m512i x12 = c12, x13 = c13, x14 = c14, x15 = c15;
    for (i = 0; i < 10; i++) {
        WGPY_QR16(x0, x4, x8, x12) WGPY_QR16(x1, x5, x9, x13)
        WGPY_QR16(x2, x6, x10, x14) WGPY_QR16(x3, x7, x11, x15)
        WGPY_QR16(x0, x5, x10, x15) WGPY_QR16(x1, x6, x11, x12)
        WGPY_QR16(x2, x7, x8, x13) WGPY_QR16(x3, x4, x9, x14)
    }
    x0 = _mm512_add_epi32(x0, _mm512_set1_epi32(0x61707865));
    x1 = _mm512_add_epi32(x1, _mm512_set1_epi32(0x3320646e));
    x2 = _mm512_add_epi32(x2, _mm512_set1_epi32(0x79622d32));
    x3 = _mm512_add_epi32(x3, _mm512_set1_epi32(0x6b206574));
    x4 = _mm512_add_epi32(x4, _mm512_set1_epi32((int)kw[0]));
    x5 = _mm512_add_epi32(x5, _mm512_set1_epi32((int)kw[1]));
    x6 = _mm512_add_epi32(x6, _mm512_set1_epi32((int)kw[2]));
    x7 = _mm512_add_epi32(x7, _mm512_set1_epi32((int)kw[3]));
    x8 = _mm512_add_epi32(x8, _mm512_set1_epi32((int)kw[4]));
    x9 = _mm512_add_epi32(x9, _mm512_set1_epi32((int)kw[5]));
    x10 = _mm512_add_epi32(x10, _mm512_set1_epi32((int)kw[6]));
    x11 = _mm512_add_epi32(x11, _mm512_set1_epi32((int)kw[7]));
    x12 = _mm512_add_epi32(x12, c12);
    x13 = _mm512_add_epi32(x13, c13);
    x14 = _mm512_add_epi32(x14, c14);
    x15 = _mm512_add_epi32(x15, c15);
    {
        __m512i a0, a1, a2, a3, b0, b1, b2, b3, e0, e1, e2, e3, f0, f1, f2, f3;
        WGPY_T4_512(x0, x1, x2, x3, a0, a1, a2, a3)
        WGPY_T4_512(x4, x5, x6, x7, b0, b1, b2, b3)
        WGPY_T4_512(x8, x9, x10, x11, e0, e1, e2, e3)
        WGPY_T4_512(x12, x13, x14, x15, f0, f1, f2, f3)
        wgpy_cc16_emit(job, nj, 0, a0, b0, e0, f0);
        wgpy_cc16_emit(job, nj, 1, a1, b1, e1, f1);
        wgpy_cc16_emit(job, nj, 2, a2, b2, e2, f2);
        wgpy_cc16_emit(job, nj, 3, a3, b3, e3, f3);
    }
}

/* ----------------------------------------------------------------- ChaCha20, 8 lanes (ymm) */

#define WGPY_ROL256(v, c) _mm256_or_si256(_mm256_slli_epi32(v, c), _mm256_srli_epi32(v, 32 - (c)))
#define WGPY_QR8(a, b, c, d)                                                                   \
    a = _mm256_add_epi32(a, b); d = _mm256_xor_si256(d, a); d = _mm256_shuffle_epi8(d, r16);  \
    c = _mm256_add_epi32(c, d); b = _mm256_xor_si256(b, c); b = WGPY_ROL256(b, 12);           \
    a = _mm256_add_epi32(a, b); d = _mm256_xor_si256(d, a); d = _mm256_shuffle_epi8(d, r8);   \
    c = _mm256_add_epi32(c, d); b = _mm256_xor_si256(b, c); b = WGPY_ROL256(b, 7);

#define WGPY_T4_256(a, b, c, d, o0, o1, o2, o3)                                                \
    {                                                                                          \
        __m256i t0 = _mm256_unpacklo_epi32(a, b), t1 = _mm256_unpackhi_epi32(a, b);            \
        __m256i t2 = _mm256_unpacklo_epi32(c, d), t3 = _mm256_unpackhi_epi32(c, d);            \
        o0 = _mm256_unpacklo_epi64(t0, t2); o1 = _mm256_unpackhi_epi64(t0, t2);                 \
        o2 = _mm256_unpacklo_epi64(t1, t3); o3 = _mm256_unpackhi_epi64(t1, t3);                 \
    }

WGPY_T256 static inline void wgpy_cc8_put(const wgpy_cc_job *job, __m256i lo, __m256i hi) {
    if (job->len >= 64) {
        __m256i *p = (__m256i *)job->p;
        _mm256_storeu_si256(p, _mm256_xor_si256(_mm256_loadu_si256(p), lo));
        _mm256_storeu_si256(p + 1, _mm256_xor_si256(_mm256_loadu_si256(p + 1), hi));
    } else {
        __mmask32 m0, m1;
        uint32_t len = job->len;
        m0 = len >= 32 ? ~(__mmask32)0 : (((__mmask32)1 << len) - 1);
        m1 = len <= 32 ? 0 : (((__mmask32)1 << (len - 32)) - 1);
        _mm256_mask_storeu_epi8(job->p, m0, _mm256_xor_si256(_mm256_maskz_loadu_epi8(m0, job->p), lo));
        _mm256_mask_storeu_epi8(job->p + 32, m1, _mm256_xor_si256(_mm256_maskz_loadu_epi8(m1, job->p + 32), hi));
    }
}

WGPY_T256 static inline void wgpy_cc8_emit(const wgpy_cc_job *job, int nj, int k, __m256i g0, __m256i g1,
                                           __m256i g2, __m256i g3) {
    if (k < nj) wgpy_cc8_put(job + k, _mm256_permute2x128_si256(g0, g1, 0x20), _mm256_permute2x128_si256(g2, g3, 0x20));
    if (4 + k < nj)
        wgpy_cc8_put(job + 4 + k, _mm256_permute2x128_si256(g0, g1, 0x31), _mm256_permute2x128_si256(g2, g3, 0x31));
}

WGPY_T256 static void wgpy_cc8(const uint32_t kw[8], const wgpy_cc_job *job, int nj) {
    uint32_t ctr[8], n0[8], n1[8], n2[8];
    int l, i;
    const __m256i r16 = _mm256_setr_epi8(2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13, 2, 3, 0, 1, 6, 7, 4,
                                         5, 10, 11, 8, 9, 14, 15, 12, 13);
    const __m256i r8 = _mm256_setr_epi8(3, 0, 1, 2, 7, 4, 5, 6, 11, 8, 9, 10, 15, 12, 13, 14, 3, 0, 1, 2, 7, 4, 5, 6,
                                        11, 8, 9, 10, 15, 12, 13, 14);
    for (l = 0; l < 8; l++) {
        if (l < nj) {
            ctr[l] = job[l].block; n0[l] = job[l].nonce0;
            n1[l] = (uint32_t)job[l].nonce; n2[l] = (uint32_t)(job[l].nonce >> 32);
        } else {
            ctr[l] = n0[l] = n1[l] = n2[l] = 0;
        }
    }
    const __m256i c12 = _mm256_loadu_si256((const __m256i *)ctr), c13 = _mm256_loadu_si256((const __m256i *)n0);
    const __m256i c14 = _mm256_loadu_si256((const __m256i *)n1), c15 = _mm256_loadu_si256((const __m256i *)n2);
    __m256i x0 = _mm256_set1_epi32(0x61707865), x1 = _mm256_set1_epi32(0x3320646e);
    __m256i x2 = _mm256_set1_epi32(0x79622d32), x3 = _mm256_set1_epi32(0x6b206574);
    __m256i x4 = _mm256_set1_epi32((int)kw[0]), x5 = _mm256_set1_epi32((int)kw[1]);
    __m256i x6 = _mm256_set1_epi32((int)kw[2]), x7 = _mm256_set1_epi32((int)kw[3]);
    __m256i x8 = _mm256_set1_epi32((int)kw[4]), x9 = _mm256_set1_epi32((int)kw[5]);
    __m256i x10 = _mm256_set1_epi32((int)kw[6]), x11 = _mm256_set1_epi32((int)kw[7]);
    __m256i x12 = c12, x13 = c13, x14 = c14, x15 = c15;
    for (i = 0; i < 10; i++) {
        WGPY_QR8(x0, x4, x8, x12) WGPY_QR8(x1, x5, x9, x13)
        WGPY_QR8(x2, x6, x10, x14) WGPY_QR8(x3, x7, x11, x15)
        WGPY_QR8(x0, x5, x10, x15) WGPY_QR8(x1, x6, x11, x12)
        WGPY_QR8(x2, x7, x8, x13) WGPY_QR8(x3, x4, x9, x14)
    }
    x0 = _mm256_add_epi32(x0, _mm256_set1_epi32(0x61707865));
    x1 = _mm256_add_epi32(x1, _mm256_set1_epi32(0x3320646e));
    x2 = _mm256_add_epi32(x2, _mm256_set1_epi32(0x79622d32));
    x3 = _mm256_add_epi32(x3, _mm256_set1_epi32(0x6b206574));
    x4 = _mm256_add_epi32(x4, _mm256_set1_epi32((int)kw[0]));
    x5 = _mm256_add_epi32(x5, _mm256_set1_epi32((int)kw[1]));
    x6 = _mm256_add_epi32(x6, _mm256_set1_epi32((int)kw[2]));
    x7 = _mm256_add_epi32(x7, _mm256_set1_epi32((int)kw[3]));
    x8 = _mm256_add_epi32(x8, _mm256_set1_epi32((int)kw[4]));
    x9 = _mm256_add_epi32(x9, _mm256_set1_epi32((int)kw[5]));
    x10 = _mm256_add_epi32(x10, _mm256_set1_epi32((int)kw[6]));
    x11 = _mm256_add_epi32(x11, _mm256_set1_epi32((int)kw[7]));
    x12 = _mm256_add_epi32(x12, c12);
    x13 = _mm256_add_epi32(x13, c13);
    x14 = _mm256_add_epi32(x14, c14);
    x15 = _mm256_add_epi32(x15, c15);
    {
        __m256i a0, a1, a2, a3, b0, b1, b2, b3, e0, e1, e2, e3, f0, f1, f2, f3;
        WGPY_T4_256(x0, x1, x2, x3, a0, a1, a2, a3)
        WGPY_T4_256(x4, x5, x6, x7, b0, b1, b2, b3)
        WGPY_T4_256(x8, x9, x10, x11, e0, e1, e2, e3)
        WGPY_T4_256(x12, x13, x14, x15, f0, f1, f2, f3)
        wgpy_cc8_emit(job, nj, 0, a0, b0, e0, f0);
        wgpy_cc8_emit(job, nj, 1, a1, b1, e1, f1);
        wgpy_cc8_emit(job, nj, 2, a2, b2, e2, f2);
        wgpy_cc8_emit(job, nj, 3, a3, b3, e3, f3);
    }
}

/* Run a list of jobs through the chosen width. */
static void wgpy_cc_run(int impl, const uint32_t kw[8], const wgpy_cc_job *job, int nj) {
    int i;
    if (impl == WGPY_BATCH_AVX2) {
        for (i = 0; i < nj; i += 8) wgpy_cc8(kw, job + i, nj - i < 8 ? nj - i : 8);
    } else {
        for (i = 0; i < nj; i += 16) wgpy_cc16(kw, job + i, nj - i < 16 ? nj - i : 16);
    }
}

#define WGPY_JOBS 64

/* Keystream for messages m[0:n]: the Poly1305 key blocks into keys[i] (zeroed first) when
   `with_keys`, the data blocks (from block 1) XORed into each message when `with_data` and
   select is NULL or select[i] is non-zero. */
static void wgpy_cc_batch(int impl, const uint32_t kw[8], const wgpy_batch_msg *m, size_t n, uint8_t (*keys)[32],
                          int with_keys, int with_data, const int *select) {
    wgpy_cc_job job[WGPY_JOBS];
    int nj = 0;
    size_t i, off;
    for (i = 0; i < n; i++) {
        if (with_keys) {
            memset(keys[i], 0, 32);
            job[nj].p = keys[i]; job[nj].nonce = m[i].counter; job[nj].nonce0 = m[i].nonce0;
            job[nj].block = 0; job[nj].len = 32;
            if (++nj == WGPY_JOBS) { wgpy_cc_run(impl, kw, job, nj); nj = 0; }
        }
        if (!with_data || (select != NULL && !select[i])) continue;
        for (off = 0; off < m[i].len; off += 64) {
            job[nj].p = m[i].data + off;
            job[nj].nonce = m[i].counter;
            job[nj].nonce0 = m[i].nonce0;
            job[nj].block = (uint32_t)(1 + off / 64);
            job[nj].len = (uint32_t)(m[i].len - off < 64 ? m[i].len - off : 64);
            if (++nj == WGPY_JOBS) { wgpy_cc_run(impl, kw, job, nj); nj = 0; }
        }
    }
    if (nj) wgpy_cc_run(impl, kw, job, nj);
    wgpy_batch_wipe(job, sizeof job);
}

/* ------------------------------------------------------------ Poly1305, 8 lanes (AVX-512 IFMA) */

#define WGPY_M44 0xFFFFFFFFFFFULL
#define WGPY_M42 0x3FFFFFFFFFFULL

/* h = (h + m) * r mod 2^130 - 5 in every lane; m given as its low and high 64 bits (the 2^128
   bit is added here). */
#define WGPY_POLY8_BLOCK(LO, HI)                                                                  \
    {                                                                                             \
        __m512i l0, l1, l2, u0, u1, u2, c;                                                        \
        h0 = _mm512_add_epi64(h0, _mm512_and_si512(LO, m44));                                     \
        h1 = _mm512_add_epi64(h1, _mm512_and_si512(                                              \
                 _mm512_or_si512(_mm512_srli_epi64(LO, 44), _mm512_slli_epi64(HI, 20)), m44));    \
        h2 = _mm512_add_epi64(h2, _mm512_or_si512(_mm512_srli_epi64(HI, 24), bit128));            \
        l0 = _mm512_madd52lo_epu64(_mm512_madd52lo_epu64(_mm512_madd52lo_epu64(z, h2, s1), h0, r0), h1, s2);                                  \
        u0 = _mm512_madd52hi_epu64(_mm512_madd52hi_epu64(_mm512_madd52hi_epu64(z, h2, s1), h0, r0), h1, s2);                                  \
        l1 = _mm512_madd52lo_epu64(_mm512_madd52lo_epu64(_mm512_madd52lo_epu64(z, h2, s2), h0, r1), h1, r0);                                  \
        u1 = _mm512_madd52hi_epu64(_mm512_madd52hi_epu64(_mm512_madd52hi_epu64(z, h2, s2), h0, r1), h1, r0);                                  \
        l2 = _mm512_madd52lo_epu64(_mm512_madd52lo_epu64(_mm512_madd52lo_epu64(z, h2, r0), h0, r2), h1, r1);                                  \
        u2 = _mm512_madd52hi_epu64(_mm512_madd52hi_epu64(_mm512_madd52hi_epu64(z, h2, r0), h0, r2), h1, r1);                                  \
        c = _mm512_add_epi64(_mm512_srli_epi64(l0, 44), _mm512_slli_epi64(u0, 8));                \
        h0 = _mm512_and_si512(l0, m44);                                                           \
        l1 = _mm512_add_epi64(l1, c);                                                             \
        c = _mm512_add_epi64(_mm512_srli_epi64(l1, 44), _mm512_slli_epi64(u1, 8));                \
        h1 = _mm512_and_si512(l1, m44);                                                           \
        l2 = _mm512_add_epi64(l2, c);                                                             \
        c = _mm512_add_epi64(_mm512_srli_epi64(l2, 42), _mm512_slli_epi64(u2, 10));               \
        h2 = _mm512_and_si512(l2, m42);                                                           \
        h0 = _mm512_add_epi64(h0, _mm512_add_epi64(c, _mm512_slli_epi64(c, 2)));                  \
        c = _mm512_srli_epi64(h0, 44);                                                            \
        h0 = _mm512_and_si512(h0, m44);                                                           \
        h1 = _mm512_add_epi64(h1, c);                                                             \
    }

/* The tag of a lane: h fully reduced mod 2^130 - 5, plus s, mod 2^128 (constant time). */
static void wgpy_poly44_finish(uint64_t h0, uint64_t h1, uint64_t h2, const uint8_t key[32], uint8_t tag[16]) {
    uint64_t c, g0, g1, g2, mask;
    unsigned __int128 s, a, b;
    int i;
    c = h1 >> 44; h1 &= WGPY_M44; h2 += c;
    c = h2 >> 42; h2 &= WGPY_M42; h0 += c * 5;
    c = h0 >> 44; h0 &= WGPY_M44; h1 += c;
    c = h1 >> 44; h1 &= WGPY_M44; h2 += c;
    c = h2 >> 42; h2 &= WGPY_M42; h0 += c * 5;
    c = h0 >> 44; h0 &= WGPY_M44; h1 += c;
    /* g = h + 5 - 2^130: used if not negative (h >= p) */
    g0 = h0 + 5; c = g0 >> 44; g0 &= WGPY_M44;
    g1 = h1 + c; c = g1 >> 44; g1 &= WGPY_M44;
    g2 = h2 + c - ((uint64_t)1 << 42);
    mask = (g2 >> 63) - 1; /* all ones when g2 >= 0 */
    h0 = (h0 & ~mask) | (g0 & mask);
    h1 = (h1 & ~mask) | (g1 & mask);
    h2 = (h2 & ~mask) | (g2 & mask);
    s = (unsigned __int128)wgpy_b_ld64(key + 16) | ((unsigned __int128)wgpy_b_ld64(key + 24) << 64);
    a = (unsigned __int128)h0 + ((unsigned __int128)h1 << 44) + ((unsigned __int128)h2 << 88);
    b = a + s;
    for (i = 0; i < 16; i++) tag[i] = (uint8_t)(b >> (8 * i));
}

/* A lane whose current segment is used up moves on: additional data (segment 0), then the data
   (segment 1); with segment 1 used up, its next block is the length block. */
static inline void wgpy_poly_lane_next(const wgpy_batch_msg *msg, int *seg, const uint8_t **next, uint64_t *full,
                                       size_t *rem) {
    while (*seg == 0 && *full == 0 && *rem == 0) {
        *seg = 1;
        *next = msg->data;
        *full = msg->len / 16;
        *rem = msg->len & 15;
    }
}

/* tags[i] = Poly1305(keys[i], ad zero-padded to 16 bytes || data zero-padded to 16 bytes ||
   le64(adlen) || le64(len)) for each message m[i] (RFC 8439 2.8). */
WGPY_T512 static void wgpy_poly8(const wgpy_batch_msg *m, size_t n, const uint8_t (*keys)[32], uint8_t (*tags)[16]) {
    static const uint8_t zero16[16] __attribute__((aligned(16))) = {0};
    uint8_t pad[8][16] __attribute__((aligned(64)));
    uint64_t ra[3][8], sa[2][8], ha[3][8];
    const uint8_t *next[8];
    uint64_t full[8];
    size_t cur[8];
    int seg[8];
    size_t rem[8];
    unsigned active = 0, l;
    size_t taken = 0;
    const __m512i z = _mm512_setzero_si512(), m44 = _mm512_set1_epi64((long long)WGPY_M44);
    const __m512i m42 = _mm512_set1_epi64((long long)WGPY_M42), bit128 = _mm512_set1_epi64(1LL << 40);
    const __m512i eight = _mm512_set1_epi64(8);
    const __m512i even = _mm512_setr_epi64(0, 2, 4, 6, 8, 10, 12, 14), odd = _mm512_setr_epi64(1, 3, 5, 7, 9, 11, 13, 15);
    __m512i h0 = z, h1 = z, h2 = z, r0 = z, r1 = z, r2 = z, s1 = z, s2 = z;
    for (l = 0; l < 8; l++) {
        next[l] = zero16; full[l] = 0; cur[l] = 0; seg[l] = 1; rem[l] = 0;
        ra[0][l] = ra[1][l] = ra[2][l] = sa[0][l] = sa[1][l] = 0;
    }
    for (;;) {
        unsigned fresh = 0;
        uint64_t run = ~(uint64_t)0;
        for (l = 0; l < 8; l++) {
            if (!(active & (1u << l)) && taken < n) {
                const uint8_t *k = keys[taken];
                uint64_t t0 = wgpy_b_ld64(k) & 0x0ffffffc0fffffffULL, t1 = wgpy_b_ld64(k + 8) & 0x0ffffffc0ffffffcULL;
                ra[0][l] = t0 & WGPY_M44;
                ra[1][l] = ((t0 >> 44) | (t1 << 20)) & WGPY_M44;
                ra[2][l] = (t1 >> 24) & WGPY_M42;
                sa[0][l] = 20 * ra[1][l];
                sa[1][l] = 20 * ra[2][l];
                cur[l] = taken;
                seg[l] = 0;
                next[l] = m[taken].ad;
                full[l] = m[taken].adlen / 16;
                rem[l] = m[taken].adlen & 15;
                wgpy_poly_lane_next(&m[taken], &seg[l], &next[l], &full[l], &rem[l]);
                taken++;
                active |= 1u << l;
                fresh |= 1u << l;
            }
            if ((active & (1u << l)) && full[l] < run) run = full[l];
        }
        if (!active) break;
        if (fresh) {
            h0 = _mm512_mask_mov_epi64(h0, (__mmask8)fresh, z);
            h1 = _mm512_mask_mov_epi64(h1, (__mmask8)fresh, z);
            h2 = _mm512_mask_mov_epi64(h2, (__mmask8)fresh, z);
            r0 = _mm512_loadu_si512(ra[0]); r1 = _mm512_loadu_si512(ra[1]); r2 = _mm512_loadu_si512(ra[2]);
            s1 = _mm512_loadu_si512(sa[0]); s2 = _mm512_loadu_si512(sa[1]);
        }
        if (run > 0) {
            /* every active lane has `run` full blocks ahead: vector-only stretch */
            const uint8_t *p0 = next[0], *p1 = next[1], *p2 = next[2], *p3 = next[3];
            const uint8_t *p4 = next[4], *p5 = next[5], *p6 = next[6], *p7 = next[7];
            const size_t i0 = active & 1 ? 16 : 0, i1 = active & 2 ? 16 : 0, i2 = active & 4 ? 16 : 0;
            const size_t i3 = active & 8 ? 16 : 0, i4 = active & 16 ? 16 : 0, i5 = active & 32 ? 16 : 0;
            const size_t i6 = active & 64 ? 16 : 0, i7 = active & 128 ? 16 : 0;
            uint64_t j;
            for (j = 0; j < run; j++) {
                /* lane l's 16 bytes into the 128-bit slot l of a (l < 4) or b, then split into
                   the low and high 64 bits of every lane */
                __m512i a = _mm512_castsi128_si512(_mm_loadu_si128((const __m128i *)p0));
                __m512i b = _mm512_castsi128_si512(_mm_loadu_si128((const __m128i *)p4));
                __m512i lo, hi;
                a = _mm512_inserti32x4(a, _mm_loadu_si128((const __m128i *)p1), 1);
                b = _mm512_inserti32x4(b, _mm_loadu_si128((const __m128i *)p5), 1);
                a = _mm512_inserti32x4(a, _mm_loadu_si128((const __m128i *)p2), 2);
                b = _mm512_inserti32x4(b, _mm_loadu_si128((const __m128i *)p6), 2);
                a = _mm512_inserti32x4(a, _mm_loadu_si128((const __m128i *)p3), 3);
                b = _mm512_inserti32x4(b, _mm_loadu_si128((const __m128i *)p7), 3);
                lo = _mm512_permutex2var_epi64(a, even, b);
                hi = _mm512_permutex2var_epi64(a, odd, b);
                WGPY_POLY8_BLOCK(lo, hi)
                p0 += i0; p1 += i1; p2 += i2; p3 += i3; p4 += i4; p5 += i5; p6 += i6; p7 += i7;
            }
            for (l = 0; l < 8; l++) {
                if (active & (1u << l)) {
                    next[l] += 16 * run; full[l] -= run;
                    wgpy_poly_lane_next(&m[cur[l]], &seg[l], &next[l], &full[l], &rem[l]);
                }
            }
            continue;
        }
        {
            /* some lane is past its full blocks: one step with the tail blocks built in pads */
            const uint8_t *ptr[8];
            unsigned done = 0;
            __m512i addr, lo, hi;
            for (l = 0; l < 8; l++) {
                ptr[l] = zero16;
                if (!(active & (1u << l))) continue;
                if (full[l]) {
                    ptr[l] = next[l]; next[l] += 16; full[l]--;
                } else if (rem[l]) {
                    memset(pad[l], 0, 16);
                    memcpy(pad[l], next[l], rem[l]);
                    ptr[l] = pad[l];
                    rem[l] = 0;
                } else {
                    uint64_t adlen = m[cur[l]].adlen, len = m[cur[l]].len;
                    int i;
                    for (i = 0; i < 8; i++) { pad[l][i] = (uint8_t)(adlen >> (8 * i)); pad[l][8 + i] = (uint8_t)(len >> (8 * i)); }
                    ptr[l] = pad[l];
                    done |= 1u << l;
                }
                wgpy_poly_lane_next(&m[cur[l]], &seg[l], &next[l], &full[l], &rem[l]);
            }
            addr = _mm512_loadu_si512((const void *)ptr);
            lo = _mm512_i64gather_epi64(addr, (const void *)0, 1);
            hi = _mm512_i64gather_epi64(_mm512_add_epi64(addr, eight), (const void *)0, 1);
            WGPY_POLY8_BLOCK(lo, hi)
            if (done) {
                _mm512_storeu_si512(ha[0], h0); _mm512_storeu_si512(ha[1], h1); _mm512_storeu_si512(ha[2], h2);
                for (l = 0; l < 8; l++) {
                    if (done & (1u << l)) wgpy_poly44_finish(ha[0][l], ha[1][l], ha[2][l], keys[cur[l]], tags[cur[l]]);
                }
                for (l = 0; l < 8; l++) {
                    if (done & (1u << l)) next[l] = zero16;
                }
                active &= ~done;
            }
        }
    }
    wgpy_batch_wipe(pad, sizeof pad);
    wgpy_batch_wipe(ra, sizeof ra);
    wgpy_batch_wipe(sa, sizeof sa);
    wgpy_batch_wipe(ha, sizeof ha);
}

/* ------------------------------------------------------------------------------ entry points */

/* Zero every vector register (they held the key and keystream): vzeroall clears zmm0-15,
   zmm16-31 one by one. About 20 instructions per call of an entry point. */
WGPY_T512 static void wgpy_batch_clear_vectors(void) {
    __asm__ __volatile__(
        "vpxord %%zmm16, %%zmm16, %%zmm16\n\t"
        "vpxord %%zmm17, %%zmm17, %%zmm17\n\t"
        "vpxord %%zmm18, %%zmm18, %%zmm18\n\t"
        "vpxord %%zmm19, %%zmm19, %%zmm19\n\t"
        "vpxord %%zmm20, %%zmm20, %%zmm20\n\t"
        "vpxord %%zmm21, %%zmm21, %%zmm21\n\t"
        "vpxord %%zmm22, %%zmm22, %%zmm22\n\t"
        "vpxord %%zmm23, %%zmm23, %%zmm23\n\t"
        "vpxord %%zmm24, %%zmm24, %%zmm24\n\t"
        "vpxord %%zmm25, %%zmm25, %%zmm25\n\t"
        "vpxord %%zmm26, %%zmm26, %%zmm26\n\t"
        "vpxord %%zmm27, %%zmm27, %%zmm27\n\t"
        "vpxord %%zmm28, %%zmm28, %%zmm28\n\t"
        "vpxord %%zmm29, %%zmm29, %%zmm29\n\t"
        "vpxord %%zmm30, %%zmm30, %%zmm30\n\t"
        "vpxord %%zmm31, %%zmm31, %%zmm31\n\t"
        "vzeroall"
        :
        :
        : "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15", "xmm16", "xmm17", "xmm18", "xmm19", "xmm20", "xmm21", "xmm22", "xmm23", "xmm24", "xmm25", "xmm26", "xmm27", "xmm28", "xmm29", "xmm30", "xmm31");
}

static void wgpy_batch_key_words(const uint8_t key[32], uint32_t kw[8]) {
    int i;
    for (i = 0; i < 8; i++) kw[i] = wgpy_b_ld32(key + 4 * i);
}

static void wgpy_batch_seal(int impl, const uint8_t key[32], const wgpy_batch_msg *m, size_t n) {
    uint8_t keys[WGPY_CHUNK][32];
    uint8_t tags[WGPY_CHUNK][16];
    uint32_t kw[8];
    size_t at, k, i;
    wgpy_batch_key_words(key, kw);
    for (at = 0; at < n; at += k) {
        k = n - at < WGPY_CHUNK ? n - at : WGPY_CHUNK;
        wgpy_cc_batch(impl, kw, m + at, k, keys, 1, 1, NULL);
        wgpy_poly8(m + at, k, (const uint8_t(*)[32])keys, tags);
        for (i = 0; i < k; i++) memcpy(m[at + i].tag, tags[i], 16);
    }
    wgpy_batch_wipe(keys, sizeof keys);
    wgpy_batch_wipe(kw, sizeof kw);
    wgpy_batch_clear_vectors();
}

static void wgpy_batch_verify(int impl, const uint8_t key[32], const wgpy_batch_msg *m, size_t n, int *ok) {
    uint8_t keys[WGPY_CHUNK][32];
    uint8_t tags[WGPY_CHUNK][16];
    uint32_t kw[8];
    size_t at, k, i;
    int j;
    wgpy_batch_key_words(key, kw);
    for (at = 0; at < n; at += k) {
        k = n - at < WGPY_CHUNK ? n - at : WGPY_CHUNK;
        wgpy_cc_batch(impl, kw, m + at, k, keys, 1, 0, NULL);
        wgpy_poly8(m + at, k, (const uint8_t(*)[32])keys, tags);
        for (i = 0; i < k; i++) {
            uint8_t diff = 0;
            for (j = 0; j < 16; j++) diff |= (uint8_t)(tags[i][j] ^ m[at + i].tag[j]);
            ok[at + i] = diff == 0;
        }
    }
    wgpy_batch_wipe(keys, sizeof keys);
    wgpy_batch_wipe(tags, sizeof tags);
    wgpy_batch_wipe(kw, sizeof kw);
    wgpy_batch_clear_vectors();
}

static void wgpy_batch_xor(int impl, const uint8_t key[32], const wgpy_batch_msg *m, size_t n, const int *select) {
    uint32_t kw[8];
    wgpy_batch_key_words(key, kw);
    wgpy_cc_batch(impl, kw, m, n, NULL, 0, 1, select);
    wgpy_batch_wipe(kw, sizeof kw);
    wgpy_batch_clear_vectors();
}

#else /* no x86-64 GCC: the batch path does not exist; callers stay on EVP */

static int wgpy_batch_supported(int impl) { (void)impl; return 0; }
static void wgpy_batch_seal(int impl, const uint8_t key[32], const wgpy_batch_msg *m, size_t n) {
    (void)impl; (void)key; (void)m; (void)n;
}
static void wgpy_batch_verify(int impl, const uint8_t key[32], const wgpy_batch_msg *m, size_t n, int *ok) {
    size_t i;
    (void)impl; (void)key; (void)m;
    for (i = 0; i < n; i++) ok[i] = 0;
}
static void wgpy_batch_xor(int impl, const uint8_t key[32], const wgpy_batch_msg *m, size_t n, const int *select) {
    (void)impl; (void)key; (void)m; (void)n; (void)select;
}

#endif
#endif
