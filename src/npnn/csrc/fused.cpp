// Fused CPU kernels of npnn, built on first use by npnn.fused (torch.utils.cpp_extension).
//
// npnn::adarad_step_       one AdaRad step (Algorithm 1 lines 11-17) over all weights of a parameter
//                          group in two passes over memory, instead of ~60 eager tensor ops.
// npnn::capnorm_train      CapNorm with batch statistics (section 3.2), the running-statistics update
//                          and optionally the ReLU after it, as one autograd op: one kernel forward
//                          (capnorm_forward_ below), one backward (capnorm_backward), no Python between;
// npnn::count_zero_rows    all-zero rows per weight (dead units), one call for all layers.
//
// The arithmetic is that of the eager code in npnn.optim.AdaRad and npnn.nn (the reference;
// tests compare them). The work is split over torch's threads by rows (AdaRad) or by blocks of
// units (CapNorm), never inside a sum: the floats do not depend on the number of threads.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

namespace {

// rows per parallel task: about `per_task` elements
int64_t grain(int64_t cols, int64_t per_task = 16384) { return std::max<int64_t>(1, per_task / std::max<int64_t>(cols, 1)); }

// CapNorm's scale 1 / max(sigma, 1) = 1 / sqrt(max(var, 1)) (section 3.2)
template <typename T>
T cap_scale(T var) { return T(1) / std::sqrt(std::max(var, T(1))); }

template <typename T>
struct RowSums {
  T ww, gw, gg;  // |w|^2, g.w, |g|^2 of one row
};

// |w|^2, g.w and |g|^2 of `rows` (1 or 2) consecutive rows of length n, summed in the order of
// `#pragma omp simd reduction(+ : ww, gw, gg)` as GCC builds it for 16-byte vectors (SSE2, no -march):
// lane k of a vector sums the elements j = k mod lanes of the whole vectors, in order; the elements past
// them are added to lane 0; the row's sum is (((0 + lane 0) + lane 1) + ...). Two rows go through one
// loop: the same floats, with twice the independent additions in flight (the single-row loop waits on
// the latency of its three running sums).
template <typename T>
void row_sums(const T* w, const T* g, int64_t n, int64_t rows, RowSums<T>* out) {
  typedef T V __attribute__((vector_size(16)));
  constexpr int lanes = sizeof(V) / sizeof(T);
  const int64_t whole = n / lanes * lanes;
  auto load = [](const T* p) {
    V v;
    std::memcpy(&v, p, sizeof(V));
    return v;
  };
  V ww[2] = {}, gw[2] = {}, gg[2] = {};
  if (rows == 2) {
    const T *w1 = w + n, *g1 = g + n;
    for (int64_t j = 0; j < whole; j += lanes) {
      const V a0 = load(w + j), b0 = load(g + j), a1 = load(w1 + j), b1 = load(g1 + j);
      ww[0] += a0 * a0;
      gw[0] += b0 * a0;
      gg[0] += b0 * b0;
      ww[1] += a1 * a1;
      gw[1] += b1 * a1;
      gg[1] += b1 * b1;
    }
  } else {
    for (int64_t j = 0; j < whole; j += lanes) {
      const V a0 = load(w + j), b0 = load(g + j);
      ww[0] += a0 * a0;
      gw[0] += b0 * a0;
      gg[0] += b0 * b0;
    }
  }
  for (int64_t r = 0; r < rows; ++r) {
    const T *wr = w + r * n, *gr = g + r * n;
    for (int64_t j = whole; j < n; ++j) {
      ww[r][0] += wr[j] * wr[j];
      gw[r][0] += gr[j] * wr[j];
      gg[r][0] += gr[j] * gr[j];
    }
    T sw = 0, sgw = 0, sg = 0;
    for (int k = 0; k < lanes; ++k) {
      sw += ww[r][k];
      sgw += gw[r][k];
      sg += gg[r][k];
    }
    out[r] = {sw, sgw, sg};
  }
}

template <typename T>
void adarad_step_impl(at::TensorList weights, at::TensorList grads, at::TensorList phibars, at::TensorList cs,
                      const at::Tensor& phi_max, const at::Tensor& c_max, double alpha_r, double alpha_phi,
                      double beta, double eps, double tau) {
  const T tiny = std::numeric_limits<T>::min();
  const size_t L = weights.size();
  // per row: coef, |phi|^2 and |w| from pass 1 for pass 2, in one buffer (offsets[l]: layer l's first row)
  std::vector<int64_t> offsets(L + 1, 0);
  for (size_t l = 0; l < L; ++l) offsets[l + 1] = offsets[l] + weights[l].size(0);
  std::vector<T> scratch(3 * offsets[L]);
  T* const coefs = scratch.data();
  T* const phi_sqs = coefs + offsets[L];
  T* const w_lens = phi_sqs + offsets[L];
  T* const phi_max_p = phi_max.data_ptr<T>();
  T* const c_max_p = c_max.data_ptr<T>();
  T new_phi_max = *phi_max_p, new_c_max = *c_max_p;

  // pass 1: per row |w|^2, g.w, |g|^2 -> r = coef w, |phi|^2 (line 11); running averages (line 12)
  for (size_t l = 0; l < L; ++l) {
    const int64_t m = weights[l].size(0), n = weights[l].size(1);
    const T* w = weights[l].data_ptr<T>();
    const T* g = grads[l].data_ptr<T>();
    T* phibar = phibars[l].data_ptr<T>();
    T* c = cs[l].data_ptr<T>();
    T* coef = coefs + offsets[l];
    T* phi_sq = phi_sqs + offsets[l];
    T* w_len = w_lens + offsets[l];
    at::parallel_for(0, m, grain(n), [&](int64_t begin, int64_t end) {
      RowSums<T> sums[2];
      for (int64_t i = begin; i < end; ++i) {
        if ((i - begin) % 2 == 0) row_sums(w + i * n, g + i * n, n, std::min<int64_t>(2, end - i), sums);
        const RowSums<T>& row = sums[(i - begin) % 2];
        const T ww = row.ww, gw = row.gw, gg = row.gg;
        const T k = gw / std::max(ww, tiny);  // a zero row: k = 0, phi = g
        coef[i] = k;
        phi_sq[i] = std::max(gg - k * gw, T(0));  // |phi|^2 = |g|^2 - (g.w)^2 / |w|^2
        w_len[i] = std::sqrt(ww);
        phibar[i] = (1 - T(beta)) * phibar[i] + T(beta) * phi_sq[i];  // line 12
        c[i] = (1 - T(beta)) * c[i] + T(beta);
      }
    });
    // line 13: Algorithm 1 raises the maxima unit by unit; here once, after all averages
    for (int64_t i = 0; i < m; ++i) {
      new_phi_max = std::max(new_phi_max, phibar[i]);
      new_c_max = std::max(new_c_max, c[i]);
    }
  }
  *phi_max_p = new_phi_max;
  *c_max_p = new_c_max;
  const T global_scale = std::sqrt(new_phi_max / new_c_max);

  // pass 2: w <- A w + B g per row (lines 14-17; phi = g - coef w is never formed). Rows are independent now:
  // last layer and last row first, where pass 1 left them in the cache
  for (size_t l = L; l-- > 0;) {
    const int64_t m = weights[l].size(0), n = weights[l].size(1);
    T* w = weights[l].data_ptr<T>();
    const T* g = grads[l].data_ptr<T>();
    const T* phibar = phibars[l].data_ptr<T>();
    const T* c = cs[l].data_ptr<T>();
    const T* coef = coefs + offsets[l];
    const T* phi_sq = phi_sqs + offsets[l];
    const T* w_len = w_lens + offsets[l];
    at::parallel_for(0, m, grain(n), [&](int64_t begin, int64_t end) {
      for (int64_t i = end; i-- > begin;) {
        const T phi_len = std::sqrt(phi_sq[i]);
        // line 14 and 16: rotation angle alpha_phi |phi_adj|
        const T theta = T(alpha_phi) * global_scale * phi_len / std::sqrt(phibar[i] / c[i] + T(eps));
        const T radial = 1 - T(alpha_r) * coef[i];  // line 15: w' = (1 - alpha_r coef) w
        const T len = std::abs(radial) * w_len[i];  // |w'|, kept by the rotation
        const T new_len = std::max(len - T(tau), T(0));  // line 17: |w| -> max(0, |w| - tau)
        // line 16: w'' = cos(theta) w' - sin(theta) |w'| phi / |phi|, then shrunk to new_len
        const T a = std::cos(theta) * radial * new_len / std::max(len, tiny);
        const T b = -std::sin(theta) * new_len / std::max(phi_len, tiny);
        const T A = a - b * coef[i], B = b;
        T* wr = w + i * n;
        const T* gr = g + i * n;
#pragma omp simd
        for (int64_t j = 0; j < n; ++j) wr[j] = A * wr[j] + B * gr[j];
      }
    });
  }
}

void adarad_step_(at::TensorList weights, at::TensorList grads, at::TensorList phibars, at::TensorList cs,
                  const at::Tensor& phi_max, const at::Tensor& c_max, double alpha_r, double alpha_phi,
                  double beta, double eps, double tau) {
  const size_t L = weights.size();
  TORCH_CHECK(grads.size() == L && phibars.size() == L && cs.size() == L, "adarad_step_: lists differ in length");
  TORCH_CHECK(L > 0, "adarad_step_: no weights");
  const auto dtype = weights[0].scalar_type();
  for (size_t l = 0; l < L; ++l) {
    TORCH_CHECK(weights[l].dim() == 2 && grads[l].sizes() == weights[l].sizes(), "adarad_step_: weight ", l,
                " must be 2-D with a gradient of its shape");
    TORCH_CHECK(phibars[l].numel() == weights[l].size(0) && cs[l].numel() == weights[l].size(0),
                "adarad_step_: state of weight ", l, " does not match its rows");
    for (const at::Tensor* t : {&weights[l], &grads[l], &phibars[l], &cs[l]}) {
      TORCH_CHECK(t->is_contiguous() && t->scalar_type() == dtype && t->device().is_cpu(),
                  "adarad_step_: tensors must be contiguous CPU tensors of one dtype");
    }
  }
  for (const at::Tensor* t : {&phi_max, &c_max}) {
    TORCH_CHECK(t->numel() == 1 && t->scalar_type() == dtype && t->device().is_cpu(),
                "adarad_step_: phi_max and c_max must be CPU scalars of the weights' dtype");
  }
  AT_DISPATCH_FLOATING_TYPES(dtype, "adarad_step_", [&] {
    adarad_step_impl<scalar_t>(weights, grads, phibars, cs, phi_max, c_max, alpha_r, alpha_phi, beta, eps, tau);
  });
}

// ------------------------------------------------------------------------------------------ CapNorm
// z: (batch, units), row-major. Column statistics are accumulated row by row (vectorised over
// units). relu = true also applies the ReLU that follows CapNorm in a hidden layer.

// CapNorm's work in blocks of columns (units), on the threads torch is given: a column's sums keep their row
// order, so the floats do not depend on the number of threads; one block where the batch is small
template <typename T, typename F>
void for_column_blocks(int64_t B, int64_t U, const F& f) {
  constexpr int64_t block = 64 / sizeof(T);  // a 64-byte line: no two threads write one line
  const int64_t blocks = (U + block - 1) / block;
  const int64_t min_blocks = std::max<int64_t>(1, 32768 / std::max<int64_t>(B * block, 1));  // ~32k elements a task
  at::parallel_for(0, blocks, min_blocks, [&](int64_t b0, int64_t b1) { f(b0 * block, std::min(U, b1 * block)); });
}

template <typename T>
void capnorm_forward_impl(const at::Tensor& z, at::Tensor& xhat, at::Tensor& out, at::Tensor& mean,
                          at::Tensor& var, const at::Tensor& running_mean, const at::Tensor& running_var,
                          const at::Tensor& fan_in_norm, double momentum, bool relu) {
  const int64_t B = z.size(0), U = z.size(1);
  const T* zp = z.data_ptr<T>();
  T* xp = xhat.data_ptr<T>();
  T* op = out.data_ptr<T>();
  T* mp = mean.data_ptr<T>();
  T* vp = var.data_ptr<T>();
  std::vector<T> scale(U);
  T* sp = scale.data();
  T* rm = running_mean.defined() ? running_mean.data_ptr<T>() : nullptr;
  T* rv = running_mean.defined() ? running_var.data_ptr<T>() : nullptr;
  const T* len = fan_in_norm.defined() ? fan_in_norm.data_ptr<T>() : nullptr;
  for_column_blocks<T>(B, U, [&](int64_t j0, int64_t j1) {
    std::fill(mp + j0, mp + j1, T(0));
    std::fill(vp + j0, vp + j1, T(0));
    for (int64_t i = 0; i < B; ++i) {
      const T* r = zp + i * U;
#pragma omp simd
      for (int64_t j = j0; j < j1; ++j) mp[j] += r[j];
    }
    for (int64_t j = j0; j < j1; ++j) mp[j] /= T(B);
    for (int64_t i = 0; i < B; ++i) {  // two passes: the variance of the centred values
      const T* r = zp + i * U;
#pragma omp simd
      for (int64_t j = j0; j < j1; ++j) vp[j] += (r[j] - mp[j]) * (r[j] - mp[j]);
    }
    for (int64_t j = j0; j < j1; ++j) {
      vp[j] /= T(B);
      sp[j] = cap_scale(vp[j]);
    }
    for (int64_t i = 0; i < B; ++i) {
      const T* r = zp + i * U;
      T* x = xp + i * U;
#pragma omp simd
      for (int64_t j = j0; j < j1; ++j) x[j] = (r[j] - mp[j]) * sp[j];
      if (relu) {
        T* o = op + i * U;
#pragma omp simd
        for (int64_t j = j0; j < j1; ++j) {
          const T xv = x[j];
          o[j] = xv < 0 ? T(0) : xv;  // NaN stays NaN, as in torch.relu
        }
      }
    }
    if (rm != nullptr) {  // BatchNorm-style running averages, per unit of fan-in length if given
      for (int64_t j = j0; j < j1; ++j) {
        const T l = len == nullptr ? T(1) : (len[j] == 0 ? T(1) : len[j]);  // a zero fan-in (z = 0) stores 0
        rm[j] += T(momentum) * (mp[j] / l - rm[j]);
        rv[j] += T(momentum) * (vp[j] / (l * l) - rv[j]);
      }
    }
  });
}

// returns (out, xhat, var): out = xhat, or relu(xhat); xhat = (z - mean) / max(sigma, 1)
std::tuple<at::Tensor, at::Tensor, at::Tensor> capnorm_forward_(const at::Tensor& z,
                                                                const c10::optional<at::Tensor>& running_mean,
                                                                const c10::optional<at::Tensor>& running_var,
                                                                const c10::optional<at::Tensor>& fan_in_norm,
                                                                double momentum, bool relu) {
  TORCH_CHECK(z.dim() == 2 && z.is_contiguous() && z.device().is_cpu(), "capnorm_forward_: z must be a contiguous 2-D CPU tensor");
  const int64_t U = z.size(1);
  at::Tensor rm = running_mean.value_or(at::Tensor()), rv = running_var.value_or(at::Tensor()),
             len = fan_in_norm.value_or(at::Tensor());
  for (const at::Tensor* t : {&rm, &rv, &len}) {
    TORCH_CHECK(!t->defined() || (t->numel() == U && t->is_contiguous() && t->scalar_type() == z.scalar_type()),
                "capnorm_forward_: running statistics and fan-in lengths must be contiguous, one per unit, of z's dtype");
  }
  TORCH_CHECK(rm.defined() == rv.defined(), "capnorm_forward_: give both running statistics or neither");
  at::Tensor xhat = at::empty_like(z), out = relu ? at::empty_like(z) : xhat;
  at::Tensor mean = at::empty({U}, z.options()), var = at::empty({U}, z.options());
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "capnorm_forward_", [&] {
    capnorm_forward_impl<scalar_t>(z, xhat, out, mean, var, rm, rv, len, momentum, relu);
  });
  return {out, xhat, var};
}

