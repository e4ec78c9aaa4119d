"""Median time of one torch 1.13 optimizer.step() on one fp32 tensor of N
elements (foreach=False), printed in milliseconds. Run with glibc's malloc
tuned as bench/kernels.sh does, so torch is at its best.

usage: torch_step.py OPTIMIZER N THREADS"""
import statistics
import sys
import time

import torch

name, n, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(threads)
torch.manual_seed(0)
p = torch.nn.Parameter(torch.rand(n) * 2 - 1)
p.grad = (torch.rand(n) - 0.5) * 2e-3
make = {
    "sgd": lambda: torch.optim.SGD([p], lr=0.01, momentum=0.9, weight_decay=0.01, foreach=False),
    "adam": lambda: torch.optim.Adam([p], lr=0.01, weight_decay=0.01, foreach=False),
    "adamw": lambda: torch.optim.AdamW([p], lr=0.01, weight_decay=0.01, foreach=False),
}[name]
opt = make()
times = []
for i in range(17):
    t0 = time.perf_counter()
    opt.step()
    t1 = time.perf_counter()
    if i >= 2:
        times.append((t1 - t0) * 1e3)
print("%.3f" % statistics.median(times))
