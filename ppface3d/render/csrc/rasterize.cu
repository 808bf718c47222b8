// CUDA kernels of ppf3d_rasterize (same conventions and tie rule as the CPU kernel in
// rasterize.cc). Built only when Paddle has CUDA and nvcc is found; the CPU entry points
// dispatch here for GPU tensors.
//
// Forward: one thread per (image, face) scans the face's pixel box and keeps, per pixel, the
// minimum of a packed 64-bit key (order-preserving depth bits << 32 | face index) with
// atomicMin, so smaller depth wins and ties go to the smaller face index, deterministically.
// A second pass (one thread per pixel) decodes the face and writes barycentrics and depth.
// Backward: one thread per pixel, atomicAdd into the vertex gradient.
#include <cuda_runtime.h>

#include <vector>

#include "paddle/extension.h"

namespace {

__device__ __forceinline__ float edge_fn(float ax, float ay, float bx, float by, float px, float py) {
  return (bx - ax) * (py - ay) - (by - ay) * (px - ax);
}

__device__ __forceinline__ unsigned int ordered_bits(float f) {
  unsigned int u = __float_as_uint(f);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

__device__ __forceinline__ bool load_face(const float* vb, const int* faces, int f, int H, int W,
                                          bool persp, float* x, float* y, float* z) {
  const float sx = 0.5f * W, sy = 0.5f * H;
  bool ok = true;
  for (int k = 0; k < 3; ++k) {
    const int vid = faces[f * 3 + k];
    x[k] = (vb[vid * 3 + 0] + 1.f) * sx - 0.5f;
    y[k] = (vb[vid * 3 + 1] + 1.f) * sy - 0.5f;
    z[k] = vb[vid * 3 + 2];
    if (!(isfinite(x[k]) && isfinite(y[k]) && isfinite(z[k]))) ok = false;
    if (persp && !(z[k] > 1e-8f)) ok = false;
  }
  return ok;
}

__global__ void raster_faces(const float* verts, const int* faces, int64_t B, int64_t V, int64_t F,
                             int H, int W, bool persp, bool cull, unsigned long long* keys) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= B * F) return;
  const int64_t b = t / F;
  const int f = static_cast<int>(t % F);
  float x[3], y[3], z[3];
  if (!load_face(verts + b * V * 3, faces, f, H, W, persp, x, y, z)) return;
  const float area = edge_fn(x[0], y[0], x[1], y[1], x[2], y[2]);
  if (fabsf(area) < 1e-12f || (cull && area > 0.f)) return;
  const int x0 = max(0, static_cast<int>(ceilf(fminf(x[0], fminf(x[1], x[2])))));
  const int x1 = min(W - 1, static_cast<int>(floorf(fmaxf(x[0], fmaxf(x[1], x[2])))));
  const int y0 = max(0, static_cast<int>(ceilf(fminf(y[0], fminf(y[1], y[2])))));
  const int y1 = min(H - 1, static_cast<int>(floorf(fmaxf(y[0], fmaxf(y[1], y[2])))));
  const float inv = 1.f / area;
  for (int i = y0; i <= y1; ++i) {
    for (int j = x0; j <= x1; ++j) {
      const float px = j, py = i;
      const float w0 = edge_fn(x[1], y[1], x[2], y[2], px, py) * inv;
      const float w1 = edge_fn(x[2], y[2], x[0], y[0], px, py) * inv;
      const float w2 = edge_fn(x[0], y[0], x[1], y[1], px, py) * inv;
      if (w0 < 0.f || w1 < 0.f || w2 < 0.f) continue;
      const float d = persp ? 1.f / (w0 / z[0] + w1 / z[1] + w2 / z[2]) : w0 * z[0] + w1 * z[1] + w2 * z[2];
      const unsigned long long key = (static_cast<unsigned long long>(ordered_bits(d)) << 32) | static_cast<unsigned int>(f);
      atomicMin(keys + (b * H + i) * W + j, key);
    }
  }
}

__global__ void resolve_pixels(const float* verts, const int* faces, const unsigned long long* keys,
                               int64_t B, int64_t V, int H, int W, bool persp, int* idx, float* bary,
                               float* zbuf) {
  const int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (p >= B * H * W) return;
  const unsigned long long key = keys[p];
  if (key == ~0ull) return;  // outputs were pre-filled with the background values
  const int f = static_cast<int>(key & 0xffffffffull);
  const int64_t b = p / (static_cast<int64_t>(H) * W);
  const int i = static_cast<int>((p / W) % H), j = static_cast<int>(p % W);
  float x[3], y[3], z[3];
  load_face(verts + b * V * 3, faces, f, H, W, persp, x, y, z);
  const float area = edge_fn(x[0], y[0], x[1], y[1], x[2], y[2]);
  float w[3];
  w[0] = edge_fn(x[1], y[1], x[2], y[2], j, i) / area;
  w[1] = edge_fn(x[2], y[2], x[0], y[0], j, i) / area;
  w[2] = edge_fn(x[0], y[0], x[1], y[1], j, i) / area;
  idx[p] = f;
  if (persp) {
    const float d = 1.f / (w[0] / z[0] + w[1] / z[1] + w[2] / z[2]);
    for (int k = 0; k < 3; ++k) bary[p * 3 + k] = w[k] / z[k] * d;
    zbuf[p] = d;
  } else {
    for (int k = 0; k < 3; ++k) bary[p * 3 + k] = w[k];
    zbuf[p] = w[0] * z[0] + w[1] * z[1] + w[2] * z[2];
  }
}

