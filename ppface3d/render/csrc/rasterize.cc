// Hard triangle rasterizer for ppface3d as a Paddle custom operator (CPU kernel, multi-threaded).
//
// Conventions (see ppface3d/render/rasterize.py):
//   verts  (B, V, 3) float32, screen NDC: x right, y down, both in [-1, 1] across the image,
//          z = depth, smaller is closer. Pixel (i, j) centre is at
//          x = (2j + 1) / W - 1, y = (2i + 1) / H - 1.
//   faces  (F, 3) int32, shared by the batch.
// Outputs:
//   face_idx (B, H, W) int32, -1 where no face covers the pixel
//   bary     (B, H, W, 3) float32 (perspective-corrected when perspective_correct)
//   zbuf     (B, H, W) float32 interpolated depth, 0 in the background
// Ties in depth go to the smaller face index. Back faces (clockwise on screen in this y-down
// frame, i.e. counter-clockwise-outward meshes seen from behind) are skipped when cull_backfaces.
// The gradient op maps d(loss)/d(bary) and d(loss)/d(zbuf) to d(loss)/d(verts), treating the
// face index as constant (as nvdiffrast's rasterizer does).
#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <thread>
#include <vector>

#include "paddle/extension.h"

namespace {

struct FaceSetup {
  float x[3], y[3], z[3];  // pixel coordinates and depth
  float area;              // edge(v0, v1, v2) in pixel units (0 = skip)
  int xmin, xmax, ymin, ymax;
};

inline float edge_fn(float ax, float ay, float bx, float by, float px, float py) {
  return (bx - ax) * (py - ay) - (by - ay) * (px - ax);
}

template <typename F>
void parallel_for(int64_t n, int num_threads, F fn) {
  if (num_threads <= 1 || n <= 1) {
    for (int64_t i = 0; i < n; ++i) fn(i, 0);
    return;
  }
  int nt = static_cast<int>(std::min<int64_t>(num_threads, n));
  std::atomic<int64_t> next(0);
  std::vector<std::thread> pool;
  pool.reserve(nt);
  for (int t = 0; t < nt; ++t) {
    pool.emplace_back([&, t]() {
      for (;;) {
        int64_t i = next.fetch_add(1);
        if (i >= n) break;
        fn(i, t);
      }
    });
  }
  for (auto& th : pool) th.join();
}

void setup_faces(const float* verts, const int* faces, int64_t B, int64_t V, int64_t F, int H,
                 int W, bool persp, bool cull, int num_threads, std::vector<FaceSetup>* out) {
  out->resize(B * F);
  FaceSetup* S = out->data();
  const float sx = 0.5f * W, sy = 0.5f * H;
  parallel_for(B, num_threads, [&](int64_t b, int) {
    const float* vb = verts + b * V * 3;
    for (int64_t f = 0; f < F; ++f) {
      FaceSetup& s = S[b * F + f];
      bool ok = true;
      for (int k = 0; k < 3; ++k) {
        int vid = faces[f * 3 + k];
        s.x[k] = (vb[vid * 3 + 0] + 1.f) * sx - 0.5f;
        s.y[k] = (vb[vid * 3 + 1] + 1.f) * sy - 0.5f;
        s.z[k] = vb[vid * 3 + 2];
        if (!(std::isfinite(s.x[k]) && std::isfinite(s.y[k]) && std::isfinite(s.z[k]))) ok = false;
        if (persp && !(s.z[k] > 1e-8f)) ok = false;
      }
      s.area = ok ? edge_fn(s.x[0], s.y[0], s.x[1], s.y[1], s.x[2], s.y[2]) : 0.f;
      if (std::fabs(s.area) < 1e-12f || (cull && s.area > 0.f)) {
        s.area = 0.f;
        s.xmin = 1;
        s.xmax = 0;
        s.ymin = 1;
        s.ymax = 0;
        continue;
      }
      float fx0 = std::min({s.x[0], s.x[1], s.x[2]}), fx1 = std::max({s.x[0], s.x[1], s.x[2]});
      float fy0 = std::min({s.y[0], s.y[1], s.y[2]}), fy1 = std::max({s.y[0], s.y[1], s.y[2]});
      s.xmin = std::max(0, static_cast<int>(std::ceil(fx0)));
      s.xmax = std::min(W - 1, static_cast<int>(std::floor(fx1)));
      s.ymin = std::max(0, static_cast<int>(std::ceil(fy0)));
      s.ymax = std::min(H - 1, static_cast<int>(std::floor(fy1)));
    }
  });
}

}  // namespace

