// Native CPU kernels for the tutorial network's fast path (compiled on first use by
// tutorial_cpu/build.py): where PyTorch makes several passes over memory, these make one.
// 1. local response normalization, forward and backward; 2. the max-pool's backward;
// 3. a convolution by Fourier transform, on each thread for its share of the batch;
// 4. the three tile transforms of Winograd's F(4x4, 3x3) convolution (models/winograd.py,
// which the fast network uses: its matrix products are PyTorch's); 5. the fast network's
// max-pool, batch norm and GELU, fused, forward and backward (models/norm_gelu.py).
// Float32 (part 5 also bfloat16); the activations channels-last, so that each pixel's C
// channels are one contiguous row: loops over channels vectorize, and a row is read once
// (the LRNs also read and write NCHW, the Fourier convolution's layout).

#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <dlfcn.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <optional>
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

// A [N, C, H, W] tensor as N*H*W rows (pixels) of C values. Channels-last, a row is
// contiguous and is used in place; NCHW (what the Fourier convolution beside the LRNs reads
// and writes, part 3), its values are HW apart and pass through a row buffer. An image's
// block is small (36 KB for the tutorial's conv2), so the strided accesses hit the cache.
template <typename T>
struct Rows {
  T* data;
  int64_t C, HW;
  bool channels_last;

  Rows(const torch::Tensor& t, bool is_channels_last)
      : data(t.data_ptr<float>()), C(t.size(1)), HW(t.size(2) * t.size(3)),
        channels_last(is_channels_last) {}

  T* row(int64_t i) const { return data + (channels_last ? i * C : (i / HW) * C * HW + i % HW); }
  // The row's values, contiguous: in place, or gathered into buffer.
  const float* read(int64_t i, float* buffer) const {
    const T* r = row(i);
    if (channels_last) return r;
    for (int64_t c = 0; c < C; ++c) buffer[c] = r[c * HW];
    return buffer;
  }
  // Where to compute row i's values: in place, or in buffer until written back by write().
  float* target(int64_t i, float* buffer) const { return channels_last ? row(i) : buffer; }
  void write(int64_t i, const float* values) const {
    if (channels_last) return;
    T* r = row(i);
    for (int64_t c = 0; c < C; ++c) r[c * HW] = values[c];
  }
};
using InRows = Rows<const float>;
using OutRows = Rows<float>;

template <int64_t R>
void forward_rows(const InRows& x, const OutRows& y, int64_t begin, int64_t end, float bias,
                  float alpha) {
  const int64_t C = x.C;
  std::vector<float> squares(C + 2 * R, 0.0f), x_buffer(C), y_buffer(C);
  for (int64_t i = begin; i < end; ++i) {
    const float* xr = x.read(i, x_buffer.data());
    float* yr = y.target(i, y_buffer.data());
    for (int64_t c = 0; c < C; ++c) squares[R + c] = xr[c] * xr[c];
    for (int64_t c = 0; c < C; ++c) {
      yr[c] = xr[c] * inverse_power(bias + alpha * window_sum<R>(squares.data(), c));
    }
    y.write(i, yr);
  }
}

template <int64_t R>
void backward_rows(const InRows& x, const InRows& g, const OutRows& dx, int64_t begin,
                   int64_t end, float bias, float alpha) {
  const int64_t C = x.C;
  std::vector<float> squares(C + 2 * R, 0.0f), scaled(C + 2 * R, 0.0f), gp(C);
  std::vector<float> x_buffer(C), g_buffer(C), d_buffer(C);
  for (int64_t i = begin; i < end; ++i) {
    const float* xr = x.read(i, x_buffer.data());
    const float* gr = g.read(i, g_buffer.data());
    float* dr = dx.target(i, d_buffer.data());
    for (int64_t c = 0; c < C; ++c) squares[R + c] = xr[c] * xr[c];
    for (int64_t c = 0; c < C; ++c) {
      const float s = bias + alpha * window_sum<R>(squares.data(), c);
      gp[c] = gr[c] * inverse_power(s);
      scaled[R + c] = gp[c] * xr[c] / s;  // g x s^-1.75
    }
    for (int64_t c = 0; c < C; ++c) {
      dr[c] = gp[c] - 1.5f * alpha * xr[c] * window_sum<R>(scaled.data(), c);
    }
    dx.write(i, dr);
  }
}

template <int64_t R>
void run_forward(const InRows& x, const OutRows& y, int64_t P, float bias, float alpha) {
  at::parallel_for(0, P, kPixelsPerTask, [&](int64_t begin, int64_t end) {
    forward_rows<R>(x, y, begin, end, bias, alpha);
  });
}

template <int64_t R>
void run_backward(const InRows& x, const InRows& g, const OutRows& dx, int64_t P, float bias,
                  float alpha) {
  at::parallel_for(0, P, kPixelsPerTask, [&](int64_t begin, int64_t end) {
    backward_rows<R>(x, g, dx, begin, end, bias, alpha);
  });
}

// Whether t is channels-last; else it must be NCHW. (A tensor with one pixel or one
// channel is both: either reading is right.)
bool check(const torch::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == torch::kFloat32 && t.dim() == 4,
              name, " must be a 4-d float32 CPU tensor");
  const bool channels_last = t.is_contiguous(at::MemoryFormat::ChannelsLast);
  TORCH_CHECK(channels_last || t.is_contiguous(), name, " must be channels-last or NCHW");
  return channels_last;
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

torch::Tensor lrn_forward(const torch::Tensor& x, int64_t radius, double bias, double alpha,
                          bool channels_last_out) {
  const bool x_channels_last = check(x, "x");
  auto y = torch::empty_like(x, channels_last_out ? at::MemoryFormat::ChannelsLast
                                                  : at::MemoryFormat::Contiguous);
  if (x.numel() == 0) return y;
  const int64_t P = x.numel() / x.size(1);
  CIFARLAB_FOR_RADIUS(radius, run_forward<R>(InRows(x, x_channels_last),
                                             OutRows(y, channels_last_out), P, bias, alpha));
  return y;
}