// with e = dy (or dy [xhat > 0] after a ReLU): dz = s (e - mean(e) - k xhat mean(e xhat)),
// s = 1 / max(sigma, 1), k = [var > 1]
template <typename T>
void capnorm_backward_impl(const at::Tensor& dy, const at::Tensor& xhat, const at::Tensor& var, bool relu,
                           at::Tensor& dz) {
  const int64_t B = xhat.size(0), U = xhat.size(1);
  const T* g = dy.data_ptr<T>();
  const T* xp = xhat.data_ptr<T>();
  const T* v = var.data_ptr<T>();
  T* d = dz.data_ptr<T>();
  std::vector<T> mean_e(U, T(0)), projection(U, T(0)), scale(U);
  T* me = mean_e.data();
  T* pr = projection.data();
  T* sp = scale.data();
  for_column_blocks<T>(B, U, [&](int64_t j0, int64_t j1) {
    for (int64_t i = 0; i < B; ++i) {
      const T* gr = g + i * U;
      const T* x = xp + i * U;
      if (relu) {
#pragma omp simd
        for (int64_t j = j0; j < j1; ++j) {
          const T gv = gr[j], xv = x[j];  // loads first: a conditional load blocks vectorisation
          const T e = xv > 0 ? gv : T(0);
          me[j] += e;
          pr[j] += e * xv;
        }
      } else {
#pragma omp simd
        for (int64_t j = j0; j < j1; ++j) {
          me[j] += gr[j];
          pr[j] += gr[j] * x[j];
        }
      }
    }
    for (int64_t j = j0; j < j1; ++j) {
      me[j] /= T(B);
      pr[j] = v[j] > 1 ? pr[j] / T(B) : T(0);
      sp[j] = cap_scale(v[j]);
    }
    for (int64_t i = 0; i < B; ++i) {
      const T* gr = g + i * U;
      const T* x = xp + i * U;
      T* dr = d + i * U;
      if (relu) {
#pragma omp simd
        for (int64_t j = j0; j < j1; ++j) {
          const T gv = gr[j], xv = x[j];
          dr[j] = ((xv > 0 ? gv : T(0)) - me[j] - xv * pr[j]) * sp[j];
        }
      } else {
#pragma omp simd
        for (int64_t j = j0; j < j1; ++j) dr[j] = (gr[j] - me[j] - x[j] * pr[j]) * sp[j];
      }
    }
  });
}

