/* Compiled inner loops of the participant level (optional: preprocess.py falls back to numpy
 * and scipy when this module is not built).
 *
 * trilinear()  resamples a float32 volume (or stored int16/uint16, read as they are, to the
 *              bytes their float32 copy gives) on any affine grid, with the conventions of
 *              scipy.ndimage.affine_transform(order=1, mode="constant", prefilter=False):
 *              a point more than 1e-6 voxel outside [0, n - 1] on any axis gets cval; inside,
 *              the 8 neighbours are weighted by products of 1-D linear weights. Oblique grids:
 *              one pass in double, scipy's values bit for bit (with AVX-512, where the
 *              processor has it, 8 points at a time: the same bytes). Axis-aligned grids
 *              (permuted, flipped, scaled): separable, in float32, within a float32 rounding
 *              of scipy. Optionally keeps the normalisation's sample as it writes (with
 *              AVX-512, 16 positions at a time).
 * block_sums() sums a float32 volume over blocks of steps[0] x steps[1] x steps[2] voxels.
 * widen()      converts stored integers to float32 (with the header's scaling), takes their
 *              range and, optionally, their block sums in the same pass (or these alone).
 * head_mask()  keeps the largest connected component above a threshold, holes filled;
 *              head_centre() gives where that mask is in world space.
 * percentiles() gives numpy's percentiles of a strided sample of a volume (optionally of its
 *              values above a threshold) by radix selection: no copy, no partition;
 *              sample_percentiles() the same of the sample trilinear() kept.
 * shift_scale() computes (x - shift) / scale in place, clipped to [low, high] unless NaN is
 *              given: numpy's float32 arithmetic in one pass instead of three.
 *
 * Arrays come in through the buffer protocol (any strides for inputs, C-contiguous outputs);
 * no numpy headers are needed to build. All release the GIL while they run. Build flags keep
 * IEEE arithmetic (no -ffast-math, no contraction into FMA), and the versions for wider
 * vectors (AVX2, AVX-512) do the same operations element by element, so results do not depend
 * on the compiler's mood or the processor: the same input gives the same bytes.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#define EDGE_TOLERANCE 1e-6
#ifndef TILE
#define TILE 16
#endif

#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#define KERNELS_AVX512 1
#if defined(__GLIBC__)  /* function versions chosen at load time (ifunc) */
#define KERNELS_CLONES __attribute__((target_clones("avx2", "default")))
#endif
#endif
#ifndef KERNELS_CLONES
#define KERNELS_CLONES
#endif

