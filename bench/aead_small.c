/* Small-message ChaCha20-Poly1305 seal/open latency: the hand-written crypto/_chacha_small.h
 * against libsodium's crypto_aead_chacha20poly1305_ietf_{en,de}crypt_detached and OpenSSL EVP
 * (the way crypto/_transport.pyx drives it: one context, new nonce per message).
 *
 *   gcc -O3 -fwrapv -DWITH_HANDWRITTEN -I crypto bench/aead_small.c -lsodium -lcrypto -o /tmp/aead_small
 *   /tmp/aead_small [rounds] [idle_us]         (bench/aead_small.py builds and runs it)
 *
 * Per size (0..128 bytes, the messages the transport hands to the small path) and implementation:
 * "hot": median ns per call over a tight loop; "cold": median ns of one call made right after
 * usleep(idle_us) (10 ms: the vCPU idles, caches and predictors go cold), over `rounds` calls.
 * Cold: seal and open alternate on the same buffer, so the open always authenticates.
 * Implementations are interleaved call by call, so drifts of a shared machine hit all alike.
 * Output: one line per (impl, op, size): "impl op size hot_ns cold_ns".
 */
#define _GNU_SOURCE
#include <openssl/evp.h>
#include <sodium.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#ifdef WITH_HANDWRITTEN
#include "_chacha_small.h"
#endif

static uint64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static uint64_t median(uint64_t *v, int n) {
    qsort(v, (size_t)n, sizeof *v, cmp_u64);
    return v[n / 2];
}

static uint8_t key[32];
static EVP_CIPHER_CTX *seal_ctx, *open_ctx;

enum { IMPL_SMALL, IMPL_SODIUM, IMPL_EVP, N_IMPL };
static const char *NAMES[N_IMPL] = {"handwritten", "libsodium", "openssl-evp"};

static void nonce_of(uint64_t counter, uint8_t nonce[12]) {
    memset(nonce, 0, 4);
    for (int k = 0; k < 8; k++) nonce[4 + k] = (uint8_t)(counter >> (8 * k));
}

static int seal(int impl, uint64_t counter, uint8_t *buf, size_t len, uint8_t tag[16]) {
    uint8_t nonce[12];
    int outl;
    switch (impl) {
#ifdef WITH_HANDWRITTEN
    case IMPL_SMALL:
        wgpy_small_seal(key, counter, buf, len, tag);
        return 1;
#endif
    case IMPL_SODIUM:
        nonce_of(counter, nonce);
        return crypto_aead_chacha20poly1305_ietf_encrypt_detached(buf, tag, NULL, buf, len, NULL, 0, NULL,
                                                                  nonce, key) == 0;
    case IMPL_EVP:
        nonce_of(counter, nonce);
        return EVP_CipherInit_ex2(seal_ctx, NULL, NULL, nonce, 1, NULL) == 1
               && (len == 0 || EVP_CipherUpdate(seal_ctx, buf, &outl, buf, (int)len) == 1)
               && EVP_CipherFinal_ex(seal_ctx, buf + len, &outl) == 1
               && EVP_CIPHER_CTX_ctrl(seal_ctx, EVP_CTRL_AEAD_GET_TAG, 16, tag) == 1;
    }
    return 0;
}

static int open_(int impl, uint64_t counter, uint8_t *buf, size_t len, uint8_t tag[16]) {
    uint8_t nonce[12], sink[16];
    int outl;
    switch (impl) {
#ifdef WITH_HANDWRITTEN
    case IMPL_SMALL:
        return wgpy_small_open(key, counter, buf, len, tag);
#endif
    case IMPL_SODIUM:
        nonce_of(counter, nonce);
        return crypto_aead_chacha20poly1305_ietf_decrypt_detached(buf, NULL, buf, len, tag, NULL, 0, nonce,
                                                                  key) == 0;
    case IMPL_EVP:
        nonce_of(counter, nonce);
        return EVP_CipherInit_ex2(open_ctx, NULL, NULL, nonce, 0, NULL) == 1
               && (len == 0 || EVP_CipherUpdate(open_ctx, buf, &outl, buf, (int)len) == 1)
               && EVP_CIPHER_CTX_ctrl(open_ctx, EVP_CTRL_AEAD_SET_TAG, 16, tag) == 1
               && EVP_CipherFinal_ex(open_ctx, sink, &outl) == 1;
    }
    return 0;
}