#ifdef PPF3D_WITH_CUDA
std::vector<paddle::Tensor> RasterizeForwardCUDA(const paddle::Tensor& verts,
                                                 const paddle::Tensor& faces, int height,
                                                 int width, bool perspective_correct,
                                                 bool cull_backfaces);
std::vector<paddle::Tensor> RasterizeBackwardCUDA(const paddle::Tensor& verts,
                                                  const paddle::Tensor& faces,
                                                  const paddle::Tensor& face_idx,
                                                  const paddle::Tensor& grad_bary,
                                                  const paddle::Tensor& grad_zbuf, int height,
                                                  int width, bool perspective_correct);
#endif

std::vector<paddle::Tensor> RasterizeForward(const paddle::Tensor& verts,
                                             const paddle::Tensor& faces, int height, int width,
                                             bool perspective_correct, bool cull_backfaces,
                                             int num_threads) {
#ifdef PPF3D_WITH_CUDA
  if (verts.is_gpu()) {
    return RasterizeForwardCUDA(verts, faces, height, width, perspective_correct, cull_backfaces);
  }
#endif
  PD_CHECK(verts.is_cpu(), "ppf3d_rasterize: this build has no CUDA kernel; move tensors to CPU");
  PD_CHECK(verts.shape().size() == 3 && verts.shape()[2] == 3, "verts must be (B, V, 3)");
  PD_CHECK(faces.shape().size() == 2 && faces.shape()[1] == 3, "faces must be (F, 3)");
  const int64_t B = verts.shape()[0], V = verts.shape()[1], F = faces.shape()[0];
  const int H = height, W = width;
  auto face_idx = paddle::full({B, H, W}, -1, paddle::DataType::INT32, paddle::CPUPlace());
  auto bary = paddle::full({B, H, W, 3}, 0.f, paddle::DataType::FLOAT32, paddle::CPUPlace());
  auto zbuf = paddle::full({B, H, W}, 0.f, paddle::DataType::FLOAT32, paddle::CPUPlace());
  int* idx_p = face_idx.data<int>();
  float* bary_p = bary.data<float>();
  float* z_p = zbuf.data<float>();
  const float* vp = verts.data<float>();
  const int* fp = faces.data<int>();

  std::vector<FaceSetup> setup;
  setup_faces(vp, fp, B, V, F, H, W, perspective_correct, cull_backfaces, num_threads, &setup);

  // Tasks: (batch, band of rows). Each task owns its pixels, so no locking is needed.
  const int bands_per_image = std::max(1, std::min(H, 4 * std::max(1, num_threads)));
  const int rows_per_band = (H + bands_per_image - 1) / bands_per_image;
  const float inf = std::numeric_limits<float>::infinity();
  parallel_for(B * bands_per_image, num_threads, [&](int64_t task, int) {
    const int64_t b = task / bands_per_image;
    const int r0 = static_cast<int>(task % bands_per_image) * rows_per_band;
    const int r1 = std::min(H - 1, r0 + rows_per_band - 1);
    if (r0 > r1) return;
    std::vector<float> best(static_cast<size_t>(r1 - r0 + 1) * W, inf);
    const FaceSetup* S = setup.data() + b * F;
    const int64_t img = b * H * W;
    for (int64_t f = 0; f < F; ++f) {
      const FaceSetup& s = S[f];
      if (s.area == 0.f) continue;
      const int y0 = std::max(s.ymin, r0), y1 = std::min(s.ymax, r1);
      if (y0 > y1 || s.xmin > s.xmax) continue;
      const float inv_area = 1.f / s.area;
      for (int i = y0; i <= y1; ++i) {
        const float py = static_cast<float>(i);
        for (int j = s.xmin; j <= s.xmax; ++j) {
          const float px = static_cast<float>(j);
          const float w0 = edge_fn(s.x[1], s.y[1], s.x[2], s.y[2], px, py) * inv_area;
          const float w1 = edge_fn(s.x[2], s.y[2], s.x[0], s.y[0], px, py) * inv_area;
          const float w2 = edge_fn(s.x[0], s.y[0], s.x[1], s.y[1], px, py) * inv_area;
          if (w0 < 0.f || w1 < 0.f || w2 < 0.f) continue;
          float z;
          if (perspective_correct) {
            z = 1.f / (w0 / s.z[0] + w1 / s.z[1] + w2 / s.z[2]);
          } else {
            z = w0 * s.z[0] + w1 * s.z[1] + w2 * s.z[2];
          }
          float& bz = best[static_cast<size_t>(i - r0) * W + j];
          if (z < bz) {
            bz = z;
            const int64_t p = img + static_cast<int64_t>(i) * W + j;
            idx_p[p] = static_cast<int>(f);
            float* bp = bary_p + p * 3;
            if (perspective_correct) {
              bp[0] = w0 / s.z[0] * z;
              bp[1] = w1 / s.z[1] * z;
              bp[2] = w2 / s.z[2] * z;
            } else {
              bp[0] = w0;
              bp[1] = w1;
              bp[2] = w2;
            }
            z_p[p] = z;
          }
        }
      }
    }
  });
  return {face_idx, bary, zbuf};
}