/* Keys that sort as the floats do (for percentiles: -0.0 is made 0.0 before) */
static inline uint32_t
float_key(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

static inline float
key_float(uint32_t k)
{
    const uint32_t u = (k & 0x80000000u) ? (k & 0x7FFFFFFFu) : ~k;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* The sample of the normalisation, taken while the output is made: the keys of the outputs at
 * even indices along all three axes that are above limit (compared in float32): what
 * percentiles() takes from out[::2, ::2, ::2] (in another order, which order statistics do
 * not see). keys: room for every even position. */
struct sample {
    uint32_t *keys;
    Py_ssize_t n;
    float limit;
};

/* Whether the vector code may run where the processor has AVX-512 (the oblique resampling,
 * the sample): -1 not yet known, 0 no, 1 yes. The results are the same bytes either way. */
static int use_avx512 = -1;

#ifdef KERNELS_AVX512
/* the AVX-512 subsets the vector code uses: the foundation, and its 256-bit forms (VL) */
static int
has_avx512(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl");
}
#endif

static void
vector_check(void)
{
#ifdef KERNELS_AVX512
    if (use_avx512 < 0) {
        use_avx512 = has_avx512() ? 1 : 0;
    }
#else
    use_avx512 = 0;
#endif
}

#ifdef KERNELS_AVX512
/* sample_run's loop, 16 even positions at a time: their keys packed in order, as many as are
 * above the limit (masked loads and stores: nothing is touched outside [k, last) of the row
 * or past the kept keys) */
__attribute__((target("avx512f")))
static void
sample_run_avx512(struct sample *smp, const float *row, Py_ssize_t k, Py_ssize_t last)
{
    const __m512i even = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16,
                                          14, 12, 10, 8, 6, 4, 2, 0);
    const __m512 limit = _mm512_set1_ps(smp->limit), zero = _mm512_setzero_ps();
    const __m512i sign = _mm512_set1_epi32((int)0x80000000u);
    for (; k < last; k += 32) {
        const Py_ssize_t left = last - k;  /* floats from k on that are in the run */
        const __mmask16 lo = left >= 16 ? 0xFFFF : (__mmask16)((1u << left) - 1u);
        const __mmask16 hi = left >= 32 ? 0xFFFF : left <= 16 ? 0
                             : (__mmask16)((1u << (left - 16)) - 1u);
        const __m512 v = _mm512_permutex2var_ps(_mm512_maskz_loadu_ps(lo, row + k), even,
                                                _mm512_maskz_loadu_ps(hi, row + k + 16));
        const Py_ssize_t count = left >= 32 ? 16 : (left + 1) / 2;
        const __mmask16 valid = count >= 16 ? 0xFFFF : (__mmask16)((1u << count) - 1u);
        /* float_key of v + 0.0f: negatives (sign set) flipped whole, the rest get the sign */
        const __m512i u = _mm512_castps_si512(_mm512_add_ps(v, zero));
        const __mmask16 negative = _mm512_test_epi32_mask(u, sign);
        const __m512i key = _mm512_mask_xor_epi32(_mm512_or_si512(u, sign), negative, u,
                                                  _mm512_set1_epi32(-1));
        const __mmask16 keep = valid & _mm512_cmp_ps_mask(v, limit, _CMP_GT_OQ);
        const int kept = __builtin_popcount((unsigned int)keep);
        _mm512_mask_storeu_epi32(smp->keys + smp->n, (__mmask16)((1u << kept) - 1u),
                                 _mm512_maskz_compress_epi32(keep, key));
        smp->n += kept;
    }
}
#endif

/* the even k in [first, last) of output row (i, j) (row: the row's start) */
static inline void
sample_run(struct sample *smp, const float *row, Py_ssize_t i, Py_ssize_t j, Py_ssize_t first,
           Py_ssize_t last)
{
    if (smp == NULL || (i & 1) || (j & 1))
        return;
#ifdef KERNELS_AVX512
    if (use_avx512 == 1) {
        sample_run_avx512(smp, row, first + (first & 1), last);
        return;
    }
#endif
    for (Py_ssize_t k = first + (first & 1); k < last; k += 2) {
        const float v = row[k];
        smp->keys[smp->n] = float_key(v + 0.0f);  /* written always, kept when above */
        smp->n += v > smp->limit;
    }
}

/* how many even integers lie in [a, b), 0 <= a <= b */
static inline Py_ssize_t
evens(Py_ssize_t a, Py_ssize_t b)
{
    return (b + 1) / 2 - (a + 1) / 2;
}

/* The voxel types a source may have: float32, and the int16 and uint16 that most scanners
 * store, read as they are (no float32 copy of the volume; their float32 values are exact, so
 * the results are the bytes that the converted volume gives). */
enum { VOX_F32, VOX_I16, VOX_U16 };

static inline __attribute__((always_inline)) float
voxel(const void *in, Py_ssize_t i, const int kind)
{
    if (kind == VOX_I16)
        return (float)((const int16_t *)in)[i];
    if (kind == VOX_U16)
        return (float)((const uint16_t *)in)[i];
    return ((const float *)in)[i];
}

/* A 3-D volume by the buffer protocol: float32, or (with kind) also int16 and uint16, whose
 * kind is set; strides in whole elements. Outputs (writable) are C-contiguous. */
static int
get_volume(PyObject *obj, Py_buffer *view, int writable, const char *name, int *kind)
{
    int flags = PyBUF_FORMAT | (writable ? (PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE) : PyBUF_STRIDES);
    if (PyObject_GetBuffer(obj, view, flags) < 0)
        return -1;
    const char *f = view->format != NULL ? view->format : "";
    /* native byte order, however the exporter writes it */
    const uint16_t probe = 1;
    const char here = *(const unsigned char *)&probe ? '<' : '>';
    if (f[0] == '@' || f[0] == '=' || f[0] == here)
        f++;
    const int k = strcmp(f, "f") == 0 && view->itemsize == 4 ? VOX_F32
                  : strcmp(f, "h") == 0 && view->itemsize == 2 ? VOX_I16
                  : strcmp(f, "H") == 0 && view->itemsize == 2 ? VOX_U16 : -1;
    if (view->ndim != 3 || k < 0 || (kind == NULL && k != VOX_F32)) {
        PyErr_Format(PyExc_ValueError, kind == NULL ? "%s: a 3-D float32 array is needed"
                     : "%s: a 3-D float32, int16 or uint16 array (native order) is needed", name);
        PyBuffer_Release(view);
        return -1;
    }
    for (int a = 0; a < 3; a++) {
        if (view->strides[a] % view->itemsize != 0) {
            PyErr_Format(PyExc_ValueError, "%s: strides must be whole elements", name);
            PyBuffer_Release(view);
            return -1;
        }
    }
    if (kind != NULL)
        *kind = k;
    return 0;
}

/* A read-only source volume (of any kind) and a writable C-contiguous float32 output; both
 * or neither acquired. */
static int
get_source_output(PyObject *src_obj, Py_buffer *src, int *kind, PyObject *out_obj, Py_buffer *out)
{
    if (get_volume(src_obj, src, 0, "source", kind) < 0)
        return -1;
    if (get_volume(out_obj, out, 1, "output", NULL) < 0) {
        PyBuffer_Release(src);
        return -1;
    }
    return 0;
}

/* Per axis: 0 outside, else 1 with the lower neighbour and the weight of the upper one. */
static inline int
axis_weight(double c, Py_ssize_t n, Py_ssize_t *low, double *w)
{
    if (c < -EDGE_TOLERANCE || c > (double)(n - 1) + EDGE_TOLERANCE)
        return 0;
    if (c < 0.0)
        c = 0.0;
    if (c > (double)(n - 1))
        c = (double)(n - 1);
    Py_ssize_t l = (Py_ssize_t)c;  /* c >= 0: truncation is floor, without a libm call */
    if (l > n - 2)
        l = n - 2 < 0 ? 0 : n - 2;
    *low = l;
    *w = c - (double)l;
    return 1;
}


/* The 8 neighbours from voxel p (offsets t0, t1, t2 along the input axes), weighted linearly
 * along input axis 2, then 1, then 0, in double: the arithmetic of scipy's order-1 spline. */
static inline __attribute__((always_inline)) float
mix8(const void *in, Py_ssize_t p, Py_ssize_t t0, Py_ssize_t t1, Py_ssize_t t2, double w0,
     double w1, double w2, const int kind)
{
#define AT(x) ((double)voxel(in, p + (x), kind))
    const double v00 = AT(0) + w2 * (AT(t2) - AT(0));
    const double v01 = AT(t1) + w2 * (AT(t1 + t2) - AT(t1));
    const double v10 = AT(t0) + w2 * (AT(t0 + t2) - AT(t0));
    const double v11 = AT(t0 + t1) + w2 * (AT(t0 + t1 + t2) - AT(t0 + t1));
#undef AT
    const double v0 = v00 + w1 * (v01 - v00);
    const double v1 = v10 + w1 * (v11 - v10);
    return (float)(v0 + w0 * (v1 - v0));
}

/* The oblique output point at input coordinates (c0, c1, c2): fill outside, else mix8. Inside
 * by more than the edge tolerance (the usual case), truncation is floor and both neighbours
 * exist along every axis. */
static inline __attribute__((always_inline)) float
oblique_point(const void *in, const Py_ssize_t n[3], const Py_ssize_t s[3], const Py_ssize_t t[3],
              const double top[3], double c0, double c1, double c2, float fill, const int kind)
{
    Py_ssize_t l0, l1, l2;
    double w0, w1, w2;
    if ((c0 >= 0.0) & (c0 < top[0]) & (c1 >= 0.0) & (c1 < top[1]) & (c2 >= 0.0) & (c2 < top[2])) {
        l0 = (int)c0; l1 = (int)c1; l2 = (int)c2;
        w0 = c0 - (double)l0; w1 = c1 - (double)l1; w2 = c2 - (double)l2;
    } else if (!axis_weight(c0, n[0], &l0, &w0) || !axis_weight(c1, n[1], &l1, &w1)
               || !axis_weight(c2, n[2], &l2, &w2)) {
        return fill;
    }
    return mix8(in, l0 * s[0] + l1 * s[1] + l2 * s[2], t[0], t[1], t[2], w0, w1, w2, kind);
}

#ifdef KERNELS_AVX512
/* A piece of an oblique output row, 8 points at a time: out[k] for k in [0, len), at input
 * coordinates b + mq * (k + k0). Runs of 8 points all well inside the input are done here
 * (returned as bits of the mask); the caller does the rest with oblique_point. The input
 * must be contiguous along axis `a` (s[a] == 1): each point's pairs of neighbours along it
 * are read as one word each (64 bits of float32, 32 bits of int16), four reads instead of
 * eight, and put in place in their vectors (measured faster than the gather instructions:
 * by 15 % for float32, 10 % for int16; offsets in int32: the caller checks they fit).
 * Coordinates, truncation, weights and the mix are the operations of oblique_point and mix8
 * in their order, in double, without fused multiply-add: the same bytes. */
__attribute__((target("avx512f,avx512vl"), always_inline))
static inline unsigned int
oblique_avx512_along(const void *in, const double b[3], const double mq[3], Py_ssize_t k0,
                     Py_ssize_t len, const double top[3], const int s[3], const int t[3],
                     const int a, const int kind, float *line)
{
    const int u = a == 0 ? 1 : 0, v = a == 2 ? 1 : 2;  /* the two other axes */
    const __m256i su = _mm256_set1_epi32(s[u]), sv = _mm256_set1_epi32(s[v]);
    const __m256i sa = _mm256_set1_epi32(s[a]);
    const Py_ssize_t item = kind == VOX_F32 ? 4 : 2;
    /* from a point's first neighbour, in bytes: one step along u, along v, along both */
    const Py_ssize_t off[4] = {0, item * t[u], item * t[v], item * (t[u] + t[v])};
    const __m512d iota = _mm512_set_pd(7.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0, 0.0);
    const __m512d zero = _mm512_setzero_pd();
    unsigned int done = 0;
    for (Py_ssize_t k = 0; k + 8 <= len; k += 8) {
        const __m512d kk = _mm512_add_pd(_mm512_set1_pd((double)(k + k0)), iota);
        __m512d c[3];
        __mmask8 inside = 0xFF;
        for (int ax = 0; ax < 3; ax++) {
            c[ax] = _mm512_add_pd(_mm512_set1_pd(b[ax]), _mm512_mul_pd(_mm512_set1_pd(mq[ax]), kk));
            inside &= _mm512_cmp_pd_mask(c[ax], zero, _CMP_GE_OQ)
                      & _mm512_cmp_pd_mask(c[ax], _mm512_set1_pd(top[ax]), _CMP_LT_OQ);
        }
        if (inside != 0xFF)
            continue;
        __m256i l[3];
        __m512d w[3];
        for (int ax = 0; ax < 3; ax++) {
            l[ax] = _mm512_cvttpd_epi32(c[ax]);
            w[ax] = _mm512_sub_pd(c[ax], _mm512_cvtepi32_pd(l[ax]));
        }
        const __m256i base = _mm256_add_epi32(
            _mm256_add_epi32(_mm256_mullo_epi32(l[0], a == 0 ? sa : (u == 0 ? su : sv)),
                             _mm256_mullo_epi32(l[1], a == 1 ? sa : (u == 1 ? su : sv))),
            _mm256_mullo_epi32(l[2], a == 2 ? sa : (u == 2 ? su : sv)));
        int32_t first[8];
        _mm256_storeu_si256((__m256i *)first, base);
        /* p[j]: neighbour (j >> 2, (j >> 1) & 1, j & 1) along input axes 0, 1, 2; the pair
         * of word g holds the neighbours (low, high along a) at step g & 1 along u and
         * g >> 1 along v. The two kinds of word fill vectors of their own width: 16-bit
         * pairs read into 64-bit lanes, as float32 pairs are, took 15 % longer. */
        __m512d p[8];
        if (kind == VOX_F32) {
            __m512i pair[4];
            for (int g = 0; g < 4; g++)
                pair[g] = _mm512_setzero_si512();
            for (int i = 0; i < 8; i++) {
                const char *at = (const char *)in + item * first[i];
                for (int g = 0; g < 4; g++) {
                    int64_t word;
                    memcpy(&word, at + off[g], 8);
                    pair[g] = _mm512_mask_set1_epi64(pair[g], (__mmask8)(1u << i), word);
                }
            }
            for (int j = 0; j < 8; j++) {
                const int step[3] = {j >> 2, (j >> 1) & 1, j & 1};
                const __m512i word = pair[step[u] | (step[v] << 1)];
                const __m512i half = step[a] ? _mm512_srli_epi64(word, 32) : word;
                p[j] = _mm512_cvtps_pd(_mm256_castsi256_ps(_mm512_cvtepi64_epi32(half)));
            }
        } else {
            __m256i pair[4];
            for (int g = 0; g < 4; g++)
                pair[g] = _mm256_setzero_si256();
            for (int i = 0; i < 8; i++) {
                const char *at = (const char *)in + item * first[i];
                for (int g = 0; g < 4; g++) {
                    int32_t word;
                    memcpy(&word, at + off[g], 4);
                    pair[g] = _mm256_mask_set1_epi32(pair[g], (__mmask8)(1u << i), word);
                }
            }
            for (int j = 0; j < 8; j++) {
                const int step[3] = {j >> 2, (j >> 1) & 1, j & 1};
                const __m256i word = pair[step[u] | (step[v] << 1)];
                __m256i value;  /* the low or high 16 bits, widened to int32 */
                if (kind == VOX_I16)
                    value = step[a] ? _mm256_srai_epi32(word, 16)
                                    : _mm256_srai_epi32(_mm256_slli_epi32(word, 16), 16);
                else
                    value = step[a] ? _mm256_srli_epi32(word, 16)
                                    : _mm256_and_si256(word, _mm256_set1_epi32(0xFFFF));
                p[j] = _mm512_cvtepi32_pd(value);
            }
        }
        const __m512d v00 = _mm512_add_pd(p[0], _mm512_mul_pd(w[2], _mm512_sub_pd(p[1], p[0])));
        const __m512d v01 = _mm512_add_pd(p[2], _mm512_mul_pd(w[2], _mm512_sub_pd(p[3], p[2])));
        const __m512d v10 = _mm512_add_pd(p[4], _mm512_mul_pd(w[2], _mm512_sub_pd(p[5], p[4])));
        const __m512d v11 = _mm512_add_pd(p[6], _mm512_mul_pd(w[2], _mm512_sub_pd(p[7], p[6])));
        const __m512d v0 = _mm512_add_pd(v00, _mm512_mul_pd(w[1], _mm512_sub_pd(v01, v00)));
        const __m512d v1 = _mm512_add_pd(v10, _mm512_mul_pd(w[1], _mm512_sub_pd(v11, v10)));
        const __m512d value = _mm512_add_pd(v0, _mm512_mul_pd(w[0], _mm512_sub_pd(v1, v0)));
        _mm256_storeu_ps(line + k, _mm512_cvtpd_ps(value));
        done |= 0xFFu << k;
    }
    return done;
}

/* oblique_avx512_along, compiled once for each voxel kind and axis of unit stride */
#define OBLIQUE_ALONG(kind)                                                                   \
    (a == 0 ? oblique_avx512_along(in, b, mq, k0, len, top, s, t, 0, kind, line)              \
     : a == 1 ? oblique_avx512_along(in, b, mq, k0, len, top, s, t, 1, kind, line)            \
     : oblique_avx512_along(in, b, mq, k0, len, top, s, t, 2, kind, line))
__attribute__((target("avx512f,avx512vl")))
static unsigned int
oblique_avx512(const void *in, const double b[3], const double mq[3], Py_ssize_t k0,
               Py_ssize_t len, const double top[3], const int s[3], const int t[3], int a,
               int kind, float *line)
{
    if (kind == VOX_I16)
        return OBLIQUE_ALONG(VOX_I16);
    if (kind == VOX_U16)
        return OBLIQUE_ALONG(VOX_U16);
    return OBLIQUE_ALONG(VOX_F32);
}
#undef OBLIQUE_ALONG
#endif

/* Ask for the input an output tile will read (its bounding box, inclusive output indices
 * lo..hi along each output axis) to be brought into the cache, line by line along the input's
 * axis of smallest stride: an oblique tile reads short pieces of many input lines, which the
 * hardware prefetchers do not foresee, and waits on each (memory latency, worst when the
 * other cores stream through the shared cache). Regions too big to be worth it are left. */
static void
prefetch_tile(const void *in, Py_ssize_t item, const Py_ssize_t n[3], const Py_ssize_t s[3],
              const double *m, const double *o, const Py_ssize_t lo[3], const Py_ssize_t hi[3])
{
    Py_ssize_t from[3], to[3];
    for (int a = 0; a < 3; a++) {
        double low = o[a], high = o[a];
        for (int c = 0; c < 3; c++) {
            const double u = m[3 * a + c] * (double)lo[c], v = m[3 * a + c] * (double)hi[c];
            low += u < v ? u : v;
            high += u < v ? v : u;
        }
        if (high < 0.0 || low > (double)(n[a] - 1))
            return;  /* all outside */
        from[a] = low > 0.0 ? (Py_ssize_t)low : 0;
        to[a] = high + 1.0 < (double)(n[a] - 1) ? (Py_ssize_t)high + 1 : n[a] - 1;
    }
    int f = 0;  /* the fast axis */
    for (int a = 1; a < 3; a++)
        if (llabs((long long)s[a]) < llabs((long long)s[f]))
            f = a;
    const int g = f == 0 ? 1 : 0, h = f == 2 ? 1 : 2;
    /* one prefetch per 64-byte cache line */
    const Py_ssize_t fs = llabs((long long)s[f]) * item, step = fs >= 64 ? 1 : 64 / (fs ? fs : 1);
    const Py_ssize_t lines = (to[g] - from[g] + 1) * (to[h] - from[h] + 1);
    if (lines * ((to[f] - from[f]) / step + 2) > 8192)
        return;
    for (Py_ssize_t i = from[g]; i <= to[g]; i++)
        for (Py_ssize_t j = from[h]; j <= to[h]; j++) {
            const char *line = (const char *)in + (i * s[g] + j * s[h]) * item;
            for (Py_ssize_t k = from[f]; k <= to[f]; k += step)
                __builtin_prefetch(line + k * s[f] * item, 0, 2);
            __builtin_prefetch(line + to[f] * s[f] * item, 0, 2);
        }
}

/* Axis-aligned grids (each output axis moves along one input axis: permuted, flipped, scaled).
 * perm[c] is the input axis of output axis c. Separable, in two passes per block of BLOCK
 * output indices along the innermost output axis (k) and ROWS along the outermost (i):
 *   1. the input lines along perm[2] are interpolated at the block's k, for every input
 *      position (u, v) along perm[0] and perm[1] that the block's i (and every j) reads,
 *      into P[u][v][k] (k contiguous);
 *   2. each output run out[i, j, k..k + BLOCK) is the bilinear mix (along perm[1], then
 *      perm[0]) of four contiguous runs of P, computed as vectors.
 * The input is read line by line and the output written in whole runs, whatever the two
 * grids' orientations. The arithmetic is float32, interpolating along perm[2], perm[1], then
 * perm[0]; every output index outside the input (more than 1e-6 voxel) gets fill. */
#ifndef BLOCK
#define BLOCK 32
#endif
#ifndef ROWS
#define ROWS 32
#endif

struct axis_table {
    Py_ssize_t *low;   /* lower neighbour (input index), 0 outside */
    float *w;          /* weight of the upper neighbour */
    Py_ssize_t first, end;  /* output indices inside the input: [first, end) */
};

static int
axis_table_make(struct axis_table *t, Py_ssize_t d, Py_ssize_t n, double m, double o)
{
    t->low = (Py_ssize_t *)PyMem_RawMalloc(sizeof(Py_ssize_t) * (size_t)(d > 0 ? d : 1));
    t->w = (float *)PyMem_RawMalloc(sizeof(float) * (size_t)(d > 0 ? d : 1));
    if (t->low == NULL || t->w == NULL)
        return -1;
    t->first = d;
    t->end = 0;
    for (Py_ssize_t x = 0; x < d; x++) {
        Py_ssize_t low = 0;
        double w = 0.0;
        if (axis_weight(m * x + o, n, &low, &w)) {
            /* linear in x: the inside indices are one interval */
            if (x < t->first)
                t->first = x;
            t->end = x + 1;
        }
        t->low[x] = low;
        t->w[x] = (float)w;
    }
    if (t->first >= t->end)
        t->first = t->end = 0;
    return 0;
}

static void
axis_table_free(struct axis_table *t)
{
    PyMem_RawFree(t->low);
    PyMem_RawFree(t->w);
}

/* the input indices that outputs [from, to) read along one axis: [*lo, *hi] (each output
 * reads low[x] and low[x] + step) */
static void
read_range(const Py_ssize_t *low, Py_ssize_t from, Py_ssize_t to, Py_ssize_t step,
           Py_ssize_t *lo, Py_ssize_t *hi)
{
    *lo = low[from];
    *hi = low[from] + step;
    for (Py_ssize_t x = from; x < to; x++) {
        if (low[x] < *lo) *lo = low[x];
        if (low[x] + step > *hi) *hi = low[x] + step;
    }
}

static inline __attribute__((always_inline)) int
trilinear_axes_of(const void *in, const Py_ssize_t *n, const Py_ssize_t *s, float *res,
                  const Py_ssize_t *d, const double *m, const double *o, const int *perm,
                  float fill, struct sample *smp, const int kind)
{
    const Py_ssize_t item = kind == VOX_F32 ? 4 : 2;
    struct axis_table tab[3] = {{NULL, NULL, 0, 0}, {NULL, NULL, 0, 0}, {NULL, NULL, 0, 0}};
    float *P = NULL;
    int failed = 0;
    for (int c = 0; c < 3 && !failed; c++)
        failed = axis_table_make(&tab[c], d[c], n[perm[c]], m[3 * perm[c] + c], o[perm[c]]) < 0;
    const Py_ssize_t total = d[0] * d[1] * d[2];
    const int A0 = perm[0], A1 = perm[1], A2 = perm[2];
    /* a single voxel along an input axis: both neighbours are that voxel */
    const Py_ssize_t du = n[A0] > 1, dv = n[A1] > 1, t2 = n[A2] > 1 ? s[A2] : 0;
    const Py_ssize_t i0 = tab[0].first, i1 = tab[0].end, j0 = tab[1].first, j1 = tab[1].end;
    const Py_ssize_t k0 = tab[2].first, k1 = tab[2].end;
    const int empty = i0 >= i1 || j0 >= j1 || k0 >= k1;
    /* the rows of P along perm[1]: every v that an inside j reads */
    Py_ssize_t vlo = 0, nv = 0, nu_max = 0;
    if (!failed && !empty) {
        Py_ssize_t vhi, ulo, uhi;
        read_range(tab[1].low, j0, j1, dv, &vlo, &vhi);
        nv = vhi - vlo + 1;
        for (Py_ssize_t ti = i0; ti < i1; ti += ROWS) {
            read_range(tab[0].low, ti, ti + ROWS < i1 ? ti + ROWS : i1, du, &ulo, &uhi);
            if (uhi - ulo + 1 > nu_max) nu_max = uhi - ulo + 1;
        }
        P = (float *)PyMem_RawMalloc(sizeof(float) * (size_t)(nu_max * nv * BLOCK));
        failed = P == NULL;
    }
    if (failed || empty) {
        if (!failed)
            for (Py_ssize_t x = 0; x < total; x++)
                res[x] = fill;
        goto done;
    }
    /* outside the inside box: fill */
    for (Py_ssize_t i = 0; i < d[0]; i++) {
        for (Py_ssize_t j = 0; j < d[1]; j++) {
            float *row = res + (i * d[1] + j) * d[2];
            if (i < i0 || i >= i1 || j < j0 || j >= j1) {
                for (Py_ssize_t k = 0; k < d[2]; k++)
                    row[k] = fill;
            } else {
                for (Py_ssize_t k = 0; k < k0; k++)
                    row[k] = fill;
                for (Py_ssize_t k = k1; k < d[2]; k++)
                    row[k] = fill;
            }
        }
    }
    for (Py_ssize_t ti = i0; ti < i1; ti += ROWS) {
        const Py_ssize_t ei = ti + ROWS < i1 ? ti + ROWS : i1;
        Py_ssize_t ulo, uhi;
        read_range(tab[0].low, ti, ei, du, &ulo, &uhi);
        for (Py_ssize_t tk = k0; tk < k1; tk += BLOCK) {
            const Py_ssize_t len = tk + BLOCK < k1 ? BLOCK : k1 - tk;
            const Py_ssize_t *zl = tab[2].low + tk;
            const float *zw = tab[2].w + tk;
            /* 1. along perm[2], for every (u, v) the tile reads; the input lines of a row
             * v + 2 ahead are asked for meanwhile (its first and last u: a line of u fits a
             * few cache lines when u is the contiguous axis), as the hardware does not
             * foresee reads one plane apart */
            for (Py_ssize_t v = vlo; v < vlo + nv; v++) {
                if (v + 2 < vlo + nv)
                    for (Py_ssize_t k = 0; k <= len; k++) {
                        const Py_ssize_t z = k < len ? zl[k] : zl[len - 1] + (t2 != 0);
                        const Py_ssize_t ahead = (v + 2) * s[A1] + z * s[A2];
                        __builtin_prefetch((const char *)in + (ahead + ulo * s[A0]) * item, 0, 2);
                        __builtin_prefetch((const char *)in + (ahead + uhi * s[A0]) * item, 0, 2);
                    }
                for (Py_ssize_t u = ulo; u <= uhi; u++) {
                    const Py_ssize_t line = u * s[A0] + v * s[A1];
                    float *p = P + ((u - ulo) * nv + (v - vlo)) * BLOCK;
                    for (Py_ssize_t k = 0; k < len; k++) {
                        const Py_ssize_t q = line + zl[k] * s[A2];
                        const float q0 = voxel(in, q, kind);
                        p[k] = q0 + zw[k] * (voxel(in, q + t2, kind) - q0);
                    }
                }
            }
            /* 2. along perm[1], then perm[0], a run of len outputs at a time */
            for (Py_ssize_t i = ti; i < ei; i++) {
                const float wx = tab[0].w[i];
                const float *pu = P + (tab[0].low[i] - ulo) * nv * BLOCK;
                const float *pu1 = pu + du * nv * BLOCK;
                for (Py_ssize_t j = j0; j < j1; j++) {
                    const float wy = tab[1].w[j];
                    const Py_ssize_t r = (tab[1].low[j] - vlo) * BLOCK, r1 = r + dv * BLOCK;
                    const float *a0 = pu + r, *a1 = pu + r1, *b0 = pu1 + r, *b1 = pu1 + r1;
                    float *out = res + (i * d[1] + j) * d[2] + tk;
                    for (Py_ssize_t k = 0; k < len; k++) {
                        const float a = a0[k] + wy * (a1[k] - a0[k]);
                        const float b = b0[k] + wy * (b1[k] - b0[k]);
                        out[k] = a + wx * (b - a);
                    }
                }
                /* once the runs of row i are written (read back at once, wide loads would
                 * wait on the stores still under way) */
                for (Py_ssize_t j = j0; smp != NULL && j < j1; j++)
                    sample_run(smp, res + (i * d[1] + j) * d[2], i, j, tk, tk + len);
            }
        }
    }
done:
    /* the even positions outside the box are fill: as many keys of it, when it is above */
    if (smp != NULL && !failed && fill > smp->limit) {
        const Py_ssize_t all = evens(0, d[0]) * evens(0, d[1]) * evens(0, d[2]);
        const Py_ssize_t box = empty ? 0 : evens(i0, i1) * evens(j0, j1) * evens(k0, k1);
        const uint32_t key = float_key(fill + 0.0f);
        for (Py_ssize_t x = 0; x < all - box; x++)
            smp->keys[smp->n++] = key;
    }
    PyMem_RawFree(P);
    for (int c = 0; c < 3; c++)
        axis_table_free(&tab[c]);
    return failed ? -1 : 0;
}

/* trilinear_axes_of for each voxel kind, each in versions for wider vectors */
#define TRILINEAR_AXES(name, kind)                                                            \
    KERNELS_CLONES static int                                                                 \
    name(const void *in, const Py_ssize_t *n, const Py_ssize_t *s, float *res,                \
         const Py_ssize_t *d, const double *m, const double *o, const int *perm, float fill,  \
         struct sample *smp)                                                                  \
    {                                                                                         \
        return trilinear_axes_of(in, n, s, res, d, m, o, perm, fill, smp, kind);              \
    }
TRILINEAR_AXES(trilinear_axes_f32, VOX_F32)
TRILINEAR_AXES(trilinear_axes_i16, VOX_I16)
TRILINEAR_AXES(trilinear_axes_u16, VOX_U16)
#undef TRILINEAR_AXES

/* Oblique grids, in tiles of the output: the input a tile reads (about (TILE + 1)^3 voxels)
 * stays in the cache whatever the orientations of the two grids, so each input line is
 * fetched once. The innermost loop runs along the output's rows (contiguous writes): measured
 * faster than along the input's memory order with strided writes. vector: the AVX-512 code
 * may run, along input axis `along` (of unit stride). */
static inline __attribute__((always_inline)) void
trilinear_oblique_of(const void *in, const Py_ssize_t n[3], const Py_ssize_t s[3], float *res,
                     const Py_ssize_t d[3], const double *m, const double *o, float fill,
                     struct sample *smp, int vector, int along, const int kind)
{
    const Py_ssize_t item = kind == VOX_F32 ? 4 : 2;
    const Py_ssize_t ostride[3] = {d[1] * d[2], d[2], 1};
    const int q = 2;
    const int P = q == 0 ? 1 : 0, R = q == 2 ? 1 : 2;  /* the outer and middle axes */
    /* a single voxel along an axis: both neighbours are that voxel */
    const Py_ssize_t t[3] = {n[0] > 1 ? s[0] : 0, n[1] > 1 ? s[1] : 0, n[2] > 1 ? s[2] : 0};
    /* below these, the lower neighbour is at most n - 2 and both neighbours exist */
    const double top[3] = {(double)(n[0] - 1), (double)(n[1] - 1), (double)(n[2] - 1)};
#ifdef KERNELS_AVX512
    const double mq[3] = {m[q], m[3 + q], m[6 + q]};  /* one step along q, for the vector code */
    const int s32[3] = {(int)s[0], (int)s[1], (int)s[2]};
    const int t32[3] = {(int)t[0], (int)t[1], (int)t[2]};
#else
    (void)vector;
    (void)along;
#endif
    for (Py_ssize_t tp = 0; tp < d[P]; tp += TILE)
    for (Py_ssize_t tr = 0; tr < d[R]; tr += TILE)
    for (Py_ssize_t tq = 0; tq < d[q]; tq += TILE) {
        const Py_ssize_t ep = tp + TILE < d[P] ? tp + TILE : d[P];
        const Py_ssize_t er = tr + TILE < d[R] ? tr + TILE : d[R];
        const Py_ssize_t len = tq + TILE < d[q] ? TILE : d[q] - tq;
        {   /* the next tile's input, while this one is computed */
            Py_ssize_t next[3];
            next[P] = tp;
            next[R] = tr;
            next[q] = tq + TILE;
            if (next[q] >= d[q]) {
                next[q] = 0;
                next[R] += TILE;
                if (next[R] >= d[R]) {
                    next[R] = 0;
                    next[P] += TILE;
                }
            }
            if (next[P] < d[P]) {
                Py_ssize_t last[3];
                for (int c = 0; c < 3; c++)
                    last[c] = (next[c] + TILE < d[c] ? next[c] + TILE : d[c]) - 1;
                prefetch_tile(in, item, n, s, m, o, next, last);
            }
        }
        for (Py_ssize_t x = tp; x < ep; x++) {
            for (Py_ssize_t y = tr; y < er; y++) {
                /* input coordinates at (x, y) and index 0 along q; each step adds column q */
                const double b0 = m[P] * x + m[R] * y + o[0];
                const double b1 = m[3 + P] * x + m[3 + R] * y + o[1];
                const double b2 = m[6 + P] * x + m[6 + R] * y + o[2];
                float *line = res + x * ostride[P] + y * ostride[R] + tq * ostride[q];
                const Py_ssize_t step = ostride[q];
#ifdef KERNELS_AVX512
                if (vector) {
                    const double b[3] = {b0, b1, b2};
                    const unsigned int done = oblique_avx512(in, b, mq, tq, len, top, s32, t32,
                                                             along, kind, line);
                    for (Py_ssize_t k = 0; k < len; k++)
                        if (!(done >> k & 1u))
                            line[k * step] = oblique_point(in, n, s, t, top, b0 + m[q] * (k + tq),
                                                           b1 + m[3 + q] * (k + tq),
                                                           b2 + m[6 + q] * (k + tq), fill, kind);
                    continue;
                }
#endif
                /* first the coordinates of the piece, then the neighbours: the arithmetic of
                 * oblique_point */
                double cw[3][TILE];
                int ci[3][TILE], inside[TILE];
                for (Py_ssize_t k = 0; k < len; k++) {
                    const double c0 = b0 + m[q] * (k + tq), c1 = b1 + m[3 + q] * (k + tq);
                    const double c2 = b2 + m[6 + q] * (k + tq);
                    inside[k] = (c0 >= 0.0) & (c0 < top[0]) & (c1 >= 0.0) & (c1 < top[1])
                                & (c2 >= 0.0) & (c2 < top[2]);
                    ci[0][k] = inside[k] ? (int)c0 : 0;
                    ci[1][k] = inside[k] ? (int)c1 : 0;
                    ci[2][k] = inside[k] ? (int)c2 : 0;
                    cw[0][k] = c0 - ci[0][k];
                    cw[1][k] = c1 - ci[1][k];
                    cw[2][k] = c2 - ci[2][k];
                }
                for (Py_ssize_t k = 0; k < len; k++) {
                    if (inside[k])
                        line[k * step] = mix8(in, ci[0][k] * s[0] + ci[1][k] * s[1]
                                              + ci[2][k] * s[2], t[0], t[1], t[2], cw[0][k],
                                              cw[1][k], cw[2][k], kind);
                    else
                        line[k * step] = oblique_point(in, n, s, t, top, b0 + m[q] * (k + tq),
                                                       b1 + m[3 + q] * (k + tq),
                                                       b2 + m[6 + q] * (k + tq), fill, kind);
                }
            }
            /* the pieces of row x, once written (as in trilinear_axes) */
            for (Py_ssize_t y = tr; smp != NULL && y < er; y++)
                sample_run(smp, res + x * ostride[P] + y * ostride[R], x, y, tq, tq + len);
        }
    }
}

/* trilinear_oblique_of for each voxel kind */
#define TRILINEAR_OBLIQUE(name, kind)                                                         \
    static void                                                                               \
    name(const void *in, const Py_ssize_t n[3], const Py_ssize_t s[3], float *res,            \
         const Py_ssize_t d[3], const double *m, const double *o, float fill,                 \
         struct sample *smp, int vector, int along)                                           \
    {                                                                                         \
        trilinear_oblique_of(in, n, s, res, d, m, o, fill, smp, vector, along, kind);         \
    }
TRILINEAR_OBLIQUE(trilinear_oblique_f32, VOX_F32)
TRILINEAR_OBLIQUE(trilinear_oblique_i16, VOX_I16)
TRILINEAR_OBLIQUE(trilinear_oblique_u16, VOX_U16)
#undef TRILINEAR_OBLIQUE

static PyObject *
trilinear(PyObject *self, PyObject *args)
{
    PyObject *src_obj, *out_obj, *keys_obj = Py_None;
    double m[9], o[3], cval, limit = 0.0;
    if (!PyArg_ParseTuple(args, "OO(ddddddddd)(ddd)d|Od", &src_obj, &out_obj,
                          &m[0], &m[1], &m[2], &m[3], &m[4], &m[5], &m[6], &m[7], &m[8],
                          &o[0], &o[1], &o[2], &cval, &keys_obj, &limit))
        return NULL;
    Py_buffer src, out, keys = {0};
    int kind;
    if (get_source_output(src_obj, &src, &kind, out_obj, &out) < 0)
        return NULL;
    struct sample sampling = {NULL, 0, (float)limit}, *smp = NULL;
    if (keys_obj != Py_None) {
        const Py_ssize_t even = ((out.shape[0] + 1) / 2) * ((out.shape[1] + 1) / 2)
                                * ((out.shape[2] + 1) / 2);
        if (PyObject_GetBuffer(keys_obj, &keys, PyBUF_FORMAT | PyBUF_C_CONTIGUOUS
                               | PyBUF_WRITABLE) < 0) {
            PyBuffer_Release(&src);
            PyBuffer_Release(&out);
            return NULL;
        }
        if (keys.itemsize != 4 || strcmp(keys.format, "I") != 0 || keys.len / 4 < even) {
            PyBuffer_Release(&keys);
            PyBuffer_Release(&src);
            PyBuffer_Release(&out);
            PyErr_SetString(PyExc_ValueError, "keys: a uint32 array with room for every even "
                            "position of the output is needed");
            return NULL;
        }
        sampling.keys = (uint32_t *)keys.buf;
        smp = &sampling;
    }
    const void *in = src.buf;
    float *res = (float *)out.buf;
    const Py_ssize_t n[3] = {src.shape[0], src.shape[1], src.shape[2]};
    const Py_ssize_t s[3] = {src.strides[0] / src.itemsize, src.strides[1] / src.itemsize,
                             src.strides[2] / src.itemsize};
    const Py_ssize_t d[3] = {out.shape[0], out.shape[1], out.shape[2]};
    const float fill = (float)cval;

    vector_check();
    /* axis-aligned when every row and column of m has a single nonzero entry */
    int perm[3] = {-1, -1, -1}, aligned = 1;
    for (int c = 0; c < 3; c++) {
        int count = 0;
        for (int a = 0; a < 3; a++)
            if (m[3 * a + c] != 0.0) {
                perm[c] = a;
                count++;
            }
        aligned &= count == 1;
    }
    aligned &= perm[0] != perm[1] && perm[1] != perm[2] && perm[0] != perm[2];
    int failed = 0;
    if (aligned) {
        Py_BEGIN_ALLOW_THREADS
        failed = (kind == VOX_I16 ? trilinear_axes_i16 : kind == VOX_U16 ? trilinear_axes_u16
                  : trilinear_axes_f32)(in, n, s, res, d, m, o, perm, fill, smp);
        Py_END_ALLOW_THREADS
    } else {
        /* the vector code fetches pairs along an axis of unit stride, with int32 offsets */
        int along = -1, vector = 0;
#ifdef KERNELS_AVX512
        for (int ax = 2; ax >= 0; ax--)
            if (s[ax] == 1 && n[ax] > 1)
                along = ax;
        double reach = 0.0;
        for (int ax = 0; ax < 3; ax++)
            reach += (double)(n[ax] - 1) * fabs((double)s[ax]);
        vector = use_avx512 == 1 && along >= 0 && reach < 2147483647.0;
#endif
        Py_BEGIN_ALLOW_THREADS
        (kind == VOX_I16 ? trilinear_oblique_i16 : kind == VOX_U16 ? trilinear_oblique_u16
         : trilinear_oblique_f32)(in, n, s, res, d, m, o, fill, smp, vector, along);
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&src);
    PyBuffer_Release(&out);
    if (smp != NULL)
        PyBuffer_Release(&keys);
    if (failed)
        return PyErr_NoMemory();
    if (smp != NULL)
        return PyLong_FromSsize_t(sampling.n);
    Py_RETURN_NONE;
}

/* target[c] += the float sum of line[k c .. k c + k), in that order: the arithmetic of the
 * general loop of block_sums, written for a constant k so that the compiler vectorises it */
KERNELS_CLONES
static void
sum_line3(const float *restrict line, double *restrict target, Py_ssize_t n)
{
    for (Py_ssize_t c = 0; c < n; c++)
        target[c] += (double)(0.0f + line[3 * c] + line[3 * c + 1] + line[3 * c + 2]);
}

static void
sum_line2(const float *restrict line, double *restrict target, Py_ssize_t n)
{
    for (Py_ssize_t c = 0; c < n; c++)
        target[c] += (double)(0.0f + line[2 * c] + line[2 * c + 1]);
}

static PyObject *
block_sums(PyObject *self, PyObject *args)
{
    PyObject *src_obj, *out_obj;
    Py_ssize_t st[3];
    if (!PyArg_ParseTuple(args, "OO(nnn)", &src_obj, &out_obj, &st[0], &st[1], &st[2]))
        return NULL;
    Py_buffer src, out;
    if (get_source_output(src_obj, &src, NULL, out_obj, &out) < 0)
        return NULL;
    for (int a = 0; a < 3; a++) {
        if (st[a] < 1 || out.shape[a] * st[a] > src.shape[a]) {
            PyBuffer_Release(&src);
            PyBuffer_Release(&out);
            PyErr_SetString(PyExc_ValueError, "blocks do not fit in the source");
            return NULL;
        }
    }
    const float *in = (const float *)src.buf;
    float *res = (float *)out.buf;
    const Py_ssize_t s[3] = {src.strides[0] / 4, src.strides[1] / 4, src.strides[2] / 4};
    const Py_ssize_t d[3] = {out.shape[0], out.shape[1], out.shape[2]};
    /* walk the source in its memory order: the axis of the smallest stride innermost */
    int order[3] = {0, 1, 2};
    for (int a = 0; a < 3; a++)
        for (int b = a + 1; b < 3; b++)
            if (llabs((long long)s[order[b]]) > llabs((long long)s[order[a]])) {
                int t = order[a]; order[a] = order[b]; order[b] = t;
            }
    const int A = order[0], B = order[1], C = order[2];  /* outer, middle, inner */
    const Py_ssize_t out_stride[3] = {d[1] * d[2], d[2], 1};
    /* the sums accumulate in the source's order (C innermost), then go to the output's */
    double *acc = (double *)PyMem_RawCalloc((size_t)(d[0] * d[1] * d[2]), sizeof(double));
    if (acc == NULL) {
        PyBuffer_Release(&src);
        PyBuffer_Release(&out);
        return PyErr_NoMemory();
    }

    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t a = 0; a < d[A] * st[A]; a++) {
        for (Py_ssize_t b = 0; b < d[B] * st[B]; b++) {
            const float *line = in + a * s[A] + b * s[B];
            double *target = acc + ((a / st[A]) * d[B] + b / st[B]) * d[C];
            if (s[C] == 1 && st[C] == 3)  /* the usual case (1 to 1.5 mm voxels): vectorised */
                sum_line3(line, target, d[C]);
            else if (s[C] == 1 && st[C] == 2)
                sum_line2(line, target, d[C]);
            else
                for (Py_ssize_t c = 0; c < d[C]; c++) {
                    const float *q = line + c * st[C] * s[C];
                    float sum = 0.0f;
                    for (Py_ssize_t e = 0; e < st[C]; e++)
                        sum += q[e * s[C]];
                    target[c] += sum;
                }
        }
    }
    for (Py_ssize_t a = 0; a < d[A]; a++)
        for (Py_ssize_t b = 0; b < d[B]; b++)
            for (Py_ssize_t c = 0; c < d[C]; c++)
                res[a * out_stride[A] + b * out_stride[B] + c * out_stride[C]] =
                    (float)acc[(a * d[B] + b) * d[C] + c];
    Py_END_ALLOW_THREADS

    PyMem_RawFree(acc);
    PyBuffer_Release(&src);
    PyBuffer_Release(&out);
    Py_RETURN_NONE;
}

