import os

import numpy as np
import torch

import optimd
from optimd.torch import RemoteOptimizer

url = os.environ.get("OPTIMD_URL", optimd.DEFAULT_URL)

# 1. The protocol, op by op: minimise |w - target|^2 with Adam in the daemon.
with optimd.Client(url, timeout=10) as client:
    print(client.hello())
    session = client.open("quickstart", "adam", {"lr": 0.1})
    target = np.array([1.0, -2.0, 3.0], dtype=np.float32)
    w = np.zeros(3, dtype=np.float32)
    client.register(session, {"w": w})
    for _ in range(200):
        w = client.step(session, {"w": 2 * (w - target)}).params["w"]
    print("w =", w, "after", client.info(session).steps, "steps")
    client.close_session(session)

# 2. A torch model trained by the daemon, with a torch LR scheduler.
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
x, y = torch.randn(256, 4), torch.randn(256, 1)
opt = RemoteOptimizer(model.parameters(), "adamw", server=url, lr=1e-2, weight_decay=0.01)
sched = torch.optim.lr_scheduler.StepLR(opt, step_size=50, gamma=0.5)
for _ in range(100):
    opt.zero_grad()
    loss = torch.nn.functional.mse_loss(model(x), y)
    loss.backward()
    opt.step()
    sched.step()
print(f"loss {loss.item():.4f}, lr {opt.param_groups[0]['lr']}")
opt.delete_sessions()
opt.close()