std::vector<paddle::Tensor> RasterizeBackward(const paddle::Tensor& verts,
                                              const paddle::Tensor& faces,
                                              const paddle::Tensor& face_idx,
                                              const paddle::optional<paddle::Tensor>& opt_grad_bary,
                                              const paddle::optional<paddle::Tensor>& opt_grad_zbuf, int height,
                                              int width, bool perspective_correct,
                                              bool cull_backfaces, int num_threads) {
  // A missing output gradient (that output was not used) is an empty tensor.
  paddle::Tensor grad_bary = opt_grad_bary ? *opt_grad_bary : paddle::Tensor();
  paddle::Tensor grad_zbuf = opt_grad_zbuf ? *opt_grad_zbuf : paddle::Tensor();
#ifdef PPF3D_WITH_CUDA
  if (verts.is_gpu()) {
    return RasterizeBackwardCUDA(verts, faces, face_idx, grad_bary, grad_zbuf, height, width,
                                 perspective_correct);
  }
#endif
  const int64_t B = verts.shape()[0], V = verts.shape()[1];
  const int H = height, W = width;
  const float* vp = verts.data<float>();
  const int* fp = faces.data<int>();
  const int* idx_p = face_idx.data<int>();
  const float* gb_p = grad_bary.initialized() ? grad_bary.data<float>() : nullptr;
  const float* gz_p = grad_zbuf.initialized() ? grad_zbuf.data<float>() : nullptr;
  auto grad_verts = paddle::full({B, V, 3}, 0.f, paddle::DataType::FLOAT32, paddle::CPUPlace());
  float* gv = grad_verts.data<float>();
  if (gb_p == nullptr && gz_p == nullptr) return {grad_verts};

  const int nt = std::max(1, num_threads);
  const int bands_per_image = std::max(1, std::min(H, 4 * nt));
  const int rows_per_band = (H + bands_per_image - 1) / bands_per_image;
  // One gradient buffer per thread, summed at the end (no atomics on the CPU).
  std::vector<std::vector<float>> partial(nt);
  const float sx = 0.5f * W, sy = 0.5f * H;
  parallel_for(B * bands_per_image, nt, [&](int64_t task, int t) {
    std::vector<float>& acc = partial[t];
    if (acc.empty()) acc.assign(static_cast<size_t>(B * V * 3), 0.f);
    const int64_t b = task / bands_per_image;
    const int r0 = static_cast<int>(task % bands_per_image) * rows_per_band;
    const int r1 = std::min(H - 1, r0 + rows_per_band - 1);
    const float* vb = vp + b * V * 3;
    float* ab = acc.data() + b * V * 3;
    for (int i = r0; i <= r1; ++i) {
      for (int j = 0; j < W; ++j) {
        const int64_t p = (b * H + i) * W + j;
        const int f = idx_p[p];
        if (f < 0) continue;
        int vid[3];
        float x[3], y[3], z[3];
        for (int k = 0; k < 3; ++k) {
          vid[k] = fp[f * 3 + k];
          x[k] = (vb[vid[k] * 3 + 0] + 1.f) * sx - 0.5f;
          y[k] = (vb[vid[k] * 3 + 1] + 1.f) * sy - 0.5f;
          z[k] = vb[vid[k] * 3 + 2];
        }
        const float px = static_cast<float>(j), py = static_cast<float>(i);
        const float area = edge_fn(x[0], y[0], x[1], y[1], x[2], y[2]);
        if (std::fabs(area) < 1e-12f) continue;
        float w[3];
        w[0] = edge_fn(x[1], y[1], x[2], y[2], px, py) / area;
        w[1] = edge_fn(x[2], y[2], x[0], y[0], px, py) / area;
        w[2] = edge_fn(x[0], y[0], x[1], y[1], px, py) / area;
        const float gz = gz_p ? gz_p[p] : 0.f;
        float g[3] = {0.f, 0.f, 0.f};
        if (gb_p) {
          g[0] = gb_p[p * 3 + 0];
          g[1] = gb_p[p * 3 + 1];
          g[2] = gb_p[p * 3 + 2];
        }
        float gw[3], gzv[3];
        if (perspective_correct) {
          // u_k = w_k / z_k, s = sum u, bary'_k = u_k / s, zbuf = 1 / s.
          float u[3], s = 0.f;
          for (int k = 0; k < 3; ++k) {
            u[k] = w[k] / z[k];
            s += u[k];
          }
          float bp[3], dot = 0.f;
          for (int k = 0; k < 3; ++k) {
            bp[k] = u[k] / s;
            dot += g[k] * bp[k];
          }
          for (int k = 0; k < 3; ++k) {
            const float gu = (g[k] - dot) / s - gz / (s * s);
            gw[k] = gu / z[k];
            gzv[k] = -gu * w[k] / (z[k] * z[k]);
          }
        } else {
          for (int k = 0; k < 3; ++k) {
            gw[k] = g[k] + gz * z[k];
            gzv[k] = gz * w[k];
          }
        }
        // w_k = e_k / sum(e): d w / d e_k = (delta - w) / area.
        const float dot = gw[0] * w[0] + gw[1] * w[1] + gw[2] * w[2];
        float ge[3];
        for (int k = 0; k < 3; ++k) ge[k] = (gw[k] - dot) / area;
        float gx[3] = {0.f, 0.f, 0.f}, gy[3] = {0.f, 0.f, 0.f};
        // e_k = edge(a, b, p) with (a, b) = (v_{k+1}, v_{k+2}).
        for (int k = 0; k < 3; ++k) {
          const int a = (k + 1) % 3, c = (k + 2) % 3;
          gx[a] += ge[k] * (y[c] - py);
          gy[a] += ge[k] * (px - x[c]);
          gx[c] += ge[k] * (py - y[a]);
          gy[c] += ge[k] * (x[a] - px);
        }
        for (int k = 0; k < 3; ++k) {
          ab[vid[k] * 3 + 0] += gx[k] * sx;
          ab[vid[k] * 3 + 1] += gy[k] * sy;
          ab[vid[k] * 3 + 2] += gzv[k];
        }
      }
    }
  });
  const int64_t n = B * V * 3;
  for (auto& acc : partial) {
    if (acc.empty()) continue;
    for (int64_t k = 0; k < n; ++k) gv[k] += acc[k];
  }
  return {grad_verts};
}