/* element by element, so any vector width gives the same floats */
KERNELS_CLONES
static void
shift_scale_run(float *v, Py_ssize_t n, float shift, float scale, int clip, float low, float high)
{
    if (clip) {
        for (Py_ssize_t x = 0; x < n; x++) {
            const float y = (v[x] - shift) / scale;
            v[x] = y < low ? low : (y > high ? high : y);
        }
    } else {
        for (Py_ssize_t x = 0; x < n; x++)
            v[x] = (v[x] - shift) / scale;
    }
}

static PyObject *
shift_scale(PyObject *self, PyObject *args)
{
    PyObject *obj;
    float shift, scale, low, high;
    if (!PyArg_ParseTuple(args, "Offff", &obj, &shift, &scale, &low, &high))
        return NULL;
    Py_buffer view;
    if (get_volume(obj, &view, 1, "volume", NULL) < 0)
        return NULL;
    float *v = (float *)view.buf;
    const Py_ssize_t n = view.len / 4;
    const int clip = !isnan(low) && !isnan(high);
    Py_BEGIN_ALLOW_THREADS
    shift_scale_run(v, n, shift, scale, clip, low, high);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&view);
    Py_RETURN_NONE;
}

/* Order statistics by radix selection on the keys of float_key (11, 11, then 10 bits at a
 * time: each histogram stays in the L1 cache). */