__global__ void raster_backward(const float* verts, const int* faces, const int* idx, const float* gbary,
                                const float* gzbuf, int64_t B, int64_t V, int H, int W, bool persp,
                                float* gverts) {
  const int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (p >= B * H * W) return;
  const int f = idx[p];
  if (f < 0) return;
  const int64_t b = p / (static_cast<int64_t>(H) * W);
  const float py = static_cast<float>((p / W) % H), px = static_cast<float>(p % W);
  const float* vb = verts + b * V * 3;
  float x[3], y[3], z[3];
  load_face(vb, faces, f, H, W, persp, x, y, z);
  const float area = edge_fn(x[0], y[0], x[1], y[1], x[2], y[2]);
  if (fabsf(area) < 1e-12f) return;
  float w[3];
  w[0] = edge_fn(x[1], y[1], x[2], y[2], px, py) / area;
  w[1] = edge_fn(x[2], y[2], x[0], y[0], px, py) / area;
  w[2] = edge_fn(x[0], y[0], x[1], y[1], px, py) / area;
  const float gz = gzbuf ? gzbuf[p] : 0.f;
  float g[3] = {0.f, 0.f, 0.f};
  if (gbary) {
    for (int k = 0; k < 3; ++k) g[k] = gbary[p * 3 + k];
  }
  float gw[3], gzv[3];
  if (persp) {
    float u[3], s = 0.f;
    for (int k = 0; k < 3; ++k) {
      u[k] = w[k] / z[k];
      s += u[k];
    }
    float dot = 0.f;
    for (int k = 0; k < 3; ++k) dot += g[k] * u[k] / s;
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
  const float dot = gw[0] * w[0] + gw[1] * w[1] + gw[2] * w[2];
  float gx[3] = {0.f, 0.f, 0.f}, gy[3] = {0.f, 0.f, 0.f};
  for (int k = 0; k < 3; ++k) {
    const float ge = (gw[k] - dot) / area;
    const int a = (k + 1) % 3, c = (k + 2) % 3;
    gx[a] += ge * (y[c] - py);
    gy[a] += ge * (px - x[c]);
    gx[c] += ge * (py - y[a]);
    gy[c] += ge * (x[a] - px);
  }
  const float sx = 0.5f * W, sy = 0.5f * H;
  float* gb = gverts + b * V * 3;
  for (int k = 0; k < 3; ++k) {
    const int vid = faces[f * 3 + k];
    atomicAdd(gb + vid * 3 + 0, gx[k] * sx);
    atomicAdd(gb + vid * 3 + 1, gy[k] * sy);
    atomicAdd(gb + vid * 3 + 2, gzv[k]);
  }
}

inline int blocks(int64_t n, int threads) { return static_cast<int>((n + threads - 1) / threads); }

}  // namespace

std::vector<paddle::Tensor> RasterizeForwardCUDA(const paddle::Tensor& verts, const paddle::Tensor& faces,
                                                 int height, int width, bool perspective_correct,
                                                 bool cull_backfaces) {
  const int64_t B = verts.shape()[0], V = verts.shape()[1], F = faces.shape()[0];
  const int H = height, W = width;
  auto place = verts.place();
  auto stream = verts.stream();
  auto keys = paddle::full({B, H, W}, -1, paddle::DataType::INT64, place);  // all bits set
  auto face_idx = paddle::full({B, H, W}, -1, paddle::DataType::INT32, place);
  auto bary = paddle::full({B, H, W, 3}, 0.f, paddle::DataType::FLOAT32, place);
  auto zbuf = paddle::full({B, H, W}, 0.f, paddle::DataType::FLOAT32, place);
  unsigned long long* kp = reinterpret_cast<unsigned long long*>(keys.data<int64_t>());
  const int threads = 256;
  if (B * F > 0) {
    raster_faces<<<blocks(B * F, threads), threads, 0, stream>>>(
        verts.data<float>(), faces.data<int>(), B, V, F, H, W, perspective_correct, cull_backfaces, kp);
  }
  resolve_pixels<<<blocks(B * H * W, threads), threads, 0, stream>>>(
      verts.data<float>(), faces.data<int>(), kp, B, V, H, W, perspective_correct, face_idx.data<int>(),
      bary.data<float>(), zbuf.data<float>());
  return {face_idx, bary, zbuf};
}

std::vector<paddle::Tensor> RasterizeBackwardCUDA(const paddle::Tensor& verts, const paddle::Tensor& faces,
                                                  const paddle::Tensor& face_idx,
                                                  const paddle::Tensor& grad_bary,
                                                  const paddle::Tensor& grad_zbuf, int height, int width,
                                                  bool perspective_correct) {
  const int64_t B = verts.shape()[0], V = verts.shape()[1];
  const int H = height, W = width;
  auto grad_verts = paddle::full({B, V, 3}, 0.f, paddle::DataType::FLOAT32, verts.place());
  const float* gb = grad_bary.initialized() ? grad_bary.data<float>() : nullptr;
  const float* gz = grad_zbuf.initialized() ? grad_zbuf.data<float>() : nullptr;
  if (gb == nullptr && gz == nullptr) return {grad_verts};
  const int threads = 256;
  raster_backward<<<blocks(B * H * W, threads), threads, 0, verts.stream()>>>(
      verts.data<float>(), faces.data<int>(), face_idx.data<int>(), gb, gz, B, V, H, W, perspective_correct,
      grad_verts.data<float>());
  return {grad_verts};
}