at::Tensor capnorm_backward(const at::Tensor& dy_in, const at::Tensor& xhat, const at::Tensor& var, bool relu) {
  const at::Tensor dy = dy_in.contiguous();
  TORCH_CHECK(dy.sizes() == xhat.sizes() && xhat.is_contiguous() && var.numel() == xhat.size(1) &&
                  dy.scalar_type() == xhat.scalar_type() && var.scalar_type() == xhat.scalar_type(),
              "capnorm_backward: dy and xhat must have one shape and dtype, var one value per unit");
  at::Tensor dz = at::empty_like(xhat);
  AT_DISPATCH_FLOATING_TYPES(xhat.scalar_type(), "capnorm_backward",
                             [&] { capnorm_backward_impl<scalar_t>(dy, xhat, var, relu, dz); });
  return dz;
}

// ------------------------------------------------------------------------------------ dead units
// Number of all-zero rows (fan-ins shrunk to exactly zero) of each weight: the per-step check
// before removal (Algorithm 1 lines 18-19) without a tensor op per layer.
std::vector<int64_t> count_zero_rows(at::TensorList weights) {
  std::vector<int64_t> counts;
  for (const at::Tensor& w_in : weights) {
    const at::Tensor w = w_in.contiguous();
    TORCH_CHECK(w.dim() == 2 && w.device().is_cpu(), "count_zero_rows: weights must be 2-D CPU tensors");
    int64_t count = 0;
    AT_DISPATCH_FLOATING_TYPES(w.scalar_type(), "count_zero_rows", [&] {
      const scalar_t* p = w.data_ptr<scalar_t>();
      const int64_t m = w.size(0), n = w.size(1);
      for (int64_t i = 0; i < m; ++i) {
        const scalar_t* r = p + i * n;
        count += std::all_of(r, r + n, [](scalar_t v) { return v == 0; });
      }
    });
    counts.push_back(count);
  }
  return counts;
}

