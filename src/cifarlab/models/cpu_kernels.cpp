// Native CPU kernels for the tutorial network's fast path (compiled on first use by
// models/native.py): where PyTorch makes several passes over memory, these make one.
// 1. local response normalization, forward and backward; 2. the max-pool's backward.
// Float32; the activations channels-last, so that each pixel's C channels are one
// contiguous row: loops over channels vectorize, and a row is read once.

#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <vector>

namespace {

// 1. Local response normalization (the tutorial's depth radius R, beta 0.75):
//
//   s_c = bias + alpha * sum_{k=c-R..c+R} x_k^2     (the window clipped at the ends)
//   y_c = x_c * s_c^-0.75
//   dL/dx_c = g_c s_c^-0.75 - 1.5 alpha x_c sum_{k=c-R..c+R} g_k x_k s_k^-1.75
//
// The PyTorch version makes about six passes over memory forward and five backward; here
// one read and one write forward, two reads and a write backward. The backward recomputes
// s from x rather than keeping it (the arithmetic is cheaper than the memory). R is a
// compile-time constant so the compiler unrolls the window sum.

constexpr int64_t kPixelsPerTask = 64;

// s^-0.75 as 1 / sqrt(s * sqrt(s)): two square roots, which vectorize, instead of pow.
inline float inverse_power(float s) { return 1.0f / std::sqrt(s * std::sqrt(s)); }

// padded[R .. R+C) holds a row's values, R zeros on each side: the window never branches.
template <int64_t R>
inline float window_sum(const float* padded, int64_t c) {
  float sum = 0.0f;
  for (int64_t k = 0; k <= 2 * R; ++k) sum += padded[c + k];
  return sum;
}

template <int64_t R>
void forward_rows(const float* x, float* y, int64_t begin, int64_t end, int64_t C,
                  float bias, float alpha) {
  std::vector<float> squares(C + 2 * R, 0.0f);
  for (int64_t i = begin; i < end; ++i) {
    const float* xr = x + i * C;
    float* yr = y + i * C;
    for (int64_t c = 0; c < C; ++c) squares[R + c] = xr[c] * xr[c];
    for (int64_t c = 0; c < C; ++c) {
      yr[c] = xr[c] * inverse_power(bias + alpha * window_sum<R>(squares.data(), c));
    }
  }
}

template <int64_t R>
void backward_rows(const float* x, const float* g, float* dx, int64_t begin, int64_t end,
                   int64_t C, float bias, float alpha) {
  std::vector<float> squares(C + 2 * R, 0.0f), scaled(C + 2 * R, 0.0f), gp(C);
  for (int64_t i = begin; i < end; ++i) {
    const float* xr = x + i * C;
    const float* gr = g + i * C;
    float* dr = dx + i * C;
    for (int64_t c = 0; c < C; ++c) squares[R + c] = xr[c] * xr[c];
    for (int64_t c = 0; c < C; ++c) {
      const float s = bias + alpha * window_sum<R>(squares.data(), c);
      gp[c] = gr[c] * inverse_power(s);
      scaled[R + c] = gp[c] * xr[c] / s;  // g x s^-1.75
    }
    for (int64_t c = 0; c < C; ++c) {
      dr[c] = gp[c] - 1.5f * alpha * xr[c] * window_sum<R>(scaled.data(), c);
    }
  }
}

template <int64_t R>
void run_forward(const float* x, float* y, int64_t P, int64_t C, float bias, float alpha) {
  at::parallel_for(0, P, kPixelsPerTask, [&](int64_t begin, int64_t end) {
    forward_rows<R>(x, y, begin, end, C, bias, alpha);
  });
}

template <int64_t R>
void run_backward(const float* x, const float* g, float* dx, int64_t P, int64_t C, float bias,
                  float alpha) {
  at::parallel_for(0, P, kPixelsPerTask, [&](int64_t begin, int64_t end) {
    backward_rows<R>(x, g, dx, begin, end, C, bias, alpha);
  });
}

void check(const torch::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == torch::kFloat32 && t.dim() == 4,
              name, " must be a 4-d float32 CPU tensor");
  TORCH_CHECK(t.is_contiguous(at::MemoryFormat::ChannelsLast), name, " must be channels-last");
}

// The window radii the kernel is compiled for; models/native.py sends only these.
#define CIFARLAB_FOR_RADIUS(radius, call)                                      \
  switch (radius) {                                                            \
    case 1: { constexpr int64_t R = 1; call; break; }                          \
    case 2: { constexpr int64_t R = 2; call; break; }                          \
    case 3: { constexpr int64_t R = 3; call; break; }                          \
    case 4: { constexpr int64_t R = 4; call; break; }                          \
    case 5: { constexpr int64_t R = 5; call; break; }                          \
    default: TORCH_CHECK(false, "LRN kernel: radius ", radius, " not compiled in");  \
  }