// ---------------------------------------------------------------------------------------------
// SoftRas silhouette: alpha = 1 - prod_f (1 - sigmoid(sign * d_f(p)^2 / sigma)), d_f the NDC
// distance from the pixel centre to face f's boundary (sign + inside). Each face touches the
// pixels within `reach` (where its probability drops to eps); its log-miss term is shifted by
// its value there and clamped at 0, so the result is continuous. Same formula as the Paddle
// reference soft_silhouette() in raster.py.
// ---------------------------------------------------------------------------------------------
namespace {

struct SoftFace {
  float x[3], y[3];  // NDC
  float area;        // 0 = skip
  int xmin, xmax, ymin, ymax;
};

inline float seg_dist2(float px, float py, float ax, float ay, float bx, float by, float* t_out) {
  const float dx = bx - ax, dy = by - ay;
  float t = ((px - ax) * dx + (py - ay) * dy) / std::max(dx * dx + dy * dy, 1e-20f);
  t = std::min(1.f, std::max(0.f, t));
  const float qx = ax + t * dx - px, qy = ay + t * dy - py;
  *t_out = t;
  return qx * qx + qy * qy;
}

inline float softplus(float x) { return x > 20.f ? x : std::log1p(std::exp(x)); }
inline float sigmoid(float x) { return 1.f / (1.f + std::exp(-x)); }

void setup_soft(const float* verts, const int* faces, int64_t B, int64_t V, int64_t F, int H, int W,
                float reach, bool cull, std::vector<SoftFace>* out) {
  out->resize(B * F);
  const float rx = reach * 0.5f * W, ry = reach * 0.5f * H;
  for (int64_t b = 0; b < B; ++b) {
    const float* vb = verts + b * V * 3;
    for (int64_t f = 0; f < F; ++f) {
      SoftFace& s = (*out)[b * F + f];
      bool ok = true;
      for (int k = 0; k < 3; ++k) {
        const int vid = faces[f * 3 + k];
        s.x[k] = vb[vid * 3 + 0];
        s.y[k] = vb[vid * 3 + 1];
        if (!(std::isfinite(s.x[k]) && std::isfinite(s.y[k]))) ok = false;
      }
      s.area = ok ? edge_fn(s.x[0], s.y[0], s.x[1], s.y[1], s.x[2], s.y[2]) : 0.f;
      // same degeneracy threshold as the rasterizer, measured in pixel units
      if (std::fabs(s.area) * 0.25f * W * H < 1e-12f || (cull && s.area > 0.f)) s.area = 0.f;
      if (s.area == 0.f) {
        s.xmin = 1; s.xmax = 0; s.ymin = 1; s.ymax = 0;
        continue;
      }
      float px[3], py[3];
      for (int k = 0; k < 3; ++k) {
        px[k] = (s.x[k] + 1.f) * 0.5f * W - 0.5f;
        py[k] = (s.y[k] + 1.f) * 0.5f * H - 0.5f;
      }
      s.xmin = std::max(0, static_cast<int>(std::ceil(std::min({px[0], px[1], px[2]}) - rx)));
      s.xmax = std::min(W - 1, static_cast<int>(std::floor(std::max({px[0], px[1], px[2]}) + rx)));
      s.ymin = std::max(0, static_cast<int>(std::ceil(std::min({py[0], py[1], py[2]}) - ry)));
      s.ymax = std::min(H - 1, static_cast<int>(std::floor(std::max({py[0], py[1], py[2]}) + ry)));
    }
  }
}

// Visits every (face, pixel) pair of one (batch, band) task; fn(face, pixel, px, py).
template <typename Fn>
void visit_soft(const std::vector<SoftFace>& setup, int64_t b, int64_t F, int H, int W, int r0, int r1, Fn fn) {
  const SoftFace* S = setup.data() + b * F;
  for (int64_t f = 0; f < F; ++f) {
    const SoftFace& s = S[f];
    if (s.area == 0.f) continue;
    const int y0 = std::max(s.ymin, r0), y1 = std::min(s.ymax, r1);
    for (int i = y0; i <= y1; ++i) {
      const float py = (2.f * i + 1.f) / H - 1.f;
      for (int j = s.xmin; j <= s.xmax; ++j) {
        const float px = (2.f * j + 1.f) / W - 1.f;
        fn(s, f, (b * H + i) * W + j, px, py);
      }
    }
  }
}

struct SoftEval {
  float value;  // log-miss term (<= 0)
  float dval_dd2;
  int edge;     // argmin edge k: from vertex k to vertex k+1
  float t;
};

inline SoftEval eval_soft(const SoftFace& s, float px, float py, float inv_sigma, float cut) {
  SoftEval e;
  float best = 0.f;
  for (int k = 0; k < 3; ++k) {
    const int n = (k + 1) % 3;
    float t;
    const float d2 = seg_dist2(px, py, s.x[k], s.y[k], s.x[n], s.y[n], &t);
    if (k == 0 || d2 < best) {
      best = d2;
      e.edge = k;
      e.t = t;
    }
  }
  const float e0 = edge_fn(s.x[1], s.y[1], s.x[2], s.y[2], px, py) * s.area;
  const float e1 = edge_fn(s.x[2], s.y[2], s.x[0], s.y[0], px, py) * s.area;
  const float e2 = edge_fn(s.x[0], s.y[0], s.x[1], s.y[1], px, py) * s.area;
  const float sign = (e0 >= 0.f && e1 >= 0.f && e2 >= 0.f) ? 1.f : -1.f;
  const float z = sign * best * inv_sigma;
  const float v = -softplus(z) + cut;
  if (v < 0.f) {
    e.value = v;
    e.dval_dd2 = -sigmoid(z) * sign * inv_sigma;
  } else {
    e.value = 0.f;
    e.dval_dd2 = 0.f;
  }
  return e;
}

}  // namespace

