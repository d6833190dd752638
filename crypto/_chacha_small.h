/* ChaCha20-Poly1305 (RFC 8439) for small messages, in plain portable C.
 *
 * Why: on a host whose CPUs sit idle between packets, the first seal or open after a pause runs
 * with cold caches, and then OpenSSL's EVP path (provider dispatch plus SIMD code paths several
 * kilobytes long) costs 10-30 us for one small packet, against about 1 us for this compact
 * scalar code (hot, the two are equal up to about 128 bytes; OpenSSL is faster beyond). The
 * transport cipher (crypto/_transport.pyx) uses these two functions for messages of at most
 * WGPY_SMALL_MAX bytes and OpenSSL for the rest; the test suite checks both against an
 * independent implementation (the `cryptography` package) over every size.
 *
 * The general AEAD (any 96-bit nonce, additional data) is wgpy_small_seal_ad/open_ad, which
 * crypto/_transport.pyx also exposes as aead_seal/aead_open so that the RFC 8439 vectors
 * (section 2.8.2) can be checked; WireGuard's transport uses wgpy_small_seal/open: no
 * additional data, and the nonce is 32 zero bits followed by the 64-bit little-endian
 * counter. Written from RFC 8439 (sections 2.1-2.8);
 * Poly1305 uses 26-bit limbs. Keys and keystream are wiped from the stack before returning.
 */
#ifndef WGPY_CHACHA_SMALL_H
#define WGPY_CHACHA_SMALL_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define WGPY_SMALL_MAX 128

static inline uint32_t wgpy_rotl32(uint32_t v, int c) { return (v << c) | (v >> (32 - c)); }

static inline uint32_t wgpy_ld32(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

static inline void wgpy_st32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); p[2] = (uint8_t)(v >> 16); p[3] = (uint8_t)(v >> 24);
}

static void wgpy_wipe(void *p, size_t n) {
    volatile uint8_t *v = (volatile uint8_t *)p;
    while (n--) *v++ = 0;
}

#define WGPY_QR(a, b, c, d)                                   \
    a += b; d ^= a; d = wgpy_rotl32(d, 16);                   \
    c += d; b ^= c; b = wgpy_rotl32(b, 12);                   \
    a += b; d ^= a; d = wgpy_rotl32(d, 8);                    \
    c += d; b ^= c; b = wgpy_rotl32(b, 7);

/* One 64-byte ChaCha20 block of state `in` (RFC 8439 2.3). */
static void wgpy_chacha_block(const uint32_t in[16], uint8_t out[64]) {
    uint32_t x[16];
    int i;
    memcpy(x, in, sizeof x);
    for (i = 0; i < 10; i++) {
        WGPY_QR(x[0], x[4], x[8], x[12]) WGPY_QR(x[1], x[5], x[9], x[13])
        WGPY_QR(x[2], x[6], x[10], x[14]) WGPY_QR(x[3], x[7], x[11], x[15])
        WGPY_QR(x[0], x[5], x[10], x[15]) WGPY_QR(x[1], x[6], x[11], x[12])
        WGPY_QR(x[2], x[7], x[8], x[13]) WGPY_QR(x[3], x[4], x[9], x[14])
    }
    for (i = 0; i < 16; i++) wgpy_st32(out + 4 * i, x[i] + in[i]);
    wgpy_wipe(x, sizeof x);
}

/* The state for `key`, block counter 0 and a 96-bit nonce (RFC 8439 2.3). */
static void wgpy_chacha_init(uint32_t s[16], const uint8_t key[32], const uint8_t nonce[12]) {
    int i;
    s[0] = 0x61707865; s[1] = 0x3320646e; s[2] = 0x79622d32; s[3] = 0x6b206574;
    for (i = 0; i < 8; i++) s[4 + i] = wgpy_ld32(key + 4 * i);
    s[12] = 0;
    for (i = 0; i < 3; i++) s[13 + i] = wgpy_ld32(nonce + 4 * i);
}

/* WireGuard's transport nonce: 32 zero bits, then the 64-bit counter little-endian. */
static void wgpy_wg_nonce(uint64_t counter, uint8_t nonce[12]) {
    int i;
    for (i = 0; i < 4; i++) nonce[i] = 0;
    for (i = 0; i < 8; i++) nonce[4 + i] = (uint8_t)(counter >> (8 * i));
}

/* XOR `len` bytes of keystream from block 1 on into buf (RFC 8439 2.4). */
static void wgpy_chacha_xor(uint32_t s[16], uint8_t *buf, size_t len) {
    uint8_t stream[64];
    size_t i, n;
    s[12] = 1;
    while (len) {
        n = len < 64 ? len : 64;
        wgpy_chacha_block(s, stream);
        for (i = 0; i < n; i++) buf[i] ^= stream[i];
        s[12]++;
        buf += n;
        len -= n;
    }
    wgpy_wipe(stream, sizeof stream);
}

typedef struct { uint32_t r[5], h[5], pad[4]; } wgpy_poly;