torch::Tensor lrn_backward(const torch::Tensor& g, const torch::Tensor& x, int64_t radius,
                           double bias, double alpha, bool channels_last_out) {
  const bool x_channels_last = check(x, "x");
  const bool g_channels_last = check(g, "the gradient");
  TORCH_CHECK(g.sizes() == x.sizes(), "the gradient's shape must be x's");
  auto dx = torch::empty_like(x, channels_last_out ? at::MemoryFormat::ChannelsLast
                                                   : at::MemoryFormat::Contiguous);
  if (x.numel() == 0) return dx;
  const int64_t P = x.numel() / x.size(1);
  CIFARLAB_FOR_RADIUS(radius, run_backward<R>(InRows(x, x_channels_last),
                                              InRows(g, g_channels_last),
                                              OutRows(dx, channels_last_out), P, bias, alpha));
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

// 3. Convolution by Fourier transform. A 5x5 convolution costs 25 multiply-adds per input
// channel and output pixel done directly (what oneDNN does, near the CPU's peak); in the
// Fourier domain it is one complex product per frequency, and a 16x16 transform covers a
// 12x12 output at once (the tutorial's conv2), so the products are about 6x fewer and the
// transforms are cheap next to them. NNPACK implements this (its ft16x16 algorithm) and
// PyTorch carries it inside libtorch_cpu, but PyTorch runs it on a thread pool of its own,
// whose threads fight the OpenMP threads of every other operator for our two cores (the
// convolution ran 2x slower after any parallel PyTorch operator). Here each OpenMP thread
// calls NNPACK single-threaded for its share of the batch: no second set of threads.
// NNPACK is found by name at run time, so a PyTorch built without it only makes
// fft_conv_available() false (tutorial_cpu/conv2_choice.py then keeps oneDNN's convolution).

struct NnpSize {  // NNPACK's struct nnp_size
  size_t width, height;
};
struct NnpPadding {  // NNPACK's struct nnp_padding
  size_t top, right, bottom, left;
};
// nnp_convolution_output(algorithm, batch, input channels, output channels, input size,
//   padding, kernel size, input, kernel, bias, output, workspace, workspace size,
//   activation, activation parameters, thread pool, profile) -> status (0: success)
using NnpConvolutionOutput = int (*)(int, size_t, size_t, size_t, NnpSize, NnpPadding, NnpSize,
                                     const float*, const float*, const float*, float*, void*,
                                     size_t*, int, const void*, void*, void*);
constexpr int kNnpFourier16x16 = 2, kNnpIdentity = 0;

NnpConvolutionOutput nnp_convolution_output() {
  static const NnpConvolutionOutput found = []() -> NnpConvolutionOutput {
    auto initialize = reinterpret_cast<int (*)()>(dlsym(RTLD_DEFAULT, "nnp_initialize"));
    auto convolve =
        reinterpret_cast<NnpConvolutionOutput>(dlsym(RTLD_DEFAULT, "nnp_convolution_output"));
    // initialize fails on a CPU NNPACK has no kernels for (on x86: one without AVX2)
    return initialize && convolve && initialize() == 0 ? convolve : nullptr;
  }();
  return found;
}

bool fft_conv_available() { return nnp_convolution_output() != nullptr; }

// y = conv2d(x, weight, bias, padding), stride 1, all NCHW-contiguous float32; NNPACK's
// 16x16 transform takes kernels up to 16x16 and a padding smaller than the kernel.
torch::Tensor fft_conv(const torch::Tensor& x, const torch::Tensor& weight,
                       const c10::optional<torch::Tensor>& bias, int64_t padding) {
  const auto convolve = nnp_convolution_output();
  TORCH_CHECK(convolve, "the Fourier convolution needs NNPACK, which this PyTorch lacks");
  for (const auto* t : {&x, &weight}) {
    TORCH_CHECK(t->device().is_cpu() && t->scalar_type() == torch::kFloat32 && t->dim() == 4 &&
                    t->is_contiguous(),
                "the Fourier convolution takes 4-d NCHW-contiguous float32 CPU tensors");
  }
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t O = weight.size(0), KH = weight.size(2), KW = weight.size(3);
  TORCH_CHECK(weight.size(1) == C, "the filters' input channels must be x's channels");
  TORCH_CHECK(KH <= 16 && KW <= 16 && padding >= 0 && padding < std::min(KH, KW) &&
                  H + 2 * padding >= KH && W + 2 * padding >= KW,
              "the Fourier convolution: kernel at most 16x16, padding smaller than it");
  auto y = torch::empty({N, O, H + 2 * padding - KH + 1, W + 2 * padding - KW + 1}, x.options());
  if (N == 0) return y;
  const torch::Tensor b = bias.has_value() ? bias->contiguous() : torch::zeros({O}, x.options());
  TORCH_CHECK(b.scalar_type() == torch::kFloat32 && b.numel() == O, "one float32 bias per filter");
  const float *xp = x.data_ptr<float>(), *wp = weight.data_ptr<float>(), *bp = b.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  const auto p = static_cast<size_t>(padding);
  const int64_t share = (N + at::get_num_threads() - 1) / at::get_num_threads();
  std::atomic<int> failure{0};
  at::parallel_for(0, N, share, [&](int64_t begin, int64_t end) {
    auto call = [&](void* workspace, size_t* workspace_size) {
      return convolve(kNnpFourier16x16, end - begin, C, O, NnpSize{size_t(W), size_t(H)},
                      NnpPadding{p, p, p, p}, NnpSize{size_t(KW), size_t(KH)},
                      xp + begin * C * H * W, wp, bp, yp + begin * y.stride(0), workspace,
                      workspace_size, kNnpIdentity, nullptr, nullptr, nullptr);
    };
    // NNPACK allocates (and the kernel maps fresh pages for) its scratch space on every
    // call unless given some: each thread keeps one, grown as needed, 64-byte aligned.
    thread_local std::vector<char> scratch;
    size_t size = 0;
    int status = call(nullptr, &size);  // asks only for the size
    if (status == 0) {
      if (scratch.size() < size + 64) scratch.resize(size + 64);
      const auto at = (reinterpret_cast<uintptr_t>(scratch.data()) + 63) & ~uintptr_t{63};
      status = call(reinterpret_cast<void*>(at), &size);
    }
    if (status != 0) failure = status;
  });
  TORCH_CHECK(failure == 0, "NNPACK's convolution failed with status ", failure.load());
  return y;
}


// 4. Winograd's F(4x4, 3x3): a 3x3 convolution (stride 1, zero padding 1) computed on 6x6
// input tiles that overlap by 2, each giving a 4x4 output tile, with 36 products a tile and
// channel pair instead of 144 (models/winograd.py has the algebra and the matrix products).
// These kernels are its transforms, each one read and one write of memory, parallel over
// tiles, the channels of a tile position contiguous so that the loops over them vectorize:
//   winograd_input         x [N, H, W, C] -> V [36, T, C], V = B^T d B of each 6x6 tile d
//                          (T = N * ceil(H/4) * ceil(W/4) tiles; outside x reads 0);
//   winograd_output        M [36, T, O] -> y [N, H, W, O], y = A^T m A of each tile,
//                          cropped to H x W;
//   winograd_output_grad   g [N, H, W, O] -> [36, T, O], A g A^T of each 4x4 tile of g
//                          (0 past the edge): winograd_output's adjoint, for the filter
//                          gradient.
// Each writes into `out` where given: the caller works through a batch a chunk of images at
// a time, reusing the same cache-sized buffers.
// The points 0, +-1, +-2 (Lavin and Gray, 2016): the transforms' coefficients are small
// integers, so float32 loses about 1e-6 of the result's norm (tests/test_winograd.py).
constexpr float kBT[6][6] = {{4, 0, -5, 0, 1, 0},  {0, -4, -4, 1, 1, 0}, {0, 4, -4, -1, 1, 0},
                             {0, -2, -1, 2, 1, 0}, {0, 2, -1, -2, 1, 0}, {0, 4, 0, -5, 0, 1}};
constexpr float kAT[4][6] = {
    {1, 1, 1, 1, 1, 0}, {0, 1, -1, 2, -2, 0}, {0, 1, 1, 4, 4, 0}, {0, 1, -1, 8, -8, 1}};

constexpr float kA[6][4] = {{1, 0, 0, 0}, {1, 1, 1, 1}, {1, -1, 1, -1},
                            {1, 2, 4, 8}, {1, -2, 4, -8}, {0, 0, 0, 1}};  // kAT transposed

// A tile is a small matrix of rows of n channels: entry (r, j) at tile + (r * cols + j) * n.
// out[c] = sum of coefficient * in[c] over the terms with a nonzero coefficient.
template <int K>
inline void combine(float* out, const float* const (&in)[K], const float (&coefficient)[K],
                    int64_t n) {
  bool first = true;
  for (int k = 0; k < K; ++k) {
    const float a = coefficient[k];
    if (a == 0) continue;
    const float* x = in[k];
    if (first) {
      for (int64_t c = 0; c < n; ++c) out[c] = a * x[c];
    } else {
      for (int64_t c = 0; c < n; ++c) out[c] += a * x[c];
    }
    first = false;
  }
  if (first) std::fill(out, out + n, 0.0f);
}

// out (R x J) = L (R x K) times in (K x J).
template <int R, int K, int J>
void left_multiply(const float (&L)[R][K], const float* in, float* out, int64_t n) {
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < J; ++j) {
      const float* terms[K];
      for (int k = 0; k < K; ++k) terms[k] = in + (k * J + j) * n;
      combine<K>(out + (r * J + j) * n, terms, L[r], n);
    }
}