std::vector<paddle::Tensor> SoftSilhouetteForward(const paddle::Tensor& verts, const paddle::Tensor& faces,
                                                  int height, int width, float sigma, float eps,
                                                  bool cull_backfaces, int num_threads) {
  PD_CHECK(verts.is_cpu(), "ppf3d_soft_silhouette: CPU kernel only; move tensors to CPU");
  const int64_t B = verts.shape()[0], V = verts.shape()[1], F = faces.shape()[0];
  const int H = height, W = width;
  auto acc = paddle::full({B, H, W}, 0.f, paddle::DataType::FLOAT32, paddle::CPUPlace());
  float* ap = acc.data<float>();
  const float reach = std::sqrt(sigma * std::log((1.f - eps) / eps));
  const float cut = -std::log1p(-eps), inv_sigma = 1.f / sigma;
  std::vector<SoftFace> setup;
  setup_soft(verts.data<float>(), faces.data<int>(), B, V, F, H, W, reach, cull_backfaces, &setup);
  const int bands = std::max(1, std::min(H, 4 * std::max(1, num_threads)));
  const int rows = (H + bands - 1) / bands;
  parallel_for(B * bands, num_threads, [&](int64_t task, int) {
    const int64_t b = task / bands;
    const int r0 = static_cast<int>(task % bands) * rows, r1 = std::min(H - 1, r0 + rows - 1);
    if (r0 > r1) return;
    visit_soft(setup, b, F, H, W, r0, r1, [&](const SoftFace& s, int64_t, int64_t p, float px, float py) {
      ap[p] += eval_soft(s, px, py, inv_sigma, cut).value;
    });
  });
  const int64_t n = B * H * W;
  for (int64_t k = 0; k < n; ++k) ap[k] = 1.f - std::exp(ap[k]);
  return {acc};
}