static const int key_shift[3] = {21, 10, 0};
static const uint32_t key_bins[3] = {2048, 2048, 1024};

/* The r-th smallest (from 0) of keys[0, n), all of which share `prefix` in the digits before
 * `level`; scratch holds n keys. */
static uint32_t
select_key(const uint32_t *keys, Py_ssize_t n, Py_ssize_t r, uint32_t *scratch, int level,
           uint32_t prefix, uint32_t mask)
{
    Py_ssize_t counts[2048];
    const uint32_t *from = keys;
    for (; level < 3; level++) {
        const uint32_t top = key_bins[level] - 1;
        memset(counts, 0, key_bins[level] * sizeof counts[0]);
        for (Py_ssize_t i = 0; i < n; i++)
            counts[(from[i] >> key_shift[level]) & top]++;
        uint32_t b = 0;
        while (r >= counts[b]) {
            r -= counts[b];
            b++;
        }
        prefix |= b << key_shift[level];
        mask |= top << key_shift[level];
        if (level == 2)
            break;
        Py_ssize_t kept = 0;  /* the keys that share the prefix (in place once in scratch) */
        for (Py_ssize_t i = 0; i < n; i++)
            if ((from[i] & mask) == prefix)
                scratch[kept++] = from[i];
        from = scratch;
        n = kept;
    }
    return prefix;
}

