/* rewardlab's skinny fp32 GEMM for CPU decoding: y = add + x @ W for a few rows x and a weight W packed once
 * into column panels (kernels/skinny.py compiles this file at first use with the machine's C compiler).
 *
 * A decoding step multiplies a handful of rows (the batch) by every weight matrix: ~2 * rows FLOPs per weight
 * read, so the step streams the weights and its speed is how fast they are read. A BLAS GEMM at 8 rows reads
 * them at roughly half the speed the cache delivers (it is built for big tiles). Here the weight is laid out as
 * panels[p][k][j] = W[k, p * NB + j] (NB columns a panel, zero past the last column): a panel is read front to
 * back, once per block of MR rows, with a prefetch PF rows ahead, and each weight vector loaded feeds MR fused
 * multiply-adds into MR x NV vector accumulators held in registers. Vector widths come from the compiler's
 * target (-march=native): AVX-512 16 floats, AVX 8, NEON/SSE 4. Summation over k is in order, one product at a
 * time, so results differ from MKL's only by rounding.
 *
 * Two epilogues spare a decoding step its small elementwise ops: an RMS row scale (y = add + rsqrt(mean(x^2) + eps)
 * * (x @ W): an RMSNorm whose weight is folded into W, applied after the product) and SwiGLU (a GLU matrix packs
 * gate and up columns side by side, HALF = NB / 2 of each a panel, and y = silu(x @ gate) * (x @ up)). */
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#if defined(__AVX512F__)
#define VW 16
#define MR 8
#elif defined(__AVX__)
#define VW 8
#define MR 4
#elif defined(__aarch64__)
#define VW 4
#define MR 8
#else
#define VW 4
#define MR 4
#endif
#define NV 3
#define NB (NV * VW)
#define HALF (NB / 2)
#define PF 16

typedef float vf __attribute__((vector_size(VW * 4)));

int rl_panel_width(void) { return NB; }

/* Write columns [col, col + cols) of a packed matrix with k_dim rows from src: W[k, c] = src[c * ld + k] when
 * trans (transformers' [out, in] layout), else src[k * ld + c]; each row k times scale[k] when scale is given.
 * part 0: a plain matrix (column c in panel c / NB, lane c % NB); part 1 / 2: the gate / up half of a GLU matrix
 * (column c in panel c / HALF, lane c % HALF, plus HALF for up). Lanes never written stay as the caller left them
 * (zeros). */
void rl_pack(const float* src, int ld, int trans, const float* scale, float* panels, int k_dim, int col, int cols,
             int part, int threads) {
  /* Runs of up to 16 columns that land in consecutive lanes of one panel: for each k one run writes 16
     consecutive floats (a cache line) while reading 16 source rows front to back. */
  const int width = part ? HALF : NB;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
#endif
  for (int c0 = 0; c0 < cols; c0 += 16) {
    int c = c0;
    while (c < cols && c < c0 + 16) {
      const int at = col + c;
      const int lane = at % width;
      int run = width - lane; /* columns left in this panel's segment */
      if (run > c0 + 16 - c) run = c0 + 16 - c;
      if (run > cols - c) run = cols - c;
      float* dst = panels + (size_t)(at / width) * k_dim * NB + lane + (part == 2 ? HALF : 0);
      for (int k = 0; k < k_dim; k++) {
        const float f = scale ? scale[k] : 1.0f;
        float* d = dst + (size_t)k * NB;
        if (trans)
          for (int i = 0; i < run; i++) d[i] = src[(size_t)(c + i) * ld + k] * f;
        else
          for (int i = 0; i < run; i++) d[i] = src[(size_t)k * ld + c + i] * f;
      }
      c += run;
    }
  }
}

