/* Per-packet CPU cost of ChaCha20-Poly1305 over a batch: OpenSSL EVP one packet at a time (the
 * way crypto/_transport.pyx drives it: one context, a new nonce per message) against the
 * multi-buffer code of crypto/_chacha_batch.h (ChaCha20 16 lanes "avx512" or 8 lanes "avx2",
 * Poly1305 8 lanes IFMA), and for messages of at most 128 bytes the scalar code of
 * crypto/_chacha_small.h ("small"), which is what the transport uses per packet at those sizes.
 *
 *   gcc -O2 -I crypto bench/aead_batch.c -lcrypto -o /tmp/aead_batch
 *   /tmp/aead_batch [rounds]
 *
 * For each size (bytes of payload per packet) and batch (packets per call), each implementation
 * seals `batch` packets per call and opens them again (verify all tags, then decrypt all), and
 * the figure is CPU time (CLOCK_PROCESS_CPUTIME_ID) per packet, the median over `rounds`
 * rounds of ~2 ms each. Implementations are interleaved round by round, so a shared machine's
 * drift hits all alike. Every round checks that the batch code's output equals EVP's.
 * Output: "impl size batch seal_ns open_ns".
 */
#include <openssl/evp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "_chacha_batch.h"
#include "_chacha_small.h"

#define MAXB 128
#define MAXS 1536

static double cpu_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return (double)t.tv_sec * 1e9 + (double)t.tv_nsec;
}