int main(int argc, char **argv) {
    int rounds = argc > 1 ? atoi(argv[1]) : 200;
    int idle_us = argc > 2 ? atoi(argv[2]) : 10000;
    int hot_iters = 20000;
    int do_init = getenv("NO_SODIUM_INIT") == NULL;
    static const size_t sizes[] = {0, 16, 32, 64, 96, 128};
    enum { N_SIZES = sizeof sizes / sizeof sizes[0] };
    static uint64_t cold[N_IMPL][2][N_SIZES][4096], hot[N_IMPL][2][N_SIZES][64];
    uint8_t buf[256], tag[16];
    uint64_t counter = 0;
    if (rounds > 4096) rounds = 4096;
    if (do_init && sodium_init() < 0) return 2;
    for (int k = 0; k < 32; k++) key[k] = (uint8_t)(k * 7 + 1);
    seal_ctx = EVP_CIPHER_CTX_new();
    open_ctx = EVP_CIPHER_CTX_new();
    EVP_CipherInit_ex(seal_ctx, EVP_chacha20_poly1305(), NULL, key, NULL, 1);
    EVP_CipherInit_ex(open_ctx, EVP_chacha20_poly1305(), NULL, key, NULL, 0);
    memset(buf, 0x5a, sizeof buf);
    /* cold: one call after each idle, implementations and sizes interleaved */
    for (int r = 0; r < rounds; r++)
        for (int s = 0; s < N_SIZES; s++)
            for (int impl = 0; impl < N_IMPL; impl++) {
#ifndef WITH_HANDWRITTEN
                if (impl == IMPL_SMALL) continue;
#endif
                for (int op = 0; op < 2; op++) {
                    usleep((useconds_t)idle_us);
                    uint64_t t0 = now_ns();
                    int ok = op == 0 ? seal(impl, counter, buf, sizes[s], tag)
                                     : open_(impl, counter, buf, sizes[s], tag);
                    cold[impl][op][s][r] = now_ns() - t0;
                    if (!ok) { fprintf(stderr, "%s op %d failed\n", NAMES[impl], op); return 1; }
                }
                counter++;
            }
    /* hot: 64 blocks of hot_iters/64 seals, then as many opens (of one sealed copy, restored by
       memcpy before each open); the median of the per-call block means */
    for (int b = 0; b < 64; b++)
        for (int s = 0; s < N_SIZES; s++)
            for (int impl = 0; impl < N_IMPL; impl++) {
#ifndef WITH_HANDWRITTEN
                if (impl == IMPL_SMALL) continue;
#endif
                int n = hot_iters / 64;
                uint64_t t0 = now_ns();
                for (int i = 0; i < n; i++) seal(impl, counter + (uint64_t)i, buf, sizes[s], tag);
                uint64_t t1 = now_ns();
                uint8_t sealed[256], sealed_tag[16];
                memcpy(sealed, buf, sizes[s]);
                seal(impl, counter, sealed, sizes[s], sealed_tag);
                int good = 1;
                for (int i = 0; i < n; i++) {
                    memcpy(buf, sealed, sizes[s]);   /* a few ns: open in place needs the ciphertext back */
                    good &= open_(impl, counter, buf, sizes[s], sealed_tag);
                }
                uint64_t t2 = now_ns();
                if (!good) { fprintf(stderr, "%s hot open failed\n", NAMES[impl]); return 1; }
                hot[impl][0][s][b] = (t1 - t0) / (uint64_t)n;
                hot[impl][1][s][b] = (t2 - t1) / (uint64_t)n;
                counter += (uint64_t)n;
            }
    for (int impl = 0; impl < N_IMPL; impl++) {
#ifndef WITH_HANDWRITTEN
        if (impl == IMPL_SMALL) continue;
#endif
        for (int op = 0; op < 2; op++)
            for (int s = 0; s < N_SIZES; s++)
                printf("%s %s %zu %llu %llu\n", NAMES[impl], op ? "open" : "seal", sizes[s],
                       (unsigned long long)median(hot[impl][op][s], 64),
                       (unsigned long long)median(cold[impl][op][s], rounds));
    }
    return 0;
}