static inline __attribute__((always_inline)) void micro(const int m, const float* x, int ldx, const float* panel,
                                                        int k_dim, float* y, int ldy, const float* add, int ldadd,
                                                        int cols, const float* row_scale, int glu) {
  const int rows = m < MR ? m : MR; /* m > MR only in the unreachable cases of panel_rows */
  vf acc[MR][NV];
  for (int i = 0; i < MR; i++)
    for (int v = 0; v < NV; v++) acc[i][v] = (vf){0};
  for (int k = 0; k < k_dim; k++) {
    const float* wk = panel + (size_t)k * NB;
    vf w[NV];
    for (int v = 0; v < NV; v++) __builtin_prefetch(wk + PF * NB + v * VW, 0, 3);
    for (int v = 0; v < NV; v++) memcpy(&w[v], wk + v * VW, sizeof(vf));
    for (int i = 0; i < rows; i++) {
      vf b = x[(size_t)i * ldx + k] - (vf){0};
      for (int v = 0; v < NV; v++) acc[i][v] += b * w[v];
    }
  }
  for (int i = 0; i < rows; i++) {
    float buf[NB];
    for (int v = 0; v < NV; v++) memcpy(buf + v * VW, &acc[i][v], sizeof(vf));
    if (row_scale)
      for (int j = 0; j < NB; j++) buf[j] *= row_scale[i];
    if (glu)
      for (int j = 0; j < cols; j++) buf[j] = buf[j] / (1.0f + expf(-buf[j])) * buf[HALF + j];
    float* dst = y + (size_t)i * ldy;
    if (add) {
      const float* a = add + (size_t)i * ldadd;
      for (int j = 0; j < cols; j++) dst[j] = a[j] + buf[j];
    } else {
      memcpy(dst, buf, (size_t)cols * sizeof(float));
    }
  }
}

static void panel_rows(int rows, const float* x, int ldx, const float* panel, int k_dim, float* y, int ldy,
                       const float* add, int ldadd, int cols, const float* row_scale, int glu) {
  int r = 0;
  for (; r + MR <= rows; r += MR)
    micro(MR, x + (size_t)r * ldx, ldx, panel, k_dim, y + (size_t)r * ldy, ldy,
          add ? add + (size_t)r * ldadd : NULL, ldadd, cols, row_scale ? row_scale + r : NULL, glu);
  x += (size_t)r * ldx;
  y += (size_t)r * ldy;
  if (add) add += (size_t)r * ldadd;
  if (row_scale) row_scale += r;
  switch (rows - r) {
#define ROWS(M) \
  case M:       \
    micro(M, x, ldx, panel, k_dim, y, ldy, add, ldadd, cols, row_scale, glu); \
    break;
    ROWS(1) ROWS(2) ROWS(3) ROWS(4) ROWS(5) ROWS(6) ROWS(7)
#undef ROWS
    default:
      break;
  }
}

/* y[r, :n] = add[r, :n] (or 0) + s_r * (x[r, :k_dim] @ W) for r < rows, panels from rl_pack; s_r = 1, or with
 * rms_eps >= 0 the RMS scale 1 / sqrt(mean_k x[r, k]^2 + rms_eps). With glu, W is a GLU matrix of n gate and n up
 * columns and y[r, c] = add + silu(s_r (x @ gate)[c]) * s_r (x @ up)[c]. Returns 0, or -1 where memory ran out. */
int rl_gemm(int rows, const float* x, int ldx, const float* panels, int k_dim, int n, float* y, int ldy,
            const float* add, int ldadd, float rms_eps, int glu, int threads) {
  const int width = glu ? HALF : NB;
  const int np = (n + width - 1) / width;
  float* row_scale = NULL;
  if (rms_eps >= 0.0f) {
    row_scale = malloc((size_t)(rows > 0 ? rows : 1) * sizeof(float));
    if (!row_scale) return -1;
    for (int r = 0; r < rows; r++) {
      const float* xr = x + (size_t)r * ldx;
      float sum = 0.0f;
      for (int k = 0; k < k_dim; k++) sum += xr[k] * xr[k];
      row_scale[r] = 1.0f / sqrtf(sum / (float)k_dim + rms_eps);
    }
  }
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1 && np > 1)
#endif
  for (int p = 0; p < np; p++) {
    int cols = n - p * width < width ? n - p * width : width;
    panel_rows(rows, x, ldx, panels + (size_t)p * k_dim * NB, k_dim, y + p * width, ldy,
               add ? add + p * width : NULL, ldadd, cols, row_scale, glu);
  }
  free(row_scale);
  return 0;
}