static int cmp_d(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static uint8_t key[32];
static uint8_t buf[MAXB][MAXS + 16], ref[MAXB][MAXS + 16];
static EVP_CIPHER_CTX *seal_ctx, *open_ctx;

static void evp_seal(int size, int batch, uint64_t ctr) {
    uint8_t nonce[12] = {0};
    int outl, i;
    for (i = 0; i < batch; i++) {
        memcpy(nonce + 4, &(uint64_t){ctr + (uint64_t)i}, 8);
        EVP_CipherInit_ex2(seal_ctx, NULL, NULL, nonce, 1, NULL);
        if (size) EVP_CipherUpdate(seal_ctx, buf[i], &outl, buf[i], size);
        EVP_CipherFinal_ex(seal_ctx, buf[i] + size, &outl);
        EVP_CIPHER_CTX_ctrl(seal_ctx, EVP_CTRL_AEAD_GET_TAG, 16, buf[i] + size);
    }
}

static int evp_open(int size, int batch, uint64_t ctr) {
    uint8_t nonce[12] = {0}, sink[16];
    int outl, i, good = 0;
    for (i = 0; i < batch; i++) {
        memcpy(nonce + 4, &(uint64_t){ctr + (uint64_t)i}, 8);
        EVP_CipherInit_ex2(open_ctx, NULL, NULL, nonce, 0, NULL);
        if (size) EVP_CipherUpdate(open_ctx, buf[i], &outl, buf[i], size);
        EVP_CIPHER_CTX_ctrl(open_ctx, EVP_CTRL_AEAD_SET_TAG, 16, buf[i] + size);
        good += EVP_CipherFinal_ex(open_ctx, sink, &outl) == 1;
    }
    return good;
}

static void small_seal(int size, int batch, uint64_t ctr) {
    int i;
    for (i = 0; i < batch; i++) wgpy_small_seal(key, ctr + (uint64_t)i, buf[i], (size_t)size, buf[i] + size);
}

static int small_open(int size, int batch, uint64_t ctr) {
    int i, good = 0;
    for (i = 0; i < batch; i++) good += wgpy_small_open(key, ctr + (uint64_t)i, buf[i], (size_t)size, buf[i] + size);
    return good;
}

static void fill_msgs(wgpy_batch_msg *m, int size, int batch, uint64_t ctr) {
    int i;
    for (i = 0; i < batch; i++) {
        memset(&m[i], 0, sizeof m[i]);
        m[i].data = buf[i]; m[i].len = (size_t)size; m[i].counter = ctr + (uint64_t)i; m[i].tag = buf[i] + size;
    }
}

static int batch_open(int impl, int size, int batch, uint64_t ctr) {
    wgpy_batch_msg m[MAXB];
    int ok[MAXB], i, good = 0;
    fill_msgs(m, size, batch, ctr);
    wgpy_batch_verify(impl, key, m, (size_t)batch, ok);
    wgpy_batch_xor(impl, key, m, (size_t)batch, ok);
    for (i = 0; i < batch; i++) good += ok[i];
    return good;
}

static void batch_seal(int impl, int size, int batch, uint64_t ctr) {
    wgpy_batch_msg m[MAXB];
    fill_msgs(m, size, batch, ctr);
    wgpy_batch_seal(impl, key, m, (size_t)batch);
}

int main(int argc, char **argv) {
    static const int sizes[] = {0, 96, 1024, 1424};
    static const int batches[] = {1, 16, 128};
    static const char *names[] = {"evp", "avx512", "avx2", "small"};
    int rounds = argc > 1 ? atoi(argv[1]) : 15;
    int si, bi, impl, r, i, k;
    for (i = 0; i < 32; i++) key[i] = (uint8_t)(i * 7 + 1);
    seal_ctx = EVP_CIPHER_CTX_new();
    open_ctx = EVP_CIPHER_CTX_new();
    EVP_CipherInit_ex2(seal_ctx, EVP_chacha20_poly1305(), key, NULL, 1, NULL);
    EVP_CipherInit_ex2(open_ctx, EVP_chacha20_poly1305(), key, NULL, 0, NULL);
    if (!wgpy_batch_supported(WGPY_BATCH_AVX512)) { fprintf(stderr, "no AVX-512 IFMA here\n"); return 1; }
    for (si = 0; si < 4; si++) {
        for (bi = 0; bi < 3; bi++) {
            int size = sizes[si], batch = batches[bi];
            int reps = (int)(2e6 / (300.0 + size * 0.7) / batch) + 1;
            double seal[4][64], open[4][64];
            int nimpl = size <= WGPY_SMALL_MAX ? 4 : 3;
            uint64_t ctr = 1;
            if (rounds > 64) rounds = 64;
            /* correctness: batch output == EVP output, and both open */
            for (i = 0; i < batch; i++) for (k = 0; k < size; k++) buf[i][k] = (uint8_t)(i + k);
            evp_seal(size, batch, 99);
            memcpy(ref, buf, sizeof ref);
            for (impl = 1; impl < 3; impl++) {
                for (i = 0; i < batch; i++) for (k = 0; k < size; k++) buf[i][k] = (uint8_t)(i + k);
                batch_seal(impl, size, batch, 99);
                for (i = 0; i < batch; i++)
                    if (memcmp(buf[i], ref[i], (size_t)size + 16)) { printf("MISMATCH %s %d %d\n", names[impl], size, batch); return 1; }
                if (batch_open(impl, size, batch, 99) != batch) { printf("OPEN FAILED %s\n", names[impl]); return 1; }
            }
            for (r = 0; r < rounds; r++) {
                for (impl = 0; impl < nimpl; impl++) {
                    double t0, t1, t2;
                    int good = 0;
                    t0 = cpu_ns();
                    for (k = 0; k < reps; k++) {
                        if (impl == 0) evp_seal(size, batch, ctr + (uint64_t)k * MAXB);
                        else if (impl == 3) small_seal(size, batch, ctr + (uint64_t)k * MAXB);
                        else batch_seal(impl, size, batch, ctr + (uint64_t)k * MAXB);
                    }
                    t1 = cpu_ns();
                    /* open what the last seal produced, reps times (re-sealing in between would
                       mix the costs): authentic the first time only, so open measures verify of
                       every tag plus decryption of the authentic ones; undo by re-sealing. */
                    for (k = 0; k < reps; k++) {
                        uint64_t c = ctr + (uint64_t)(reps - 1) * MAXB;
                        if (impl == 0) good += evp_open(size, batch, c), evp_seal(size, batch, c);
                        else if (impl == 3) good += small_open(size, batch, c), small_seal(size, batch, c);
                        else good += batch_open(impl, size, batch, c), batch_seal(impl, size, batch, c);
                    }
                    t2 = cpu_ns();
                    if (good != reps * batch) { printf("open rejected %d of %d\n", reps * batch - good, reps * batch); return 1; }
                    seal[impl][r] = (t1 - t0) / reps / batch;
                    open[impl][r] = (t2 - t1) / reps / batch - seal[impl][r];
                }
            }
            for (impl = 0; impl < nimpl; impl++) {
                qsort(seal[impl], (size_t)rounds, sizeof(double), cmp_d);
                qsort(open[impl], (size_t)rounds, sizeof(double), cmp_d);
                printf("%-6s %5d %4d %8.0f %8.0f\n", names[impl], size, batch, seal[impl][rounds / 2],
                       open[impl][rounds / 2]);
            }
            fflush(stdout);
        }
    }
    return 0;
}