torch::Tensor lrn_forward(const torch::Tensor& x, int64_t radius, double bias, double alpha) {
  check(x, "x");
  auto y = torch::empty_like(x, at::MemoryFormat::ChannelsLast);
  if (x.numel() == 0) return y;
  const int64_t C = x.size(1), P = x.numel() / C;
  CIFARLAB_FOR_RADIUS(radius, run_forward<R>(x.data_ptr<float>(), y.data_ptr<float>(), P, C,
                                             bias, alpha));
  return y;
}

torch::Tensor lrn_backward(const torch::Tensor& g, const torch::Tensor& x, int64_t radius,
                           double bias, double alpha) {
  check(x, "x");
  check(g, "the gradient");
  TORCH_CHECK(g.sizes() == x.sizes(), "the gradient's shape must be x's");
  auto dx = torch::empty_like(x, at::MemoryFormat::ChannelsLast);
  if (x.numel() == 0) return dx;
  const int64_t C = x.size(1), P = x.numel() / C;
  CIFARLAB_FOR_RADIUS(radius, run_backward<R>(x.data_ptr<float>(), g.data_ptr<float>(),
                                              dx.data_ptr<float>(), P, C, bias, alpha));
  return dx;
}

// 2. The max-pool's backward. PyTorch's zero-fills the whole input gradient in one pass,
// then scatters into it in another (and copies the pooled gradient and the indices into
// the input's layout first). Here each image's block (C x H x W floats: 147 KB for the
// tutorial's conv1) is zeroed and scattered into while it is in cache, so memory sees one
// write; the pooled gradient is read through its strides (any layout), and the result is
// written channels-last or NCHW, whichever the next layer wants (conv_pool.py: NCHW).
// Overlapping windows may pick the same input, hence the sum.
torch::Tensor max_pool_backward(const torch::Tensor& grad, const torch::Tensor& indices,
                                int64_t height, int64_t width, bool channels_last) {
  TORCH_CHECK(grad.device().is_cpu() && grad.scalar_type() == torch::kFloat32 && grad.dim() == 4,
              "the pooled gradient must be a 4-d float32 CPU tensor");
  TORCH_CHECK(indices.scalar_type() == torch::kInt64 && indices.sizes() == grad.sizes() &&
                  indices.is_contiguous(at::MemoryFormat::ChannelsLast),
              "the indices must be int64, channels-last, the pooled gradient's shape");
  const int64_t N = grad.size(0), C = grad.size(1), OH = grad.size(2), OW = grad.size(3);
  const int64_t plane = height * width;
  const auto format = channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  auto out = torch::empty({N, C, height, width}, grad.options(), format);
  // Where input (c, i) of image n lands, i = h * width + w.
  const int64_t c_step = channels_last ? 1 : plane, i_step = channels_last ? C : 1;
  const int64_t sn = grad.stride(0), sc = grad.stride(1), sh = grad.stride(2), sw = grad.stride(3);
  const float* g = grad.data_ptr<float>();
  const int64_t* idx = indices.data_ptr<int64_t>();
  float* o = out.data_ptr<float>();
  std::atomic<bool> out_of_range{false};
  at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      float* block = o + n * C * plane;
      std::fill(block, block + C * plane, 0.0f);
      const int64_t* in = idx + n * OH * OW * C;
      for (int64_t p = 0; p < OH * OW; ++p) {
        const float* gp = g + n * sn + (p / OW) * sh + (p % OW) * sw;
        for (int64_t c = 0; c < C; ++c) {
          const int64_t i = in[p * C + c];
          if (i < 0 || i >= plane) {  // never from a max-pool; no write outside the block
            out_of_range = true;
            continue;
          }
          block[c * c_step + i * i_step] += gp[c * sc];
        }
      }
    }
  });
  TORCH_CHECK(!out_of_range, "max-pool backward: an index outside the ", height, "x", width,
              " input");
  return out;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("lrn_forward", &lrn_forward, "LRN forward (channels-last float32, beta 0.75)");
  m.def("lrn_backward", &lrn_backward, "LRN backward (beta 0.75), recomputing s from x");
  m.def("max_pool_backward", &max_pool_backward,
        "max-pool backward: pooled gradient (any layout), indices -> input gradient");
}