static inline float dot(const float* a, const float* b, int n) {
  vf acc = {0};
  int j = 0;
  for (; j + VW <= n; j += VW) {
    vf x, y;
    memcpy(&x, a + j, sizeof(vf));
    memcpy(&y, b + j, sizeof(vf));
    acc += x * y;
  }
  float sum = 0.0f;
  for (int i = 0; i < VW; i++) sum += acc[i];
  for (; j < n; j++) sum += a[j] * b[j];
  return sum;
}

/* One decoding step's attention for b rows, one new token each: RoPE on the row's q and k heads (x * cos +
 * swap_halves(x) * ssin, where ssin is the sine with rotate_half's signs folded in: -sin on the first half),
 * the rotated k and the v written to cache slot `slot` ([b, kv_heads, cache_len, head_dim] contiguous caches),
 * then for each query head softmax(q . K[0..slot] * scale + mask[row, 0..slot]) . V[0..slot], written to
 * out[row, head * head_dim ..]. qkv rows hold [q heads | k kv_heads | v kv_heads] x head_dim; cos and ssin are
 * [b, head_dim] (each row's position); mask rows are additive (0 = attend). Query head h reads kv head
 * h / (heads / kv_heads) (grouped-query attention). Returns 0, or -1 where memory ran out. */
int rl_decode_attention(int b, const float* qkv, int ld_qkv, const float* cos, const float* ssin, int ld_rope,
                        float* kcache, float* vcache, int cache_len, int slot, const float* mask, int ld_mask,
                        int heads, int kv_heads, int head_dim, float scale, float* out, int ld_out) {
  const int half = head_dim / 2, groups = heads / kv_heads, n = slot + 1;
  float* buf = malloc((size_t)(n + head_dim) * sizeof(float));
  if (!buf) return -1;
  float* scores = buf;
  float* q = buf + n;
  for (int r = 0; r < b; r++) {
    const float* row = qkv + (size_t)r * ld_qkv;
    const float* c = cos + (size_t)r * ld_rope;
    const float* s = ssin + (size_t)r * ld_rope;
    for (int g = 0; g < kv_heads; g++) {
      const float* k = row + (size_t)(heads + g) * head_dim;
      const float* v = row + (size_t)(heads + kv_heads + g) * head_dim;
      float* kd = kcache + (((size_t)r * kv_heads + g) * cache_len + slot) * head_dim;
      float* vd = vcache + (((size_t)r * kv_heads + g) * cache_len + slot) * head_dim;
      for (int j = 0; j < head_dim; j++) {
        kd[j] = k[j] * c[j] + k[j < half ? j + half : j - half] * s[j];
        vd[j] = v[j];
      }
    }
    const float* m = mask + (size_t)r * ld_mask;
    for (int h = 0; h < heads; h++) {
      const float* x = row + (size_t)h * head_dim;
      for (int j = 0; j < head_dim; j++) q[j] = x[j] * c[j] + x[j < half ? j + half : j - half] * s[j];
      const size_t base = ((size_t)r * kv_heads + h / groups) * cache_len * head_dim;
      const float* keys = kcache + base;
      const float* values = vcache + base;
      float top = -INFINITY;
      for (int t = 0; t < n; t++) {
        scores[t] = dot(q, keys + (size_t)t * head_dim, head_dim) * scale + m[t];
        if (scores[t] > top) top = scores[t];
      }
      float total = 0.0f;
      for (int t = 0; t < n; t++) {
        scores[t] = expf(scores[t] - top);
        total += scores[t];
      }
      float* o = out + (size_t)r * ld_out + (size_t)h * head_dim;
      for (int j = 0; j < head_dim; j++) o[j] = 0.0f;
      for (int t = 0; t < n; t++) {
        const float p = scores[t] / total;
        const float* vt = values + (size_t)t * head_dim;
        for (int j = 0; j < head_dim; j++) o[j] += p * vt[j];
      }
    }
  }
  free(buf);
  return 0;
}
