"""Temporary: forward/backward times of the kernels over launch shapes (deleted after tuning)."""
import sys, torch, triton.testing, json, os
from aft import kernels as K
from aft.kernels.banded import Blocks
dev = "cuda"
res = []
copy_src = torch.empty(1 << 28, device=dev); copy_dst = torch.empty_like(copy_src)
copy = 2 * copy_src.nbytes / (triton.testing.do_bench(lambda: copy_dst.copy_(copy_src), return_mode="median") * 1e-3)
print("copy TB/s", copy / 1e12)
def bench(name, fn, B, T, D, blocks):
    g = torch.Generator(device="cpu").manual_seed(0)
    x = [torch.randn(B, T, D, generator=g).to(dev).requires_grad_() for _ in range(3)]
    out = fn(*x, blocks); gr = torch.randn_like(out)
    f = triton.testing.do_bench(lambda: fn(*x, blocks), return_mode="median")
    b = triton.testing.do_bench(lambda: torch.autograd.grad(out, x, gr, retain_graph=True), return_mode="median")
    N = B * T * D * 4
    r = dict(name=name, shape=[B, T, D], blocks=[blocks.t, blocks.d, blocks.chunks, blocks.warps], fwd_ms=f, bwd_ms=b,
             fwd_frac=5 * N / (f * 1e-3) / copy, bwd_frac=9 * N / (b * 1e-3) / copy)
    print(f"{name:12} {str(r['shape']):18} {str(r['blocks']):18} fwd {f:7.3f} ms {r['fwd_frac']:5.1%}  bwd {b:7.3f} ms {r['bwd_frac']:5.1%}", flush=True)
    res.append(r)
T = 16384
u = torch.randn(T, 64, device=dev) * 0.1
ops = {
  "simple_c": lambda q, k, v, bl: K.aft_simple(q, k, v, True, bl),
  "local32_c": lambda q, k, v, bl: K.aft_local(q, k, v, (u, u), 32, True, bl),
}
configs = [(32, 32, None, 4), (32, 32, 1, 4), (64, 32, 1, 4), (32, 16, 1, 4), (16, 32, 1, 2), (64, 64, 2, 8), (32, 64, 2, 4), (64, 16, 1, 4), (32, 16, 2, 4)]
for name, fn in ops.items():
    for t, d, c, w in configs:
        bench(name, fn, 4, T, 1024, Blocks(t, d, c, w))
for name, fn in ops.items():
    for t, d, c, w in [(32, 16, None, 4), (32, 16, 2, 4), (64, 16, None, 4), (32, 32, None, 4)]:
        bench(name, fn, 4, T, 256, Blocks(t, d, c, w))
nc = {"simple_nc": lambda q, k, v, bl: K.aft_simple(q, k, v, False, bl),
      "local32_nc": lambda q, k, v, bl: K.aft_local(q, k, v, (u, u), 32, False, bl),
      "local256_c": lambda q, k, v, bl: K.aft_local(q, k, v, (u, u), 256, True, bl)}
for name, fn in nc.items():
    for t, d, c, w in [(32, 32, None, 4), (32, 16, 1, 4)]:
        bench(name, fn, 4, T, 1024, Blocks(t, d, c, w))
json.dump(res, open(os.path.join(os.environ.get("OUT", "/tmp"), "tune.json"), "w"), indent=1)