/* found[i] = the ranks[i]-th smallest of keys[0, n), for nr <= 8 ranks. The first digits are
 * counted in one pass, and the keys of the first digits wanted gathered in another (into room
 * for them alone); the rest is done on those. Returns -1 when that room cannot be had. */
static int
select_ranks(const uint32_t *keys, Py_ssize_t n, const Py_ssize_t *ranks, int nr,
             uint32_t *found)
{
    Py_ssize_t counts[2048] = {0}, rest[8], offset[2048];
    uint32_t bin[8];
    for (Py_ssize_t i = 0; i < n; i++)
        counts[keys[i] >> key_shift[0]]++;
    for (int i = 0; i < nr; i++) {
        Py_ssize_t r = ranks[i];
        uint32_t b = 0;
        while (r >= counts[b]) {
            r -= counts[b];
            b++;
        }
        bin[i] = b;
        rest[i] = r;
    }
    /* where each wanted first digit's keys go in scratch (-1: not wanted) */
    for (int b = 0; b < 2048; b++)
        offset[b] = -1;
    Py_ssize_t used = 0, largest = 0;
    for (int i = 0; i < nr; i++)
        if (offset[bin[i]] < 0) {
            offset[bin[i]] = used;
            used += counts[bin[i]];
            largest = counts[bin[i]] > largest ? counts[bin[i]] : largest;
        }
    uint32_t *scratch = (uint32_t *)PyMem_RawMalloc((size_t)(used + largest + 1) * sizeof(uint32_t));
    if (scratch == NULL)
        return -1;
    Py_ssize_t fill[2048];
    memcpy(fill, offset, sizeof fill);
    for (Py_ssize_t i = 0; i < n; i++) {
        const uint32_t b = keys[i] >> key_shift[0];
        if (offset[b] >= 0)
            scratch[fill[b]++] = keys[i];
    }
    uint32_t *work = scratch + used;
    for (int i = 0; i < nr; i++)
        found[i] = select_key(scratch + offset[bin[i]], counts[bin[i]], rest[i], work, 1,
                              bin[i] << key_shift[0], (key_bins[0] - 1) << key_shift[0]);
    PyMem_RawFree(scratch);
    return 0;
}