static void wgpy_poly_init(wgpy_poly *p, const uint8_t key[32]) {
    int i;
    /* r clamped as RFC 8439 2.5 says, split into 26-bit limbs */
    p->r[0] = wgpy_ld32(key) & 0x3ffffff;
    p->r[1] = (wgpy_ld32(key + 3) >> 2) & 0x3ffff03;
    p->r[2] = (wgpy_ld32(key + 6) >> 4) & 0x3ffc0ff;
    p->r[3] = (wgpy_ld32(key + 9) >> 6) & 0x3f03fff;
    p->r[4] = (wgpy_ld32(key + 12) >> 8) & 0x00fffff;
    for (i = 0; i < 5; i++) p->h[i] = 0;
    for (i = 0; i < 4; i++) p->pad[i] = wgpy_ld32(key + 16 + 4 * i);
}

/* h = (h + m + 2^128) * r mod 2^130 - 5, for one full 16-byte block m. */
static void wgpy_poly_block(wgpy_poly *p, const uint8_t m[16]) {
    const uint32_t r0 = p->r[0], r1 = p->r[1], r2 = p->r[2], r3 = p->r[3], r4 = p->r[4];
    const uint32_t s1 = r1 * 5, s2 = r2 * 5, s3 = r3 * 5, s4 = r4 * 5;
    uint32_t h0 = p->h[0], h1 = p->h[1], h2 = p->h[2], h3 = p->h[3], h4 = p->h[4], c;
    uint64_t d0, d1, d2, d3, d4;
    h0 += wgpy_ld32(m) & 0x3ffffff;
    h1 += (wgpy_ld32(m + 3) >> 2) & 0x3ffffff;
    h2 += (wgpy_ld32(m + 6) >> 4) & 0x3ffffff;
    h3 += (wgpy_ld32(m + 9) >> 6) & 0x3ffffff;
    h4 += (wgpy_ld32(m + 12) >> 8) | (1u << 24);
    d0 = (uint64_t)h0 * r0 + (uint64_t)h1 * s4 + (uint64_t)h2 * s3 + (uint64_t)h3 * s2 + (uint64_t)h4 * s1;
    d1 = (uint64_t)h0 * r1 + (uint64_t)h1 * r0 + (uint64_t)h2 * s4 + (uint64_t)h3 * s3 + (uint64_t)h4 * s2;
    d2 = (uint64_t)h0 * r2 + (uint64_t)h1 * r1 + (uint64_t)h2 * r0 + (uint64_t)h3 * s4 + (uint64_t)h4 * s3;
    d3 = (uint64_t)h0 * r3 + (uint64_t)h1 * r2 + (uint64_t)h2 * r1 + (uint64_t)h3 * r0 + (uint64_t)h4 * s4;
    d4 = (uint64_t)h0 * r4 + (uint64_t)h1 * r3 + (uint64_t)h2 * r2 + (uint64_t)h3 * r1 + (uint64_t)h4 * r0;
    c = (uint32_t)(d0 >> 26); h0 = (uint32_t)d0 & 0x3ffffff; d1 += c;
    c = (uint32_t)(d1 >> 26); h1 = (uint32_t)d1 & 0x3ffffff; d2 += c;
    c = (uint32_t)(d2 >> 26); h2 = (uint32_t)d2 & 0x3ffffff; d3 += c;
    c = (uint32_t)(d3 >> 26); h3 = (uint32_t)d3 & 0x3ffffff; d4 += c;
    c = (uint32_t)(d4 >> 26); h4 = (uint32_t)d4 & 0x3ffffff; h0 += c * 5;
    c = h0 >> 26; h0 &= 0x3ffffff; h1 += c;
    p->h[0] = h0; p->h[1] = h1; p->h[2] = h2; p->h[3] = h3; p->h[4] = h4;
}

/* Feed `len` bytes zero-padded to a multiple of 16 (RFC 8439 2.8: the pad1/pad2 rule). */
static void wgpy_poly_padded(wgpy_poly *p, const uint8_t *m, size_t len) {
    uint8_t last[16];
    while (len >= 16) { wgpy_poly_block(p, m); m += 16; len -= 16; }
    if (len) {
        memset(last, 0, sizeof last);
        memcpy(last, m, len);
        wgpy_poly_block(p, last);
    }
}

/* The AEAD's MAC input: the additional data and the ciphertext, each zero-padded to 16 bytes,
   then their lengths as 64-bit little-endian numbers. */
static void wgpy_poly_message(wgpy_poly *p, const uint8_t *ad, size_t adlen, const uint8_t *m, size_t len) {
    uint8_t last[16];
    int i;
    wgpy_poly_padded(p, ad, adlen);
    wgpy_poly_padded(p, m, len);
    for (i = 0; i < 8; i++) {
        last[i] = (uint8_t)((uint64_t)adlen >> (8 * i));
        last[8 + i] = (uint8_t)((uint64_t)len >> (8 * i));
    }
    wgpy_poly_block(p, last);
}