std::vector<paddle::Tensor> SoftSilhouetteBackward(const paddle::Tensor& verts, const paddle::Tensor& faces,
                                                   const paddle::Tensor& alpha, const paddle::Tensor& grad_alpha,
                                                   int height, int width, float sigma, float eps,
                                                   bool cull_backfaces, int num_threads) {
  const int64_t B = verts.shape()[0], V = verts.shape()[1], F = faces.shape()[0];
  const int H = height, W = width;
  auto grad_verts = paddle::full({B, V, 3}, 0.f, paddle::DataType::FLOAT32, paddle::CPUPlace());
  float* gv = grad_verts.data<float>();
  const float* al = alpha.data<float>();
  const float* ga = grad_alpha.data<float>();
  const int* fp = faces.data<int>();
  const float reach = std::sqrt(sigma * std::log((1.f - eps) / eps));
  const float cut = -std::log1p(-eps), inv_sigma = 1.f / sigma;
  std::vector<SoftFace> setup;
  setup_soft(verts.data<float>(), fp, B, V, F, H, W, reach, cull_backfaces, &setup);
  const int nt = std::max(1, num_threads);
  const int bands = std::max(1, std::min(H, 4 * nt));
  const int rows = (H + bands - 1) / bands;
  std::vector<std::vector<float>> partial(nt);
  parallel_for(B * bands, nt, [&](int64_t task, int t) {
    std::vector<float>& accv = partial[t];
    if (accv.empty()) accv.assign(static_cast<size_t>(B * V * 3), 0.f);
    const int64_t b = task / bands;
    const int r0 = static_cast<int>(task % bands) * rows, r1 = std::min(H - 1, r0 + rows - 1);
    if (r0 > r1) return;
    float* gb = accv.data() + b * V * 3;
    visit_soft(setup, b, F, H, W, r0, r1, [&](const SoftFace& s, int64_t f, int64_t p, float px, float py) {
      // alpha = 1 - exp(sum): d alpha / d term = -exp(sum) = -(1 - alpha)
      const float g = -ga[p] * (1.f - al[p]);
      if (g == 0.f) return;
      const SoftEval e = eval_soft(s, px, py, inv_sigma, cut);
      if (e.dval_dd2 == 0.f) return;
      const int k = e.edge, n = (k + 1) % 3;
      const float qx = s.x[k] + e.t * (s.x[n] - s.x[k]) - px;
      const float qy = s.y[k] + e.t * (s.y[n] - s.y[k]) - py;
      const float c = g * e.dval_dd2 * 2.f;
      const int va = fp[f * 3 + k], vb = fp[f * 3 + n];
      gb[va * 3 + 0] += c * qx * (1.f - e.t);
      gb[va * 3 + 1] += c * qy * (1.f - e.t);
      gb[vb * 3 + 0] += c * qx * e.t;
      gb[vb * 3 + 1] += c * qy * e.t;
    });
  });
  const int64_t n = B * V * 3;
  for (auto& accv : partial) {
    if (accv.empty()) continue;
    for (int64_t k = 0; k < n; ++k) gv[k] += accv[k];
  }
  return {grad_verts};
}