/* values[i] = numpy's percentile q[i] (a fraction, method "linear") of keys[0, n) (n > 0),
 * interpolated in numpy's precision: float64, or float32 as for one Python float (weak).
 * Returns -1 when room for the selection cannot be had. */
static int
key_percentiles(const uint32_t *keys, Py_ssize_t n, const double *q, Py_ssize_t nq, int weak,
                double *values)
{
    for (Py_ssize_t i0 = 0; i0 < nq; i0 += 4) {  /* 4 percents (8 ranks) at a time */
        const int count = nq - i0 < 4 ? (int)(nq - i0) : 4;
        Py_ssize_t ranks[8];
        double gamma[4];
        for (int i = 0; i < count; i++) {
            const double virtual = (double)(n - 1) * q[i0 + i];
            Py_ssize_t lo, hi, index;  /* index: numpy's clamped lower index, -1 for the last */
            if (virtual >= (double)(n - 1)) {
                lo = hi = n - 1;
                index = -1;
            } else if (virtual < 0.0) {
                lo = hi = index = 0;
            } else {
                lo = index = (Py_ssize_t)floor(virtual);
                hi = lo + 1;
            }
            gamma[i] = virtual - (double)index;  /* any value when both ends are equal */
            ranks[2 * i] = lo;
            ranks[2 * i + 1] = hi;
        }
        uint32_t found[8];
        if (select_ranks(keys, n, ranks, 2 * count, found) < 0)
            return -1;
        for (int i = 0; i < count; i++) {
            const float x = key_float(found[2 * i]), y = key_float(found[2 * i + 1]);
            const float diff = y - x;
            const double g = gamma[i];
            if (weak) {
                float r = x + diff * (float)g;
                if (g >= 0.5)
                    r = y - diff * (float)(1.0 - g);
                values[i0 + i] = r;
            } else {
                values[i0 + i] = g >= 0.5 ? (double)y - (double)diff * (1.0 - g)
                                          : (double)x + (double)diff * g;
            }
        }
    }
    return 0;
}

/* The percents of a Python sequence as fractions, in q[0, nq), with room for as many values
 * after them (q + nq); NULL with the error set. */
static double *
read_percents(PyObject *obj, Py_ssize_t *nq)
{
    PyObject *qs = PySequence_Fast(obj, "percents must be a sequence");
    if (qs == NULL)
        return NULL;
    *nq = PySequence_Fast_GET_SIZE(qs);
    double *q = (double *)PyMem_Malloc((size_t)(*nq ? 2 * *nq : 2) * sizeof(double));
    if (q == NULL) {
        Py_DECREF(qs);
        PyErr_NoMemory();
        return NULL;
    }
    for (Py_ssize_t i = 0; i < *nq; i++) {
        q[i] = PyFloat_AsDouble(PySequence_Fast_GET_ITEM(qs, i)) / 100.0;
        if (q[i] == -1.0 / 100.0 && PyErr_Occurred()) {
            PyMem_Free(q);
            Py_DECREF(qs);
            return NULL;
        }
    }
    Py_DECREF(qs);
    return q;
}

/* A tuple of count floats: values, or NaN for all of them when nan. */
static PyObject *
float_tuple(const double *values, Py_ssize_t count, int nan)
{
    PyObject *result = PyTuple_New(count);
    for (Py_ssize_t i = 0; result != NULL && i < count; i++) {
        PyObject *v = PyFloat_FromDouble(nan ? Py_NAN : values[i]);
        if (v == NULL)
            Py_CLEAR(result);
        else
            PyTuple_SET_ITEM(result, i, v);
    }
    return result;
}

/* percentiles(source, steps3, above, percents, weak) -> (n, values): numpy's percentile
 * (method "linear") of source[::s0, ::s1, ::s2], over the values > above only (NaN: all of
 * them; then a NaN among them gives NaN). The interpolation is numpy's, in its precision:
 * float64 for a sequence of percents (weak = 0), float32 as for a single Python float
 * (weak = 1). `above` is compared in float32, as numpy compares a float32 array with a
 * Python float. -0.0 counts as 0.0. n == 0: no values. An int16 or uint16 source counts as
 * its float32 values. */
static PyObject *
percentiles(PyObject *self, PyObject *args)
{
    PyObject *src_obj, *q_obj;
    Py_ssize_t st[3];
    double above;
    int weak;
    if (!PyArg_ParseTuple(args, "O(nnn)dOp", &src_obj, &st[0], &st[1], &st[2], &above, &q_obj,
                          &weak))
        return NULL;
    Py_ssize_t nq;
    double *q = read_percents(q_obj, &nq);
    if (q == NULL)
        return NULL;
    double *values = q + nq;
    Py_buffer src;
    int kind;
    if (get_volume(src_obj, &src, 0, "source", &kind) < 0) {
        PyMem_Free(q);
        return NULL;
    }
    Py_ssize_t m[3], total = 1;
    for (int a = 0; a < 3; a++) {
        if (st[a] < 1) {
            PyBuffer_Release(&src);
            PyMem_Free(q);
            PyErr_SetString(PyExc_ValueError, "steps must be at least 1");
            return NULL;
        }
        m[a] = (src.shape[a] + st[a] - 1) / st[a];
        total *= m[a];
    }
    uint32_t *keys = (uint32_t *)PyMem_RawMalloc((size_t)(total ? total : 1) * sizeof(uint32_t));
    if (keys == NULL) {
        PyBuffer_Release(&src);
        PyMem_Free(q);
        return PyErr_NoMemory();
    }
    const void *in = src.buf;
    const Py_ssize_t item = src.itemsize;
    const Py_ssize_t s[3] = {src.strides[0] / item * st[0], src.strides[1] / item * st[1],
                             src.strides[2] / item * st[2]};
    /* walk the source in its memory order: the axis of the smallest stride innermost */
    int order[3] = {0, 1, 2};
    for (int a = 0; a < 3; a++)
        for (int b = a + 1; b < 3; b++)
            if (llabs((long long)s[order[b]]) > llabs((long long)s[order[a]])) {
                int t = order[a]; order[a] = order[b]; order[b] = t;
            }
    const int A = order[0], B = order[1], C = order[2];
    const int all = isnan(above);
    const float limit = all ? 0.0f : (float)above;  /* compared in float32, as numpy does */
    Py_ssize_t n = 0;
    int nan_seen = 0, failed = 0;

    Py_BEGIN_ALLOW_THREADS
    /* a sampled line of few cache lines (every other row of every other plane): the next
     * line's are asked for ahead, as the hardware does not follow the jumps between lines */
    const Py_ssize_t span = (m[C] - 1) * s[C], reach = span < 0 ? -span : span;
    const int ahead = reach <= 4096;
    for (Py_ssize_t a = 0; a < m[A]; a++)
        for (Py_ssize_t b = 0; b < m[B]; b++) {
            const Py_ssize_t line = a * s[A] + b * s[B];
            if (ahead) {
                const Py_ssize_t next = b + 1 < m[B] ? line + s[B] : (a + 1) * s[A];
                if (b + 1 < m[B] || a + 1 < m[A])
                    for (Py_ssize_t x = 0; x <= reach; x += 64 / item)
                        __builtin_prefetch((const char *)in
                                           + (next + (span < 0 ? -x : x)) * item, 0, 2);
            }
            for (Py_ssize_t c = 0; c < m[C]; c++) {
                const float v = voxel(in, line + c * s[C], kind);
                /* written always, kept (counted) when wanted: no branch to mispredict */
                keys[n] = float_key(v + 0.0f);
                if (all) {
                    nan_seen |= isnan(v);
                    n++;
                } else {
                    n += v > limit;
                }
            }
        }
    if (!nan_seen && n > 0)
        failed = key_percentiles(keys, n, q, nq, weak, values) < 0;
    Py_END_ALLOW_THREADS

    PyMem_RawFree(keys);
    PyBuffer_Release(&src);
    PyObject *result = failed ? PyErr_NoMemory() : float_tuple(values, n > 0 ? nq : 0, nan_seen);
    PyMem_Free(q);
    return result == NULL ? NULL : Py_BuildValue("(nN)", n, result);
}

/* head_mask(volume, threshold, mask) -> n: the connected components (6-connectivity) of
 * volume > threshold (compared in float32); mask = the largest (the first in C order among
 * equals) with its holes filled: every voxel but the background that reaches the border.
 * n = the number of components (0: mask left as it was). scipy's label and
 * binary_fill_holes, in two breadth-first passes. */