// out (I x R) = in (I x K) times L^T, L being R x K; out's entry (i, r) at
// out_row(i, r), so that the result can go straight to its place in memory.
template <int I, int K, int R, typename Place>
void right_multiply(const float* in, const float (&L)[R][K], Place out_row, int64_t n) {
  for (int i = 0; i < I; ++i)
    for (int r = 0; r < R; ++r) {
      const float* terms[K];
      for (int k = 0; k < K; ++k) terms[k] = in + (i * K + k) * n;
      if (float* out = out_row(i, r)) combine<K>(out, terms, L[r], n);
    }
}

struct Tiles {
  int64_t N, H, W, th, tw;
  Tiles(int64_t n, int64_t h, int64_t w) : N(n), H(h), W(w), th((h + 3) / 4), tw((w + 3) / 4) {}
  int64_t count() const { return N * th * tw; }
  // Tile i's image and top-left output pixel.
  void locate(int64_t i, int64_t& n, int64_t& y, int64_t& x) const {
    n = i / (th * tw);
    y = i / tw % th * 4;
    x = i % tw * 4;
  }
};

// A tile entry's row of n channels: copied from `in`, or zeros where the tile lies outside.
inline void copy_or_zero(float* out, const float* in, int64_t n) {
  if (in) {
    std::copy(in, in + n, out);
  } else {
    std::fill(out, out + n, 0.0f);
  }
}

void check_rows(const torch::Tensor& t, const char* what) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == torch::kFloat32 && t.is_contiguous(),
              what, " must be a contiguous float32 CPU tensor");
}

// The result's tensor: `out` when given (checked to be the right shape: the caller's buffer
// of a chunk, reused from chunk to chunk), else a new one.
torch::Tensor result(const std::optional<torch::Tensor>& out, at::IntArrayRef shape,
                     const torch::TensorOptions& options, const char* what) {
  if (!out) return torch::empty(shape, options);
  check_rows(*out, what);
  TORCH_CHECK(out->sizes() == shape, what, " has shape ", out->sizes(), ", not ", shape);
  return *out;
}