static void wgpy_poly_finish(wgpy_poly *p, uint8_t tag[16]) {
    uint32_t h0 = p->h[0], h1 = p->h[1], h2 = p->h[2], h3 = p->h[3], h4 = p->h[4];
    uint32_t g0, g1, g2, g3, g4, c, mask;
    uint64_t f;
    c = h1 >> 26; h1 &= 0x3ffffff; h2 += c;
    c = h2 >> 26; h2 &= 0x3ffffff; h3 += c;
    c = h3 >> 26; h3 &= 0x3ffffff; h4 += c;
    c = h4 >> 26; h4 &= 0x3ffffff; h0 += c * 5;
    c = h0 >> 26; h0 &= 0x3ffffff; h1 += c;
    /* h mod p: take h - p = h + 5 - 2^130 if that is not negative */
    g0 = h0 + 5; c = g0 >> 26; g0 &= 0x3ffffff;
    g1 = h1 + c; c = g1 >> 26; g1 &= 0x3ffffff;
    g2 = h2 + c; c = g2 >> 26; g2 &= 0x3ffffff;
    g3 = h3 + c; c = g3 >> 26; g3 &= 0x3ffffff;
    g4 = h4 + c - (1u << 26);
    mask = (g4 >> 31) - 1; /* all ones when h >= p */
    h0 = (h0 & ~mask) | (g0 & mask);
    h1 = (h1 & ~mask) | (g1 & mask);
    h2 = (h2 & ~mask) | (g2 & mask);
    h3 = (h3 & ~mask) | (g3 & mask);
    h4 = (h4 & ~mask) | (g4 & mask);
    /* to 4 x 32 bits, then + s mod 2^128 */
    h0 = h0 | (h1 << 26);
    h1 = (h1 >> 6) | (h2 << 20);
    h2 = (h2 >> 12) | (h3 << 14);
    h3 = (h3 >> 18) | (h4 << 8);
    f = (uint64_t)h0 + p->pad[0]; wgpy_st32(tag, (uint32_t)f);
    f = (uint64_t)h1 + p->pad[1] + (f >> 32); wgpy_st32(tag + 4, (uint32_t)f);
    f = (uint64_t)h2 + p->pad[2] + (f >> 32); wgpy_st32(tag + 8, (uint32_t)f);
    f = (uint64_t)h3 + p->pad[3] + (f >> 32); wgpy_st32(tag + 12, (uint32_t)f);
}

/* RFC 8439 2.8 AEAD: encrypt buf[0:len] in place under (key, nonce), authenticating ad[0:adlen]
   too, and write the 16-byte tag. */
static void wgpy_small_seal_ad(const uint8_t key[32], const uint8_t nonce[12], const uint8_t *ad, size_t adlen,
                               uint8_t *buf, size_t len, uint8_t tag[16]) {
    uint32_t state[16];
    uint8_t one_time[64];
    wgpy_poly poly;
    wgpy_chacha_init(state, key, nonce);
    wgpy_chacha_block(state, one_time);
    wgpy_chacha_xor(state, buf, len);
    wgpy_poly_init(&poly, one_time);
    wgpy_poly_message(&poly, ad, adlen, buf, len);
    wgpy_poly_finish(&poly, tag);
    wgpy_wipe(state, sizeof state);
    wgpy_wipe(one_time, sizeof one_time);
    wgpy_wipe(&poly, sizeof poly);
}

/* Verify `tag` over (ad, buf[0:len]) in constant time and, if it matches, decrypt buf in place.
   Returns 1 if authentic; else 0 and buf is left as it was. */
static int wgpy_small_open_ad(const uint8_t key[32], const uint8_t nonce[12], const uint8_t *ad, size_t adlen,
                              uint8_t *buf, size_t len, const uint8_t tag[16]) {
    uint32_t state[16];
    uint8_t one_time[64], expected[16];
    uint8_t diff = 0;
    wgpy_poly poly;
    int i;
    wgpy_chacha_init(state, key, nonce);
    wgpy_chacha_block(state, one_time);
    wgpy_poly_init(&poly, one_time);
    wgpy_poly_message(&poly, ad, adlen, buf, len);
    wgpy_poly_finish(&poly, expected);
    for (i = 0; i < 16; i++) diff |= (uint8_t)(expected[i] ^ tag[i]);
    if (diff == 0) wgpy_chacha_xor(state, buf, len);
    wgpy_wipe(state, sizeof state);
    wgpy_wipe(one_time, sizeof one_time);
    wgpy_wipe(expected, sizeof expected);
    wgpy_wipe(&poly, sizeof poly);
    return diff == 0;
}

/* WireGuard's transport AEAD: nonce from `counter`, no additional data. */
static void wgpy_small_seal(const uint8_t key[32], uint64_t counter, uint8_t *buf, size_t len, uint8_t tag[16]) {
    uint8_t nonce[12];
    wgpy_wg_nonce(counter, nonce);
    wgpy_small_seal_ad(key, nonce, NULL, 0, buf, len, tag);
}

static int wgpy_small_open(const uint8_t key[32], uint64_t counter, uint8_t *buf, size_t len,
                           const uint8_t tag[16]) {
    uint8_t nonce[12];
    wgpy_wg_nonce(counter, nonce);
    return wgpy_small_open_ad(key, nonce, NULL, 0, buf, len, tag);
}

#endif