static PyObject *
head_mask(PyObject *self, PyObject *args)
{
    PyObject *src_obj, *mask_obj;
    double threshold;
    if (!PyArg_ParseTuple(args, "OdO", &src_obj, &threshold, &mask_obj))
        return NULL;
    Py_buffer src, mask;
    if (PyObject_GetBuffer(src_obj, &src, PyBUF_FORMAT | PyBUF_C_CONTIGUOUS) < 0)
        return NULL;
    if (PyObject_GetBuffer(mask_obj, &mask, PyBUF_FORMAT | PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE) < 0) {
        PyBuffer_Release(&src);
        return NULL;
    }
    if (src.ndim != 3 || src.itemsize != 4 || strcmp(src.format, "f") != 0 || mask.ndim != 3
        || mask.itemsize != 1 || (strcmp(mask.format, "B") != 0 && strcmp(mask.format, "?") != 0)
        || mask.shape[0] != src.shape[0] || mask.shape[1] != src.shape[1]
        || mask.shape[2] != src.shape[2]) {
        PyBuffer_Release(&src);
        PyBuffer_Release(&mask);
        PyErr_SetString(PyExc_ValueError, "a C-contiguous 3-D float32 volume and a uint8 or "
                        "bool mask of its shape are needed");
        return NULL;
    }
    const Py_ssize_t d0 = src.shape[0], d1 = src.shape[1], d2 = src.shape[2];
    const float *v = (const float *)src.buf;
    unsigned char *out = (unsigned char *)mask.buf;
    const float limit = (float)threshold;
    /* the work runs on a copy padded with a shell of one voxel, never foreground and marked
     * outside from the start: no neighbour needs a bounds check */
    const Py_ssize_t p1 = d1 + 2, p2 = d2 + 2, padded = (d0 + 2) * p1 * p2;
    if (padded > INT32_MAX) {
        PyBuffer_Release(&src);
        PyBuffer_Release(&mask);
        PyErr_SetString(PyExc_ValueError, "volume too big");
        return NULL;
    }
    int32_t *label = (int32_t *)PyMem_RawMalloc((size_t)padded * sizeof(int32_t));
    int32_t *queue = (int32_t *)PyMem_RawMalloc((size_t)padded * sizeof(int32_t));
    if (label == NULL || queue == NULL) {
        PyMem_RawFree(label);
        PyMem_RawFree(queue);
        PyBuffer_Release(&src);
        PyBuffer_Release(&mask);
        return PyErr_NoMemory();
    }
    const int32_t SHELL = -1, BACK = -2;  /* label: -2 background, 0 foreground not yet seen */
    const Py_ssize_t near[6] = {-p1 * p2, p1 * p2, -p2, p2, -1, 1};
    int32_t n = 0, best = 0;
    Py_ssize_t best_size = 0;

    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < padded; i++)
        label[i] = SHELL;
    for (Py_ssize_t a = 0; a < d0; a++)
        for (Py_ssize_t b = 0; b < d1; b++) {
            const float *line = v + (a * d1 + b) * d2;
            int32_t *row = label + ((a + 1) * p1 + b + 1) * p2 + 1;
            for (Py_ssize_t c = 0; c < d2; c++)
                row[c] = line[c] > limit ? 0 : BACK;
        }
    /* 1. the components of the foreground, each by a breadth-first walk from its first voxel */
    for (Py_ssize_t a = 0; a < d0; a++)
        for (Py_ssize_t b = 0; b < d1; b++)
            for (Py_ssize_t c = 0; c < d2; c++) {
                const Py_ssize_t i = ((a + 1) * p1 + b + 1) * p2 + c + 1;
                if (label[i] != 0)
                    continue;
                n++;
                Py_ssize_t head = 0, tail = 0;
                label[i] = n;
                queue[tail++] = (int32_t)i;
                while (head < tail) {
                    const Py_ssize_t at = queue[head++];
                    for (int k = 0; k < 6; k++)
                        if (label[at + near[k]] == 0) {
                            label[at + near[k]] = n;
                            queue[tail++] = (int32_t)(at + near[k]);
                        }
                }
                if (tail > best_size) {
                    best_size = tail;
                    best = n;
                }
            }
    /* 2. what is not the largest component and reaches the border: outside (SHELL) */
    if (n > 0) {
        Py_ssize_t head = 0, tail = 0;
        for (Py_ssize_t a = 0; a < d0; a++)
            for (Py_ssize_t b = 0; b < d1; b++)
                for (Py_ssize_t c = 0; c < d2; c++) {
                    const int border = a == 0 || a == d0 - 1 || b == 0 || b == d1 - 1 || c == 0
                                       || c == d2 - 1;
                    if (!border) {  /* inside an inner line: on to its last voxel */
                        c = d2 - 2;
                        continue;
                    }
                    const Py_ssize_t i = ((a + 1) * p1 + b + 1) * p2 + c + 1;
                    if (label[i] != best) {
                        label[i] = SHELL;
                        queue[tail++] = (int32_t)i;
                    }
                }
        while (head < tail) {
            const Py_ssize_t at = queue[head++];
            for (int k = 0; k < 6; k++) {
                const int32_t l = label[at + near[k]];
                if (l != best && l != SHELL) {
                    label[at + near[k]] = SHELL;
                    queue[tail++] = (int32_t)(at + near[k]);
                }
            }
        }
        for (Py_ssize_t a = 0; a < d0; a++)
            for (Py_ssize_t b = 0; b < d1; b++) {
                const int32_t *row = label + ((a + 1) * p1 + b + 1) * p2 + 1;
                unsigned char *line = out + (a * d1 + b) * d2;
                for (Py_ssize_t c = 0; c < d2; c++)
                    line[c] = row[c] != SHELL;
            }
    }
    Py_END_ALLOW_THREADS

    PyMem_RawFree(label);
    PyMem_RawFree(queue);
    PyBuffer_Release(&src);
    PyBuffer_Release(&mask);
    return PyLong_FromLong(n);
}

/* head_centre(mask, steps, affine, height) -> (x, y, z, top): where the head is, from
 * head_mask's mask of blocks of steps voxels: each block's centre voxel (index * step +
 * (step - 1) / 2) in world mm by the affine's first three rows (12 numbers, row by row);
 * top = the highest world z among them; (x, y, z) = the mean of those within height mm of
 * the top. In double, in C order: two passes over the mask, no list of coordinates. */
static PyObject *
head_centre(PyObject *self, PyObject *args)
{
    PyObject *mask_obj;
    Py_ssize_t st[3];
    double A[12], height;
    if (!PyArg_ParseTuple(args, "O(nnn)(dddddddddddd)d", &mask_obj, &st[0], &st[1], &st[2],
                          &A[0], &A[1], &A[2], &A[3], &A[4], &A[5], &A[6], &A[7], &A[8], &A[9],
                          &A[10], &A[11], &height))
        return NULL;
    Py_buffer mask;
    if (PyObject_GetBuffer(mask_obj, &mask, PyBUF_FORMAT | PyBUF_C_CONTIGUOUS) < 0)
        return NULL;
    if (mask.ndim != 3 || mask.itemsize != 1
        || (strcmp(mask.format, "B") != 0 && strcmp(mask.format, "?") != 0)) {
        PyBuffer_Release(&mask);
        PyErr_SetString(PyExc_ValueError, "a C-contiguous 3-D bool or uint8 mask is needed");
        return NULL;
    }
    const Py_ssize_t d0 = mask.shape[0], d1 = mask.shape[1], d2 = mask.shape[2];
    const unsigned char *m = (const unsigned char *)mask.buf;
    double top = -INFINITY, sum[3] = {0.0, 0.0, 0.0};
    Py_ssize_t count = 0;
    Py_BEGIN_ALLOW_THREADS
    for (int pass = 0; pass < 2; pass++) {
        const double lowest = top - height;
        for (Py_ssize_t a = 0; a < d0; a++) {
            const double v0 = (double)(a * st[0]) + (double)(st[0] - 1) / 2.0;
            for (Py_ssize_t b = 0; b < d1; b++) {
                const double v1 = (double)(b * st[1]) + (double)(st[1] - 1) / 2.0;
                const unsigned char *line = m + (a * d1 + b) * d2;
                for (Py_ssize_t c = 0; c < d2; c++) {
                    if (!line[c])
                        continue;
                    const double v2 = (double)(c * st[2]) + (double)(st[2] - 1) / 2.0;
                    const double z = A[8] * v0 + A[9] * v1 + A[10] * v2 + A[11];
                    if (pass == 0) {
                        top = z > top ? z : top;
                    } else if (z >= lowest) {
                        sum[0] += A[0] * v0 + A[1] * v1 + A[2] * v2 + A[3];
                        sum[1] += A[4] * v0 + A[5] * v1 + A[6] * v2 + A[7];
                        sum[2] += z;
                        count++;
                    }
                }
            }
        }
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&mask);
    if (count == 0) {
        PyErr_SetString(PyExc_ValueError, "the mask is empty");
        return NULL;
    }
    return Py_BuildValue("(dddd)", sum[0] / (double)count, sum[1] / (double)count,
                         sum[2] / (double)count, top);
}

/* widen(stored, out, scale, slope, shift, inter) -> (low, high): out = stored as float32,
 * times slope when scale, plus inter when shift (float32 arithmetic: what numpy's astype,
 * *= and += give), and the range of out, in one pass. stored: a contiguous buffer of
 * native int8, uint8, int16, uint16 or int32. out None: the range (and block sums) only, the
 * converted values going through one line's room. */
/* the range is taken on the stored integers (a loop the compiler vectorises) and mapped: the
 * float32 operations are monotonic, so the ends map to the ends (swapped by a negative slope) */
#define WIDEN_LOOP(type)                                                        \
    do {                                                                        \
        const type *in = (const type *)src.buf;                                 \
        type lo = in[0], hi = in[0];                                            \
        for (Py_ssize_t first = 0; first < n; first += line) {                  \
            const Py_ssize_t last = first + line < n ? first + line : n;        \
            float *to = res != NULL ? res + first : room;                       \
            if (to == NULL) {                                                   \
                for (Py_ssize_t i = first; i < last; i++) {                     \
                    lo = in[i] < lo ? in[i] : lo;                               \
                    hi = in[i] > hi ? in[i] : hi;                               \
                }                                                               \
                continue;                                                       \
            }                                                                   \
            for (Py_ssize_t i = first; i < last; i++) {                         \
                const type v = in[i];                                           \
                lo = v < lo ? v : lo;                                           \
                hi = v > hi ? v : hi;                                           \
                float x = (float)v;                                             \
                if (scale)                                                      \
                    x = x * slope;                                              \
                if (shift)                                                      \
                    x = x + inter;                                              \
                to[i - first] = x;                                              \
            }                                                                   \
            if (acc != NULL)                                                    \
                line_block_sums(to, first / line, dim, st, bd, acc);            \
        }                                                                       \
        low = (float)lo;                                                        \
        high = (float)hi;                                                       \
    } while (0)

/* The block sums of one line (along axis 0, unit stride) of a Fortran-ordered volume of
 * shape dim, as block_sums adds them (the same order, the same arithmetic): line index
 * y + dim[1] z; blocks of st, bd of them along each axis; acc in block_sums' order. */