torch::Tensor winograd_input(const torch::Tensor& x, const std::optional<torch::Tensor>& out) {
  TORCH_CHECK(x.dim() == 4, "winograd_input: x must be [N, H, W, C]");
  check_rows(x, "winograd_input: x");
  const int64_t C = x.size(3);
  const Tiles t(x.size(0), x.size(1), x.size(2));
  const int64_t T = t.count();
  auto v = result(out, {36, T, C}, x.options(), "winograd_input: out");
  const float* xp = x.data_ptr<float>();
  float* vp = v.data_ptr<float>();
  at::parallel_for(0, T, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> tile(36 * C), rows(36 * C);
    for (int64_t i = begin; i < end; ++i) {
      int64_t n, y0, x0;
      t.locate(i, n, y0, x0);
      for (int k = 0; k < 6; ++k)
        for (int l = 0; l < 6; ++l) {
          const int64_t y = y0 + k - 1, x1 = x0 + l - 1;  // padding 1
          const bool inside = y >= 0 && y < t.H && x1 >= 0 && x1 < t.W;
          copy_or_zero(&tile[(k * 6 + l) * C], inside ? xp + ((n * t.H + y) * t.W + x1) * C : nullptr, C);
        }
      left_multiply<6, 6, 6>(kBT, tile.data(), rows.data(), C);  // B^T d
      right_multiply<6, 6, 6>(rows.data(), kBT,  // (B^T d) B, into V's plane a * 6 + b
                              [&](int a, int b) { return vp + ((a * 6 + b) * T + i) * C; }, C);
    }
  });
  return v;
}

torch::Tensor winograd_output(const torch::Tensor& m, int64_t N, int64_t H, int64_t W,
                              const std::optional<torch::Tensor>& out) {
  TORCH_CHECK(m.dim() == 3 && m.size(0) == 36, "winograd_output: m must be [36, T, O]");
  check_rows(m, "winograd_output: m");
  const Tiles t(N, H, W);
  const int64_t T = t.count(), O = m.size(2);
  TORCH_CHECK(m.size(1) == T, "winograd_output: m has ", m.size(1), " tiles, not ", T);
  auto y = result(out, {N, H, W, O}, m.options(), "winograd_output: out");
  const float* mp = m.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  at::parallel_for(0, T, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> rows(24 * O);
    for (int64_t i = begin; i < end; ++i) {
      int64_t n, y0, x0;
      t.locate(i, n, y0, x0);
      for (int r = 0; r < 4; ++r)  // A^T m: each row of the result from m's planes
        for (int l = 0; l < 6; ++l) {
          const float* terms[6];
          for (int k = 0; k < 6; ++k) terms[k] = mp + ((k * 6 + l) * T + i) * O;
          combine<6>(&rows[(r * 6 + l) * O], terms, kAT[r], O);
        }
      right_multiply<4, 6, 4>(rows.data(), kAT, [&](int r, int j) -> float* {  // (A^T m) A
        const int64_t y = y0 + r, x = x0 + j;
        return y < H && x < W ? yp + ((n * H + y) * W + x) * O : nullptr;  // cropped
      }, O);
    }
  });
  return y;
}

torch::Tensor winograd_output_grad(const torch::Tensor& g,
                                   const std::optional<torch::Tensor>& out) {
  TORCH_CHECK(g.dim() == 4, "winograd_output_grad: g must be [N, H, W, O]");
  check_rows(g, "winograd_output_grad: g");
  const int64_t O = g.size(3), H = g.size(1), W = g.size(2);
  const Tiles t(g.size(0), H, W);
  const int64_t T = t.count();
  auto m = result(out, {36, T, O}, g.options(), "winograd_output_grad: out");
  const float* gp = g.data_ptr<float>();
  float* mp = m.data_ptr<float>();
  at::parallel_for(0, T, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> tile(16 * O), rows(24 * O);
    for (int64_t i = begin; i < end; ++i) {
      int64_t n, y0, x0;
      t.locate(i, n, y0, x0);
      for (int r = 0; r < 4; ++r)
        for (int j = 0; j < 4; ++j) {
          const int64_t y = y0 + r, x = x0 + j;  // the cropped outputs had no gradient
          copy_or_zero(&tile[(r * 4 + j) * O], y < H && x < W ? gp + ((n * H + y) * W + x) * O : nullptr, O);
        }
      left_multiply<6, 4, 4>(kA, tile.data(), rows.data(), O);  // A g
      right_multiply<6, 4, 6>(rows.data(), kA,  // (A g) A^T, into plane k * 6 + l
                              [&](int k, int l) { return mp + ((k * 6 + l) * T + i) * O; }, O);
    }
  });
  return m;
}

// 5. The fast network's max-pool, batch norm and GELU after a convolution (models/
// norm_gelu.py), fused:
//
//   y -> [2x2 max-pool, stride 2, an odd last row or column dropped] -> p
//     -> z = (p - mean) / sqrt(var + eps) * weight + bias   (the batch's mean and variance)
//     -> GELU(z) = z Phi(z)                                  (the exact GELU, by erf)
//
// PyTorch makes about seven passes over memory forward and nine backward (int64 indices,
// a zero-filled input gradient, each operator's output written and read back); here two
// each way. Forward: one pools and sums the statistics, one normalizes and activates.
// Backward: one sums the two statistics of the gradient, one writes the input gradient
// (every input once: the window's winner gets the gradient, the others zero). The backward
// recomputes z and GELU's slope from p, kept with an int16 per value naming its window's
// winner, rather than keeping z: arithmetic is cheaper than memory here. Activations are
// float32 or bfloat16, channels-last; all arithmetic in float32, the statistics summed in
// float over an image and in double across images.

// bfloat16 is a float's top half: widened by a shift, rounded to nearest-even by adding
// below the cut. Branch-free, so that the channel loops vectorize.
inline float widen(float v) { return v; }
inline float widen(at::BFloat16 v) {
  const uint32_t bits = uint32_t(v.x) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}
