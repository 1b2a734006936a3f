// One oneDNN convolution for scripts/bench_kernels.py --onednn (issue 16 baseline): NHWC
// activations, weights reordered once into oneDNN's preferred layout, bias + ReLU fused.
#include <oneapi/dnnl/dnnl.hpp>
#include <chrono>
#include <vector>
using namespace dnnl;
struct Conv {
  engine eng{engine::kind::cpu, 0};
  stream s{eng};
  convolution_forward prim;
  memory src, wei, bias, dst;
};
extern "C" void* odc_create(int n, int c, int h, int w, int o, int kh, int kw, int sh, int sw,
                            int ph0, int pw0, int ph1, int pw1, int dh, int dw, int g, int relu) {
  try {
    auto* cv = new Conv();
    int oh = (h + ph0 + ph1 - (dh * (kh - 1) + 1)) / sh + 1;
    int ow = (w + pw0 + pw1 - (dw * (kw - 1) + 1)) / sw + 1;
    using dt = memory::data_type; using tag = memory::format_tag;
    memory::desc src_md({n, c, h, w}, dt::f32, tag::nhwc);
    memory::desc dst_md({n, o, oh, ow}, dt::f32, tag::nhwc);
    memory::dims wd = g > 1 ? memory::dims{g, o / g, c / g, kh, kw} : memory::dims{o, c, kh, kw};
    memory::desc wei_any(wd, dt::f32, tag::any);
    memory::desc wei_plain(wd, dt::f32, g > 1 ? tag::goihw : tag::oihw);
    memory::desc bias_md({o}, dt::f32, tag::a);
    primitive_attr attr;
    if (relu) { post_ops po; po.append_eltwise(algorithm::eltwise_relu, 0.f, 0.f); attr.set_post_ops(po); }
    auto pd = convolution_forward::primitive_desc(cv->eng, prop_kind::forward_inference,
        algorithm::convolution_direct, src_md, wei_any, bias_md, dst_md, {sh, sw},
        {dh - 1, dw - 1}, {ph0, pw0}, {ph1, pw1}, attr);
    cv->src = memory(src_md, cv->eng); cv->dst = memory(dst_md, cv->eng);
    cv->bias = memory(bias_md, cv->eng);
    memory plain(wei_plain, cv->eng);
    float* p = static_cast<float*>(plain.get_data_handle());
    for (size_t i = 0; i < wei_plain.get_size() / 4; i++) p[i] = 0.01f * (i % 7);
    cv->wei = memory(pd.weights_desc(), cv->eng);
    reorder(plain, cv->wei).execute(cv->s, plain, cv->wei);  // once, at "build" time
    cv->s.wait();
    cv->prim = convolution_forward(pd);
    return cv;
  } catch (...) { return nullptr; }
}
extern "C" double odc_run(void* h, int number) {
  auto* cv = static_cast<Conv*>(h);
  auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < number; i++)
    cv->prim.execute(cv->s, {{DNNL_ARG_SRC, cv->src}, {DNNL_ARG_WEIGHTS, cv->wei},
                             {DNNL_ARG_BIAS, cv->bias}, {DNNL_ARG_DST, cv->dst}});
  cv->s.wait();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / number;
}
extern "C" void odc_free(void* h) { delete static_cast<Conv*>(h); }
