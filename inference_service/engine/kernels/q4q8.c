// 4-bit weights times 8-bit activations on one CPU core, with AVX512-VNNI.
//
// A weight row holds groups of 32 weights, each a 4-bit value q in [0, 15] with a
// float16 scale d and minimum m (w = q * d + m: the layout of llama.cpp's Q4_1). An
// activation row is quantized per group of 32 to int8 with a float scale (as
// llama.cpp's Q8_1 for that type), so a group's product is one exact integer sum:
//   sum_i w_i x_i = d_w d_x sum_i q_i p_i + m_w d_x sum_i p_i.
// VNNI's dpbusd multiplies unsigned by signed bytes and sums them in 32 bits, which
// is that integer sum, four products per lane and instruction.
//
// Weight layout, for tiles of 16 output rows: [n / 16][k / 32][4][16][4] bytes. In
// load j (0..3) of a tile's group, byte b (0..3) of lane i holds weight
// (row 16 t + i, column 32 g + 8 j + b) in its low nibble and column 32 g + 8 j + 4 + b
// in its high nibble, so one 64-byte load and two masks give two dpbusd operands whose
// lanes are the tile's 16 rows. Scales and minimums: [n / 16][k / 32][16] float16.
//
// Every output row is computed alone, in the same order whatever the number of rows
// in a call (the rows only share the unpacked weights): a row gets the same numbers
// alone or in a batch.

#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define GROUP 32
#define TILE 16
#define ROWS_TOGETHER 8

// x [rows, k] -> q [rows, k] int8, d [rows, k / 32] scales, s [rows, k / 32] = d * sum(q).
static void quantize_rows(const float* x, int64_t rows, int64_t k, int8_t* q, float* d, float* s) {
    const int64_t groups = k / GROUP;
    for (int64_t r = 0; r < rows; ++r) {
        for (int64_t g = 0; g < groups; ++g) {
            const float* xg = x + r * k + g * GROUP;
            const __m512 a = _mm512_loadu_ps(xg), b = _mm512_loadu_ps(xg + 16);
            const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(a), _mm512_abs_ps(b)));
            const __m512 inverse = _mm512_set1_ps(amax > 0.0f ? 127.0f / amax : 0.0f);
            // Rounded to nearest (even on ties): the default rounding mode.
            const __m512i qa = _mm512_cvtps_epi32(_mm512_mul_ps(a, inverse));
            const __m512i qb = _mm512_cvtps_epi32(_mm512_mul_ps(b, inverse));
            _mm_storeu_si128((__m128i*)(q + r * k + g * GROUP), _mm512_cvtsepi32_epi8(qa));
            _mm_storeu_si128((__m128i*)(q + r * k + g * GROUP + 16), _mm512_cvtsepi32_epi8(qb));
            const float scale = amax / 127.0f;
            d[r * groups + g] = scale;
            s[r * groups + g] = scale * (float)_mm512_reduce_add_epi32(_mm512_add_epi32(qa, qb));
        }
    }
}

static int32_t four_bytes(const int8_t* p) {
    int32_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

static void tiles(const uint8_t* w, const uint16_t* wd, const uint16_t* wm, int64_t n, int64_t k,
                  const int8_t* q, const float* d, const float* s, int64_t rows, float* out) {
    const int64_t groups = k / GROUP;
    const __m512i low = _mm512_set1_epi8(0x0F);
    for (int64_t t = 0; t < n / TILE; ++t) {
        for (int64_t r0 = 0; r0 < rows; r0 += ROWS_TOGETHER) {
            const int64_t count = rows - r0 < ROWS_TOGETHER ? rows - r0 : ROWS_TOGETHER;
            __m512 acc[ROWS_TOGETHER];
            for (int r = 0; r < ROWS_TOGETHER; ++r) acc[r] = _mm512_setzero_ps();
            for (int64_t g = 0; g < groups; ++g) {
                const int64_t at = t * groups + g;
                const uint8_t* wg = w + at * (TILE * GROUP / 2);
                const __m512 scale = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(wd + at * TILE)));
                const __m512 minimum = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(wm + at * TILE)));
                __m512i part[8];
                for (int j = 0; j < 4; ++j) {
                    const __m512i packed = _mm512_loadu_si512((const void*)(wg + 64 * j));
                    part[2 * j] = _mm512_and_si512(packed, low);
                    part[2 * j + 1] = _mm512_and_si512(_mm512_srli_epi16(packed, 4), low);
                }
                for (int64_t r = 0; r < count; ++r) {
                    const int8_t* qg = q + (r0 + r) * k + g * GROUP;
                    __m512i sum = _mm512_setzero_si512();
                    for (int j = 0; j < 4; ++j) {
                        sum = _mm512_dpbusd_epi32(sum, part[2 * j], _mm512_set1_epi32(four_bytes(qg + 8 * j)));
                        sum = _mm512_dpbusd_epi32(sum, part[2 * j + 1], _mm512_set1_epi32(four_bytes(qg + 8 * j + 4)));
                    }
                    const int64_t xg = (r0 + r) * groups + g;
                    const __m512 products = _mm512_mul_ps(scale, _mm512_set1_ps(d[xg]));
                    acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), products, acc[r]);
                    acc[r] = _mm512_fmadd_ps(minimum, _mm512_set1_ps(s[xg]), acc[r]);
                }
            }
            for (int64_t r = 0; r < count; ++r) _mm512_storeu_ps(out + (r0 + r) * n + t * TILE, acc[r]);
        }
    }
}

// out [rows, n] = x [rows, k] @ w.T, both float32 and contiguous; k a multiple of 32,
// n of 16. Returns 0, or 1 when scratch memory could not be had.
int q4q8_linear(const float* x, int64_t rows, int64_t k, const uint8_t* w, const uint16_t* wd,
                const uint16_t* wm, int64_t n, float* out) {
    const int64_t groups = k / GROUP;
    int8_t* q = (int8_t*)malloc((size_t)(rows * k) + 2 * (size_t)(rows * groups) * sizeof(float));
    if (q == NULL) return 1;
    float* d = (float*)(q + rows * k);
    float* s = d + rows * groups;
    quantize_rows(x, rows, k, q, d, s);
    tiles(w, wd, wm, n, k, q, d, s, rows, out);
    free(q);
    return 0;
}