inline void narrow(float* out, float v) { *out = v; }
inline void narrow(at::BFloat16* out, float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  bits += 0x7FFFu + ((bits >> 16) & 1u);
  out->x = uint16_t(bits >> 16);
}

// e^x for x <= 0 (GELU needs e^(-z^2/2)): 2^k e^r, |r| <= ln2 / 2, e^r by its Taylor
// polynomial of degree 6 (relative error under 2e-7). Under -87 it stays at e^-87 (1.6e-38)
// where GELU's terms that use it are far below float resolution anyway.
inline float exp_nonpositive(float x) {
  x = std::max(x, -87.0f);
  // k = x log2(e) rounded to nearest by the 1.5 * 2^23 trick: std::floor would keep the
  // loop from vectorizing (GCC vectorizes it only without floating-point traps).
  const float k = (x * 1.44269504f + 12582912.0f) - 12582912.0f;
  const float r = x - k * 0.693359375f + k * 2.12194440e-4f;  // ln2 in two parts: exact k * ln2
  float p = 1.0f / 720;
  p = p * r + 1.0f / 120;
  p = p * r + 1.0f / 24;
  p = p * r + 1.0f / 6;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t bits = (int32_t(k) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

// GELU(z) = z Phi(z), and its slope Phi(z) + z phi(z). Phi's tail Phi(-|z|) = erfc(|z| /
// sqrt 2) / 2 by Abramowitz and Stegun's 7.1.26 (erf's absolute error under 1.5e-7),
// computed directly so that nothing cancels; phi(z) = e^(-z^2/2) / sqrt(2 pi).
inline void gelu(float z, float& value, float& slope) {
  const float a = std::fabs(z) * 0.707106781f;
  const float t = 1.0f / (1.0f + 0.3275911f * a);
  const float e = exp_nonpositive(-a * a);
  const float tail =
      0.5f * e * t *
      (0.254829592f + t * (-0.284496736f + t * (1.421413741f + t * (-1.453152027f + t * 1.061405429f))));
  const float cdf = z < 0 ? tail : 1.0f - tail;
  value = z * cdf;
  slope = cdf + z * 0.398942280f * e;
}

// Per-channel sums over the batch: each image's in float, added into its thread's doubles.
class ChannelSums {
 public:
  explicit ChannelSums(int64_t C) : C_(C), sums_(at::get_num_threads() * 2 * C, 0.0) {}
  // Where an image's float sums go; `add_image` moves them into this thread's doubles.
  void add_image(const float* first, const float* second) {
    double* mine = sums_.data() + at::get_thread_num() * 2 * C_;
    for (int64_t c = 0; c < C_; ++c) {
      mine[c] += first[c];
      mine[C_ + c] += second[c];
    }
  }
  // [2, C] float64: the two sums over every thread.
  torch::Tensor total() const {
    auto out = torch::zeros({2, C_}, torch::kFloat64);
    double* o = out.data_ptr<double>();
    for (size_t at = 0; at < sums_.size(); ++at) o[at % (2 * C_)] += sums_[at];
    return out;
  }

 private:
  int64_t C_;
  std::vector<double> sums_;
};

// Which of a window's four inputs (0: top left, 1: top right, 2: bottom left, 3: bottom
// right) won: the first largest in that order, or a NaN, as PyTorch's max-pool picks.
inline void pick(float v, int16_t slot, float& best, int16_t& winner) {
  const bool take = v > best || v != v;
  best = take ? v : best;
  winner = take ? slot : winner;
}

// Calls f with a value of the activations' C++ type (shape_of admits only these two).
template <typename F>
void by_dtype(at::ScalarType dtype, F&& f) {
  if (dtype == torch::kBFloat16)
    f(at::BFloat16(0.0f));
  else
    f(0.0f);
}

struct Shape {
  int64_t N, H, W, C, h, w;  // input [N, H, W, C], output [N, h, w, C] (h = H / 2 pooled)
};

Shape shape_of(const torch::Tensor& y, bool pool, const char* what) {
  TORCH_CHECK(y.device().is_cpu() && y.dim() == 4 && y.is_contiguous(at::MemoryFormat::ChannelsLast),
              what, ": a 4-d channels-last CPU tensor");
  TORCH_CHECK(y.scalar_type() == torch::kFloat32 || y.scalar_type() == torch::kBFloat16,
              what, ": float32 or bfloat16");
  const int64_t H = y.size(2), W = y.size(3);
  TORCH_CHECK(!pool || (H >= 2 && W >= 2), what, ": pooling needs at least 2x2");
  return {y.size(0), H, W, y.size(1), pool ? H / 2 : H, pool ? W / 2 : W};
}

void check_channels(const torch::Tensor& t, int64_t C, const char* what) {
  TORCH_CHECK(t.scalar_type() == torch::kFloat32 && t.is_contiguous() && t.numel() == C, what,
              ": one contiguous float32 value per channel");
}

// The per-pixel loops over channels below take their own restrict-qualified pointers and
// sizes by value: the compiler then knows that no store changes what the loop reads (the
// lambdas' captures, the Shape), and vectorizes them.
//
// The winners are int16, not bytes: GCC vectorizes a loop by its narrowest type, 64 bytes
// at a time with AVX-512, which left all 48 channels of `fast`'s first block to the scalar
// remainder (its backward took 85 ms against block 2's 19 at about the same size); with
// int16, 32 at a time and 16 in the vectorized remainder.

// One output pixel of the pool: its window's top row a, bottom row b (C channels a pixel).
template <typename T>
inline void pool_pixel(const T* __restrict a, const T* __restrict b, T* __restrict p,
                       int16_t* __restrict winners, float* __restrict sum,
                       float* __restrict squares, int64_t C) {
  for (int64_t c = 0; c < C; ++c) {
    float best = widen(a[c]);
    int16_t winner = 0;
    pick(widen(a[C + c]), 1, best, winner);
    pick(widen(b[c]), 2, best, winner);
    pick(widen(b[C + c]), 3, best, winner);
    narrow(p + c, best);  // exact: best is one of the inputs
    winners[c] = winner;
    sum[c] += best;
    squares[c] += best * best;
  }
}

template <typename T>
void sum_pixel(const T* __restrict y, float* __restrict sum, float* __restrict squares, int64_t C) {
  for (int64_t c = 0; c < C; ++c) {
    const float v = widen(y[c]);
    sum[c] += v;
    squares[c] += v * v;
  }
}

// Pass 1 forward: pool (or not) into p and winners, and sum p and p^2 per channel.
template <typename T, bool Pool>
void pool_and_sum(const T* y, T* p, int16_t* winners, const Shape& s, ChannelSums& totals) {
  at::parallel_for(0, s.N, 1, [&](int64_t begin, int64_t end) {
    const int64_t C = s.C;
    std::vector<float> sums(2 * C);
    for (int64_t n = begin; n < end; ++n) {
      std::fill(sums.begin(), sums.end(), 0.0f);
      for (int64_t i = 0; i < s.h; ++i)
        for (int64_t j = 0; j < s.w; ++j) {
          const int64_t out = ((n * s.h + i) * s.w + j) * C;
          if constexpr (Pool) {
            const T* a = y + ((n * s.H + 2 * i) * s.W + 2 * j) * C;
            pool_pixel(a, a + s.W * C, p + out, winners + out, sums.data(), sums.data() + C, C);
          } else {
            sum_pixel(y + out, sums.data(), sums.data() + C, C);
          }
        }
      totals.add_image(sums.data(), sums.data() + C);
    }
  });
}

// The affine map z = p * scale + shift that batch norm applies with these statistics.
struct Affine {
  std::vector<float> scale, shift, rstd;
  Affine(const torch::Tensor& mean, const torch::Tensor& var, const torch::Tensor& weight,
         const torch::Tensor& bias, double eps) {
    const int64_t C = mean.numel();
    const float *m = mean.data_ptr<float>(), *v = var.data_ptr<float>();
    const float *wt = weight.data_ptr<float>(), *bs = bias.data_ptr<float>();
    for (int64_t c = 0; c < C; ++c) {
      rstd.push_back(float(1.0 / std::sqrt(double(v[c]) + eps)));
      scale.push_back(wt[c] * rstd[c]);
      shift.push_back(bs[c] - m[c] * scale[c]);
    }
  }
};

template <typename T>
void activate_pixel(const T* __restrict p, T* __restrict out, const float* __restrict scale,
                    const float* __restrict shift, int64_t C) {
  for (int64_t c = 0; c < C; ++c) {
    float value, slope;
    gelu(widen(p[c]) * scale[c] + shift[c], value, slope);
    narrow(out + c, value);
  }
}

template <typename T>
void normalize_and_activate(const T* p, T* out, int64_t pixels, const Shape& s, const Affine& f) {
  at::parallel_for(0, pixels, 64, [&](int64_t begin, int64_t end) {
    for (int64_t q = begin; q < end; ++q)
      activate_pixel(p + q * s.C, out + q * s.C, f.scale.data(), f.shift.data(), s.C);
  });
}

// y [N, C, H, W] channels-last -> (GELU output, p, winners, mean, biased variance): the
// output and p [N, C, h, w] channels-last in y's dtype, winners int16 (empty unpooled: p is
// then y itself), mean and variance float32 [C].
std::vector<torch::Tensor> norm_gelu_forward(const torch::Tensor& y, const torch::Tensor& weight,
                                             const torch::Tensor& bias, double eps, bool pool) {
  const Shape s = shape_of(y, pool, "norm_gelu_forward: y");
  check_channels(weight, s.C, "norm_gelu_forward: weight");
  check_channels(bias, s.C, "norm_gelu_forward: bias");
  const auto cl = at::MemoryFormat::ChannelsLast;
  auto p = pool ? torch::empty({s.N, s.C, s.h, s.w}, y.options(), cl) : y;
  auto winners = torch::empty({pool ? s.N * s.h * s.w * s.C : 0}, y.options().dtype(torch::kInt16));
  auto out = torch::empty({s.N, s.C, s.h, s.w}, y.options(), cl);
  const int64_t count = s.N * s.h * s.w;
  TORCH_CHECK(count > 0, "norm_gelu_forward: batch statistics need at least one value a channel");
  ChannelSums sums(s.C);
  by_dtype(y.scalar_type(), [&](auto zero) {
    using scalar_t = decltype(zero);
    if (pool)
      pool_and_sum<scalar_t, true>(y.data_ptr<scalar_t>(), p.data_ptr<scalar_t>(),
                                   winners.data_ptr<int16_t>(), s, sums);
    else
      pool_and_sum<scalar_t, false>(y.data_ptr<scalar_t>(), nullptr, nullptr, s, sums);
  });
  const auto total = sums.total();
  const auto mean = total[0] / double(count);
  const auto var = (total[1] / double(count) - mean * mean).clamp_min(0.0);
  auto mean32 = mean.to(torch::kFloat32), var32 = var.to(torch::kFloat32);
  const Affine f(mean32, var32, weight, bias, eps);
  by_dtype(y.scalar_type(), [&](auto zero) {
    using scalar_t = decltype(zero);
    normalize_and_activate(p.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), count, s, f);
  });
  return {out, p, winners, mean32, var32};
}

// Evaluation: the same function with statistics given (the running ones), in one pass that
// keeps nothing: each output pixel pooled (the window's top row a, bottom row b),
// normalized and activated.
template <typename T>
void pool_activate_pixel(const T* __restrict a, const T* __restrict b, T* __restrict out,
                         const float* __restrict scale, const float* __restrict shift,
                         int64_t C) {
  for (int64_t c = 0; c < C; ++c) {
    float best = widen(a[c]), value, slope;
    int16_t winner = 0;  // unused: the compiler drops it
    pick(widen(a[C + c]), 1, best, winner);
    pick(widen(b[c]), 2, best, winner);
    pick(widen(b[C + c]), 3, best, winner);
    gelu(best * scale[c] + shift[c], value, slope);
    narrow(out + c, value);
  }
}

torch::Tensor norm_gelu_inference(const torch::Tensor& y, const torch::Tensor& mean,
                                  const torch::Tensor& var, const torch::Tensor& weight,
                                  const torch::Tensor& bias, double eps, bool pool) {
  const Shape s = shape_of(y, pool, "norm_gelu_inference: y");
  for (const auto* t : {&mean, &var, &weight, &bias}) check_channels(*t, s.C, "norm_gelu_inference");
  const Affine f(mean, var, weight, bias, eps);
  auto out = torch::empty({s.N, s.C, s.h, s.w}, y.options(), at::MemoryFormat::ChannelsLast);
  by_dtype(y.scalar_type(), [&](auto zero) {
    using T = decltype(zero);
    const T* yp = y.data_ptr<T>();
    T* op = out.data_ptr<T>();
    at::parallel_for(0, s.N * s.h, 1, [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {  // a row of the output: image n, row i
        const int64_t n = row / s.h, i = row % s.h;
        for (int64_t j = 0; j < s.w; ++j) {
          T* o = op + (row * s.w + j) * s.C;
          if (pool) {
            const T* a = yp + ((n * s.H + 2 * i) * s.W + 2 * j) * s.C;
            pool_activate_pixel(a, a + s.W * s.C, o, f.scale.data(), f.shift.data(), s.C);
          } else {
            activate_pixel(yp + (row * s.w + j) * s.C, o, f.scale.data(), f.shift.data(), s.C);
          }
        }
      }
    });
  });
  return out;
}

// dL/dz for one value, and its normalized xhat: what both backward passes recompute.
inline void gradient_at(float p, float g, float mean, float rstd, float weight, float bias,
                        float& dz, float& xhat) {
  xhat = (p - mean) * rstd;
  float value, slope;
  gelu(xhat * weight + bias, value, slope);
  dz = g * slope;
}

// What both backward passes need per channel, besides p and g.
struct Channels {
  const float *mean, *rstd, *weight, *bias, *dz_mean, *dzx_mean;
};

// Backward pass 1 for a pixel: the sums of dL/dz and of dL/dz * xhat.
template <typename T>
void sum_gradient_pixel(const T* __restrict g, const T* __restrict p, const Channels k,
                        float* __restrict dz_sum, float* __restrict dzx_sum, int64_t C) {
  const float *__restrict mean = k.mean, *__restrict rstd = k.rstd;
  const float *__restrict weight = k.weight, *__restrict bias = k.bias;
  for (int64_t c = 0; c < C; ++c) {
    float dz, xhat;
    gradient_at(widen(p[c]), widen(g[c]), mean[c], rstd[c], weight[c], bias[c], dz, xhat);
    dz_sum[c] += dz;
    dzx_sum[c] += dz * xhat;
  }
}

template <typename T>
void sum_gradient(const T* g, const T* p, const Shape& s, const Channels& k,
                  ChannelSums& totals) {
  at::parallel_for(0, s.N, 1, [&](int64_t begin, int64_t end) {
    const int64_t C = s.C, pixels = s.h * s.w;
    std::vector<float> sums(2 * C);
    for (int64_t n = begin; n < end; ++n) {
      std::fill(sums.begin(), sums.end(), 0.0f);
      for (int64_t q = n * pixels; q < (n + 1) * pixels; ++q)
        sum_gradient_pixel(g + q * C, p + q * C, k, sums.data(), sums.data() + C, C);
      totals.add_image(sums.data(), sums.data() + C);
    }
  });
}

// Backward pass 2 for a pixel of p: dL/dp = weight * rstd * (dz - mean(dz) - xhat
// mean(dz xhat)) into dp.
template <typename T>
void dp_pixel(const T* __restrict g, const T* __restrict p, const Channels k,
                           float* __restrict dp, int64_t C) {
  const float *__restrict mean = k.mean, *__restrict rstd = k.rstd;
  const float *__restrict weight = k.weight, *__restrict bias = k.bias;
  const float *__restrict dz_mean = k.dz_mean, *__restrict dzx_mean = k.dzx_mean;
  for (int64_t c = 0; c < C; ++c) {
    float dz, xhat;
    gradient_at(widen(p[c]), widen(g[c]), mean[c], rstd[c], weight[c], bias[c], dz, xhat);
    dp[c] = weight[c] * rstd[c] * (dz - dz_mean[c] - xhat * dzx_mean[c]);
  }
}

// dp to its window's winner (top row, bottom row), zero to the others.
template <typename T>
inline void scatter_pixel(const float* __restrict dp, const int16_t* __restrict winners,
                          T* __restrict top, T* __restrict bottom, int64_t C) {
  for (int64_t c = 0; c < C; ++c) {
    // Read once, before the selects: a load inside a select's arm is a conditional load,
    // which GCC turns into vector code only with AVX-512's masked loads.
    const float d = dp[c];
    const int16_t w = winners[c];
    narrow(top + c, w == 0 ? d : 0.0f);
    narrow(top + C + c, w == 1 ? d : 0.0f);
    narrow(bottom + c, w == 2 ? d : 0.0f);
    narrow(bottom + C + c, w == 3 ? d : 0.0f);
  }
}

template <typename T>
void copy_pixel(const float* __restrict dp, T* __restrict out, int64_t C) {
  for (int64_t c = 0; c < C; ++c) narrow(out + c, dp[c]);
}

// Backward pass 2: every input's gradient (zero for a dropped last row or column).
template <typename T, bool Pool>
void write_input_gradient(const T* g, const T* p, const int16_t* winners, T* dy, const Shape& s,
                          const Channels& k) {
  at::parallel_for(0, s.N * s.h, 1, [&](int64_t begin, int64_t end) {
    const int64_t C = s.C;
    std::vector<float> dp(C);
    for (int64_t row = begin; row < end; ++row) {  // a row of p: image n, row i
      const int64_t n = row / s.h, i = row % s.h;
      for (int64_t j = 0; j < s.w; ++j) {
        const int64_t q = (row * s.w + j) * C;
        dp_pixel(g + q, p + q, k, dp.data(), C);
        if constexpr (Pool) {
          T* top = dy + ((n * s.H + 2 * i) * s.W + 2 * j) * C;
          scatter_pixel(dp.data(), winners + q, top, top + s.W * C, C);
        } else {
          copy_pixel(dp.data(), dy + q, C);
        }
      }
      if constexpr (Pool) {  // inputs no window covered: an odd last column, an odd last row
        const int64_t last_row = i == s.h - 1 ? s.H : 2 * i + 2;
        for (int64_t r = 2 * i; r < last_row; ++r) {
          const int64_t first_col = r < 2 * s.h ? 2 * s.w : 0;
          T* from = dy + ((n * s.H + r) * s.W + first_col) * C;
          std::fill(from, from + (s.W - first_col) * C, T(0.0f));
        }
      }
    }
  });
}

// The gradient of norm_gelu_forward's output g -> (dL/dy, dL/dweight, dL/dbias), dL/dy in
// the input's shape [N, C, H, W] channels-last.
std::vector<torch::Tensor> norm_gelu_backward(const torch::Tensor& g, const torch::Tensor& p,
                                              const torch::Tensor& winners, const torch::Tensor& mean,
                                              const torch::Tensor& var, const torch::Tensor& weight,
                                              const torch::Tensor& bias, double eps, int64_t H,
                                              int64_t W) {
  const bool pool = winners.numel() > 0;
  Shape s = shape_of(p, false, "norm_gelu_backward: p");
  TORCH_CHECK(g.sizes() == p.sizes() && g.scalar_type() == p.scalar_type() &&
                  g.is_contiguous(at::MemoryFormat::ChannelsLast),
              "norm_gelu_backward: g must be p's shape, dtype and layout");
  TORCH_CHECK(pool ? (H / 2 == s.h && W / 2 == s.w && winners.numel() == p.numel() &&
                      winners.scalar_type() == torch::kInt16)
                   : (H == s.h && W == s.w),
              "norm_gelu_backward: the input's size does not match p and the winners");
  s.H = H;
  s.W = W;
  for (const auto* t : {&mean, &var, &weight, &bias}) check_channels(*t, s.C, "norm_gelu_backward");
  const Affine f(mean, var, weight, bias, eps);
  Channels k{mean.data_ptr<float>(), f.rstd.data(), weight.data_ptr<float>(),
             bias.data_ptr<float>(), nullptr, nullptr};
  auto dy = torch::empty({s.N, s.C, H, W}, p.options(), at::MemoryFormat::ChannelsLast);
  ChannelSums sums(s.C);
  by_dtype(p.scalar_type(), [&](auto zero) {
    using scalar_t = decltype(zero);
    sum_gradient(g.data_ptr<scalar_t>(), p.data_ptr<scalar_t>(), s, k, sums);
  });
  const auto total = sums.total().to(torch::kFloat32);  // [dL/dbias, dL/dweight]
  const auto means = (total / double(s.N * s.h * s.w)).contiguous();
  k.dz_mean = means.data_ptr<float>();
  k.dzx_mean = k.dz_mean + s.C;
  by_dtype(p.scalar_type(), [&](auto zero) {
    using scalar_t = decltype(zero);
    auto run = pool ? write_input_gradient<scalar_t, true> : write_input_gradient<scalar_t, false>;
    run(g.data_ptr<scalar_t>(), p.data_ptr<scalar_t>(), winners.data_ptr<int16_t>(),
        dy.data_ptr<scalar_t>(), s, k);
  });
  return {dy, total[1], total[0]};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("lrn_forward", &lrn_forward, "LRN forward (float32, channels-last or NCHW, beta 0.75)");
  m.def("lrn_backward", &lrn_backward, "LRN backward (beta 0.75), recomputing s from x");
  m.def("max_pool_backward", &max_pool_backward,
        "max-pool backward: pooled gradient (any layout), indices -> input gradient");
  m.def("fft_conv_available", &fft_conv_available, "whether NNPACK is here and runs on this CPU");
  m.def("fft_conv", &fft_conv, "conv2d by 16x16 Fourier transforms (NNPACK), NCHW, stride 1");
  m.def("winograd_input", &winograd_input, "F(4x4, 3x3): x [N, H, W, C] -> V [36, T, C]",
        py::arg("x"), py::arg("out") = py::none());
  m.def("winograd_output", &winograd_output, "F(4x4, 3x3): M [36, T, O] -> y [N, H, W, O]",
        py::arg("m"), py::arg("N"), py::arg("H"), py::arg("W"), py::arg("out") = py::none());
  m.def("winograd_output_grad", &winograd_output_grad,
        "F(4x4, 3x3): output gradient [N, H, W, O] -> [36, T, O] (winograd_output's adjoint)",
        py::arg("g"), py::arg("out") = py::none());
  m.def("norm_gelu_forward", &norm_gelu_forward,
        "[2x2 max-pool ->] batch norm with the batch's statistics -> GELU, channels-last; "
        "returns (output, p, winners, mean, variance)");
  m.def("norm_gelu_inference", &norm_gelu_inference,
        "[2x2 max-pool ->] batch norm with given statistics -> GELU, channels-last, one pass");
  m.def("norm_gelu_backward", &norm_gelu_backward,
        "norm_gelu_forward's gradient: (g, p, winners, mean, variance, weight, bias, eps, H, W) "
        "-> (dL/dy, dL/dweight, dL/dbias)");
}