std::vector<std::vector<int64_t>> SoftSilhouetteInferShape(const std::vector<int64_t>& verts_shape,
                                                           const std::vector<int64_t>&, int height, int width,
                                                           float, float, bool, int) {
  return {{verts_shape[0], height, width}};
}

std::vector<paddle::DataType> SoftSilhouetteInferDtype(const paddle::DataType& verts_dtype, const paddle::DataType&) {
  return {verts_dtype};
}

PD_BUILD_OP(ppf3d_soft_silhouette)
    .Inputs({"Verts", "Faces"})
    .Outputs({"Alpha"})
    .Attrs({"height: int", "width: int", "sigma: float", "eps: float", "cull_backfaces: bool", "num_threads: int"})
    .SetKernelFn(PD_KERNEL(SoftSilhouetteForward))
    .SetInferShapeFn(PD_INFER_SHAPE(SoftSilhouetteInferShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(SoftSilhouetteInferDtype));

PD_BUILD_GRAD_OP(ppf3d_soft_silhouette)
    .Inputs({"Verts", "Faces", "Alpha", paddle::Grad("Alpha")})
    .Outputs({paddle::Grad("Verts")})
    .Attrs({"height: int", "width: int", "sigma: float", "eps: float", "cull_backfaces: bool", "num_threads: int"})
    .SetKernelFn(PD_KERNEL(SoftSilhouetteBackward));

// ---------------------------------------------------------------------------------------------
// Attribute interpolation (nvdiffrast's "interpolate"): out[p] = sum_k bary[p, k] * attr[face[p, k]]
//   attrs (B, V, C) float32, faces (F, 3) int32, face_idx (B, H, W) int32, bary (B, H, W, 3)
//   -> out (B, H, W, C), zero where face_idx < 0.
// ---------------------------------------------------------------------------------------------
std::vector<paddle::Tensor> InterpolateForward(const paddle::Tensor& attrs, const paddle::Tensor& faces,
                                               const paddle::Tensor& face_idx,
                                               const paddle::Tensor& bary, int num_threads) {
  PD_CHECK(attrs.is_cpu(), "ppf3d_interpolate: CPU kernel only; move tensors to CPU");
  const int64_t B = attrs.shape()[0], V = attrs.shape()[1], C = attrs.shape()[2];
  const int64_t H = face_idx.shape()[1], W = face_idx.shape()[2];
  auto out = paddle::full({B, H, W, C}, 0.f, paddle::DataType::FLOAT32, paddle::CPUPlace());
  const float* a = attrs.data<float>();
  const int* fp = faces.data<int>();
  const int* idx = face_idx.data<int>();
  const float* bp = bary.data<float>();
  float* o = out.data<float>();
  const int64_t rows = B * H;
  parallel_for(rows, num_threads, [&](int64_t r, int) {
    const int64_t b = r / H;
    const float* ab = a + b * V * C;
    for (int64_t j = 0; j < W; ++j) {
      const int64_t p = r * W + j;
      const int f = idx[p];
      if (f < 0) continue;
      const float* v0 = ab + static_cast<int64_t>(fp[f * 3 + 0]) * C;
      const float* v1 = ab + static_cast<int64_t>(fp[f * 3 + 1]) * C;
      const float* v2 = ab + static_cast<int64_t>(fp[f * 3 + 2]) * C;
      const float w0 = bp[p * 3 + 0], w1 = bp[p * 3 + 1], w2 = bp[p * 3 + 2];
      float* op = o + p * C;
      for (int64_t c = 0; c < C; ++c) op[c] = w0 * v0[c] + w1 * v1[c] + w2 * v2[c];
    }
  });
  return {out};
}

std::vector<paddle::Tensor> InterpolateBackward(const paddle::Tensor& attrs, const paddle::Tensor& faces,
                                                const paddle::Tensor& face_idx,
                                                const paddle::Tensor& bary,
                                                const paddle::Tensor& grad_out, int num_threads) {
  const int64_t B = attrs.shape()[0], V = attrs.shape()[1], C = attrs.shape()[2];
  const int64_t H = face_idx.shape()[1], W = face_idx.shape()[2];
  auto grad_attrs = paddle::full({B, V, C}, 0.f, paddle::DataType::FLOAT32, paddle::CPUPlace());
  auto grad_bary = paddle::full({B, H, W, 3}, 0.f, paddle::DataType::FLOAT32, paddle::CPUPlace());
  const float* a = attrs.data<float>();
  const int* fp = faces.data<int>();
  const int* idx = face_idx.data<int>();
  const float* bp = bary.data<float>();
  const float* g = grad_out.data<float>();
  float* gb = grad_bary.data<float>();
  float* ga = grad_attrs.data<float>();
  const int nt = std::max(1, num_threads);
  std::vector<std::vector<float>> partial(nt);
  const int64_t rows = B * H;
  parallel_for(rows, nt, [&](int64_t r, int t) {
    std::vector<float>& acc = partial[t];
    if (acc.empty()) acc.assign(static_cast<size_t>(B * V * C), 0.f);
    const int64_t b = r / H;
    const float* ab = a + b * V * C;
    float* accb = acc.data() + b * V * C;
    for (int64_t j = 0; j < W; ++j) {
      const int64_t p = r * W + j;
      const int f = idx[p];
      if (f < 0) continue;
      const float* gp = g + p * C;
      for (int k = 0; k < 3; ++k) {
        const int64_t vid = fp[f * 3 + k];
        const float* vk = ab + vid * C;
        float* dk = accb + vid * C;
        const float w = bp[p * 3 + k];
        float dot = 0.f;
        for (int64_t c = 0; c < C; ++c) {
          dot += vk[c] * gp[c];
          dk[c] += w * gp[c];
        }
        gb[p * 3 + k] = dot;
      }
    }
  });
  const int64_t n = B * V * C;
  for (auto& acc : partial) {
    if (acc.empty()) continue;
    for (int64_t k = 0; k < n; ++k) ga[k] += acc[k];
  }
  return {grad_attrs, grad_bary};
}

std::vector<std::vector<int64_t>> InterpolateInferShape(const std::vector<int64_t>& attrs_shape,
                                                        const std::vector<int64_t>&,
                                                        const std::vector<int64_t>& idx_shape,
                                                        const std::vector<int64_t>&, int) {
  return {{idx_shape[0], idx_shape[1], idx_shape[2], attrs_shape[2]}};
}

std::vector<paddle::DataType> InterpolateInferDtype(const paddle::DataType& attrs_dtype,
                                                    const paddle::DataType&, const paddle::DataType&,
                                                    const paddle::DataType&) {
  return {attrs_dtype};
}

PD_BUILD_OP(ppf3d_interpolate)
    .Inputs({"Attrs", "Faces", "FaceIdx", "Bary"})
    .Outputs({"Out"})
    .Attrs({"num_threads: int"})
    .SetKernelFn(PD_KERNEL(InterpolateForward))
    .SetInferShapeFn(PD_INFER_SHAPE(InterpolateInferShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(InterpolateInferDtype));

PD_BUILD_GRAD_OP(ppf3d_interpolate)
    .Inputs({"Attrs", "Faces", "FaceIdx", "Bary", paddle::Grad("Out")})
    .Outputs({paddle::Grad("Attrs"), paddle::Grad("Bary")})
    .Attrs({"num_threads: int"})
    .SetKernelFn(PD_KERNEL(InterpolateBackward));

std::vector<std::vector<int64_t>> RasterizeInferShape(const std::vector<int64_t>& verts_shape,
                                                      const std::vector<int64_t>& faces_shape,
                                                      int height, int width, bool, bool, int) {
  const int64_t B = verts_shape[0];
  return {{B, height, width}, {B, height, width, 3}, {B, height, width}};
}

std::vector<paddle::DataType> RasterizeInferDtype(const paddle::DataType& verts_dtype,
                                                  const paddle::DataType&) {
  return {paddle::DataType::INT32, verts_dtype, verts_dtype};
}

PD_BUILD_OP(ppf3d_rasterize)
    .Inputs({"Verts", "Faces"})
    .Outputs({"FaceIdx", "Bary", "Zbuf"})
    .Attrs({"height: int", "width: int", "perspective_correct: bool", "cull_backfaces: bool",
            "num_threads: int"})
    .SetKernelFn(PD_KERNEL(RasterizeForward))
    .SetInferShapeFn(PD_INFER_SHAPE(RasterizeInferShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(RasterizeInferDtype));

PD_BUILD_GRAD_OP(ppf3d_rasterize)
    .Inputs({"Verts", "Faces", "FaceIdx", paddle::Optional(paddle::Grad("Bary")),
             paddle::Optional(paddle::Grad("Zbuf"))})
    .Outputs({paddle::Grad("Verts")})
    .Attrs({"height: int", "width: int", "perspective_correct: bool", "cull_backfaces: bool",
            "num_threads: int"})
    .SetKernelFn(PD_KERNEL(RasterizeBackward));