static void
line_block_sums(const float *line, Py_ssize_t index, const Py_ssize_t *dim, const Py_ssize_t *st,
                const Py_ssize_t *bd, double *acc)
{
    const Py_ssize_t y = index % dim[1], z = index / dim[1];
    if (z >= bd[2] * st[2] || y >= bd[1] * st[1])
        return;
    double *target = acc + ((z / st[2]) * bd[1] + y / st[1]) * bd[0];
    if (st[0] == 3)
        sum_line3(line, target, bd[0]);
    else if (st[0] == 2)
        sum_line2(line, target, bd[0]);
    else
        for (Py_ssize_t c = 0; c < bd[0]; c++) {
            const float *q = line + c * st[0];
            float sum = 0.0f;
            for (Py_ssize_t e = 0; e < st[0]; e++)
                sum += q[e];
            target[c] += sum;
        }
}

static PyObject *
widen(PyObject *self, PyObject *args)
{
    PyObject *src_obj, *out_obj, *sums_obj = Py_None;
    int scale, shift;
    float slope, inter;
    Py_ssize_t st[3] = {1, 1, 1}, dim[3] = {0, 0, 0};
    if (!PyArg_ParseTuple(args, "OOpfpf|O(nnn)(nnn)", &src_obj, &out_obj, &scale, &slope, &shift,
                          &inter, &sums_obj, &st[0], &st[1], &st[2], &dim[0], &dim[1], &dim[2]))
        return NULL;
    Py_buffer src, out = {0};
    if (PyObject_GetBuffer(src_obj, &src, PyBUF_FORMAT | PyBUF_C_CONTIGUOUS) < 0)
        return NULL;
    const int converted = out_obj != Py_None;
    if (converted && PyObject_GetBuffer(out_obj, &out, PyBUF_FORMAT | PyBUF_ANY_CONTIGUOUS
                                        | PyBUF_WRITABLE) < 0) {
        PyBuffer_Release(&src);
        return NULL;
    }
    const char *f = src.format;
    const int kind = strcmp(f, "b") == 0 ? 1 : strcmp(f, "B") == 0 ? 2 : strcmp(f, "h") == 0 ? 3
                     : strcmp(f, "H") == 0 ? 4 : strcmp(f, "i") == 0 ? 5 : 0;
    const Py_ssize_t n = src.itemsize ? src.len / src.itemsize : 0;
    if (!kind || n == 0 || (converted && (out.itemsize != 4 || strcmp(out.format, "f") != 0
                                          || out.len != n * 4))) {
        PyBuffer_Release(&src);
        if (converted)
            PyBuffer_Release(&out);
        PyErr_SetString(PyExc_ValueError, "a non-empty native int8/uint8/int16/uint16/int32 "
                        "buffer and a float32 array of as many elements (or None) are needed");
        return NULL;
    }
    float *res = converted ? (float *)out.buf : NULL, *room = NULL;
    float low = INFINITY, high = -INFINITY;
    /* with sums: block_sums of the widened volume (Fortran order, shape dim), taken line by
     * line while each is in the cache */
    Py_buffer sums = {0};
    double *acc = NULL;
    Py_ssize_t line = n, bd[3] = {0, 0, 0};
    if (sums_obj != Py_None) {
        int bad = PyObject_GetBuffer(sums_obj, &sums, PyBUF_FORMAT | PyBUF_C_CONTIGUOUS
                                     | PyBUF_WRITABLE) < 0;
        if (!bad) {
            bad = sums.ndim != 3 || sums.itemsize != 4 || strcmp(sums.format, "f") != 0
                  || dim[0] * dim[1] * dim[2] != n;
            for (int a = 0; a < 3 && !bad; a++) {
                bd[a] = sums.shape[a];
                bad = st[a] < 1 || bd[a] * st[a] > dim[a];
            }
            if (bad)
                PyBuffer_Release(&sums);
        }
        const Py_ssize_t blocks = bd[0] * bd[1] * bd[2];
        if (!bad) {
            acc = (double *)PyMem_RawCalloc((size_t)(blocks > 0 ? blocks : 1), sizeof(double));
            if (!converted)
                room = (float *)PyMem_RawMalloc((size_t)(dim[0] > 0 ? dim[0] : 1) * sizeof(float));
        }
        if (bad || acc == NULL || (!converted && room == NULL)) {
            PyMem_RawFree(acc);
            PyBuffer_Release(&src);
            if (converted)
                PyBuffer_Release(&out);
            if (!bad) {
                PyBuffer_Release(&sums);
                return PyErr_NoMemory();
            }
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_ValueError, "sums: a C-contiguous 3-D float32 array of "
                                "whole blocks of the volume's shape is needed");
            return NULL;
        }
        line = dim[0];
    }
    Py_BEGIN_ALLOW_THREADS
    switch (kind) {
    case 1: WIDEN_LOOP(int8_t); break;
    case 2: WIDEN_LOOP(uint8_t); break;
    case 3: WIDEN_LOOP(int16_t); break;
    case 4: WIDEN_LOOP(uint16_t); break;
    default: WIDEN_LOOP(int32_t); break;
    }
    if (scale) {
        low = low * slope;
        high = high * slope;
    }
    if (shift) {
        low = low + inter;
        high = high + inter;
    }
    if (low > high) {
        const float t = low;
        low = high;
        high = t;
    }
    if (acc != NULL) {
        float *to = (float *)sums.buf;
        for (Py_ssize_t x = 0; x < bd[0]; x++)
            for (Py_ssize_t y = 0; y < bd[1]; y++)
                for (Py_ssize_t z = 0; z < bd[2]; z++)
                    to[(x * bd[1] + y) * bd[2] + z] = (float)acc[(z * bd[1] + y) * bd[0] + x];
    }
    Py_END_ALLOW_THREADS
    if (acc != NULL) {
        PyMem_RawFree(acc);
        PyMem_RawFree(room);
        PyBuffer_Release(&sums);
    }
    PyBuffer_Release(&src);
    if (converted)
        PyBuffer_Release(&out);
    return Py_BuildValue("(dd)", (double)low, (double)high);
}

/* sample_percentiles(keys, n, percents, weak) -> values: the percentiles of the first n keys
 * (from trilinear's sample), as percentiles() gives them. */
static PyObject *
sample_percentiles(PyObject *self, PyObject *args)
{
    PyObject *keys_obj, *q_obj;
    Py_ssize_t n;
    int weak;
    if (!PyArg_ParseTuple(args, "OnOp", &keys_obj, &n, &q_obj, &weak))
        return NULL;
    Py_ssize_t nq;
    double *q = read_percents(q_obj, &nq);
    if (q == NULL)
        return NULL;
    Py_buffer keys;
    if (PyObject_GetBuffer(keys_obj, &keys, PyBUF_FORMAT | PyBUF_C_CONTIGUOUS) < 0) {
        PyMem_Free(q);
        return NULL;
    }
    if (keys.itemsize != 4 || strcmp(keys.format, "I") != 0 || n < 1 || n > keys.len / 4) {
        PyBuffer_Release(&keys);
        PyMem_Free(q);
        PyErr_SetString(PyExc_ValueError, "keys: a uint32 array of at least n > 0 keys is needed");
        return NULL;
    }
    double *values = q + nq;
    int failed;
    Py_BEGIN_ALLOW_THREADS
    failed = key_percentiles((const uint32_t *)keys.buf, n, q, nq, weak, values) < 0;
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&keys);
    PyObject *result = failed ? PyErr_NoMemory() : float_tuple(values, nq, 0);
    PyMem_Free(q);
    return result;
}

static PyObject *
set_vector(PyObject *self, PyObject *args)
{
    int on;
    if (!PyArg_ParseTuple(args, "p", &on))
        return NULL;
    int was = 0, now = 0;
#ifdef KERNELS_AVX512
    was = use_avx512 < 0 ? has_avx512() : use_avx512 == 1;
    now = use_avx512 = on && has_avx512() ? 1 : 0;
#endif
    return Py_BuildValue("(NN)", PyBool_FromLong(was), PyBool_FromLong(now));
}

static PyMethodDef methods[] = {
    {"trilinear", trilinear, METH_VARARGS,
     "trilinear(source, output, matrix9, offset3, cval[, keys, above]): output[i,j,k] = "
     "source (float32, int16 or uint16) at matrix @ (i,j,k) + offset, interpolated linearly; "
     "cval outside. With keys: "
     "also the keys of output[::2, ::2, ::2] > above, and how many (see percentiles)."},
    {"set_vector", set_vector, METH_VARARGS,
     "set_vector(on): let the oblique path and the sample run their vector (AVX-512) code "
     "where the processor has it (the default), or not; returns (before, now). The results "
     "are the same bytes."},
    {"percentiles", percentiles, METH_VARARGS,
     "percentiles(source, steps3, above, percents, weak) -> (n, values): numpy's linear "
     "percentiles of source[::s0, ::s1, ::s2] over its values > above (NaN: all), by radix "
     "selection."},
    {"head_mask", head_mask, METH_VARARGS,
     "head_mask(volume, threshold, mask) -> n: mask = the largest connected component of "
     "volume > threshold, holes filled; n components."},
    {"head_centre", head_centre, METH_VARARGS,
     "head_centre(mask, steps3, affine12, height) -> (x, y, z, top): the world mean of the "
     "mask's blocks within height mm of the highest (top)."},
    {"widen", widen, METH_VARARGS,
     "widen(stored, out, scale, slope, shift, inter[, sums, steps3, shape3]) -> (low, high): "
     "out = float32(stored) [* slope] [+ inter] (out None: not kept) and its range, with "
     "sums: its block sums, in one pass."},
    {"sample_percentiles", sample_percentiles, METH_VARARGS,
     "sample_percentiles(keys, n, percents, weak) -> values: numpy's percentiles of the n "
     "values whose keys trilinear() sampled."},
    {"block_sums", block_sums, METH_VARARGS,
     "block_sums(source, output, steps3): output = sums of source over blocks of steps."},
    {"shift_scale", shift_scale, METH_VARARGS,
     "shift_scale(volume, shift, scale, low, high): volume = clip((volume - shift) / scale, "
     "low, high) in place, in float32; NaN bounds: no clipping."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_kernels", "Compiled resampling and block sums.", -1, methods,
};

PyMODINIT_FUNC
PyInit__kernels(void)
{
    return PyModule_Create(&module);
}