// The number of threads at::parallel_for runs this library's kernels on (each runs one chunk): torch's thread
// count where the build uses torch's OpenMP runtime, 1 where it has no OpenMP (a plain loop), and another
// runtime's count where it linked a second one
int64_t parallel_threads() {
  std::atomic<int64_t> chunks{0};
  at::parallel_for(0, 1024, 1, [&](int64_t, int64_t) { chunks.fetch_add(1); });
  return chunks.load();
}

// CapNorm of a training batch with its backward, as one autograd op: no Python between the two kernels
class CapNormTrain : public torch::autograd::Function<CapNormTrain> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& z,
                            const c10::optional<at::Tensor>& running_mean, const c10::optional<at::Tensor>& running_var,
                            const c10::optional<at::Tensor>& fan_in_norm, double momentum, bool relu) {
    auto [out, xhat, var] = capnorm_forward_(z.contiguous(), running_mean, running_var, fan_in_norm, momentum, relu);
    ctx->save_for_backward({xhat, var});
    ctx->saved_data["relu"] = relu;
    return out;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    TORCH_CHECK(!at::GradMode::is_enabled(), "npnn::capnorm_train has no double backward (its backward is a "
                "kernel); use the eager CapNorm (npnn.fused.use(False)) for higher derivatives");
    const auto saved = ctx->get_saved_variables();
    at::Tensor dz = capnorm_backward(grads[0].contiguous(), saved[0], saved[1], ctx->saved_data["relu"].toBool());
    return {dz, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor capnorm_train(const at::Tensor& z, const c10::optional<at::Tensor>& running_mean,
                         const c10::optional<at::Tensor>& running_var, const c10::optional<at::Tensor>& fan_in_norm,
                         double momentum, bool relu) {
  return CapNormTrain::apply(z, running_mean, running_var, fan_in_norm, momentum, relu);
}

}  // namespace

TORCH_LIBRARY(npnn, m) {
  m.def("adarad_step_(Tensor(a!)[] weights, Tensor[] grads, Tensor(b!)[] phibar, Tensor(c!)[] c, "
        "Tensor(d!) phi_max, Tensor(e!) c_max, float alpha_r, float alpha_phi, float beta, float eps, float tau) -> ()");
  m.def("count_zero_rows(Tensor[] weights) -> int[]");
  m.def("parallel_threads() -> int", &parallel_threads);
  m.def("capnorm_train(Tensor z, Tensor(a!)? running_mean, Tensor(b!)? running_var, Tensor? fan_in_norm, "
        "float momentum, bool relu) -> Tensor",
        &capnorm_train);  // CompositeImplicitAutograd: the autograd function above records the graph
}

TORCH_LIBRARY_IMPL(npnn, CPU, m) {
  m.impl("adarad_step_", &adarad_step_);
  m.impl("count_zero_rows", &count_zero_rows);
}
