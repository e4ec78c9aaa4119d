"""Reference implementations of the optimd optimizers that torch 1.13 lacks.

torch 1.13 has no Lion, Adan or AdEMAMix, so tests/parity compares those
plugins with the classes below: independent implementations written with
torch 1.13 tensor ops, following the published formula in the op order of
each method's reference implementation (named per class). They are plain
torch.optim.Optimizer subclasses, so torch_reference.py drives them like
torch's own: same gradients, same state comparison (state keys are the
reference implementation's), constructor defaults read from the signature.

Where the reference implementation is not single-tensor torch code, or
keeps its step counter per group, the differences are noted per class. The
step counter here is per parameter, as optimd's host keeps it.
Nothing here is torch's own code; every update is a sequence of torch ops
whose CPU rounding tests/parity's plugins reproduce (reference §1.1).
"""

import math

import torch


class Lion(torch.optim.Optimizer):
    """Lion, in lucidrains/lion-pytorch's update_fn order: decay, sign of the
    interpolation, step, then the momentum update."""

    def __init__(self, params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0, foreach=None):
        super().__init__(params, dict(lr=lr, betas=betas, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            lr, wd = group["lr"], group["weight_decay"]
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                state = self.state[p]
                if len(state) == 0:
                    state["exp_avg"] = torch.zeros_like(p)
                exp_avg = state["exp_avg"]
                p.mul_(1 - lr * wd)
                update = exp_avg.clone().mul_(beta1).add(grad, alpha=1 - beta1).sign_()
                p.add_(update, alpha=-lr)
                exp_avg.mul_(beta2).add_(grad, alpha=1 - beta2)


class Adan(torch.optim.Optimizer):
    """Adan, sail-sg/Adan's _single_tensor_adan. max_grad_norm (a global
    pre-clip over all parameters) is not part of the plugin and is left out
    here; the step counter is per parameter (sail-sg: per group)."""

    def __init__(self, params, lr=1e-3, betas=(0.98, 0.92, 0.99), eps=1e-8,
                 weight_decay=0.0, no_prox=False, foreach=None):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps,
                                      weight_decay=weight_decay, no_prox=no_prox))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            lr, wd, eps = group["lr"], group["weight_decay"], group["eps"]
            beta1, beta2, beta3 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                state = self.state[p]
                if len(state) == 0:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                    state["exp_avg_diff"] = torch.zeros_like(p)
                state["step"] += 1
                step = state["step"]
                if step == 1:
                    state["neg_pre_grad"] = grad.clone().mul_(-1.0)
                bias_correction1 = 1.0 - beta1 ** step
                bias_correction2 = 1.0 - beta2 ** step
                bias_correction3_sqrt = math.sqrt(1.0 - beta3 ** step)
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                exp_avg_diff, neg_grad_or_diff = state["exp_avg_diff"], state["neg_pre_grad"]

                neg_grad_or_diff.add_(grad)
                exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
                exp_avg_diff.mul_(beta2).add_(neg_grad_or_diff, alpha=1 - beta2)
                neg_grad_or_diff.mul_(beta2).add_(grad)
                exp_avg_sq.mul_(beta3).addcmul_(neg_grad_or_diff, neg_grad_or_diff,
                                                value=1 - beta3)
                denom = (exp_avg_sq.sqrt() / bias_correction3_sqrt).add_(eps)
                step_size_diff = lr * beta2 / bias_correction2
                step_size = lr / bias_correction1
                if group["no_prox"]:
                    p.mul_(1 - lr * wd)
                    p.addcdiv_(exp_avg, denom, value=-step_size)
                    p.addcdiv_(exp_avg_diff, denom, value=-step_size_diff)
                else:
                    p.addcdiv_(exp_avg, denom, value=-step_size)
                    p.addcdiv_(exp_avg_diff, denom, value=-step_size_diff)
                    p.div_(1 + lr * wd)
                neg_grad_or_diff.zero_().add_(grad, alpha=-1.0)


def _linear_warmup(step, alpha_end, alpha_start=0, warmup=1):
    if step < warmup:
        a = step / float(warmup)
        return (1.0 - a) * alpha_start + a * alpha_end
    return alpha_end


def _linear_hl_warmup(step, beta_end, beta_start=0, warmup=1):
    def f(beta, eps=1e-8):
        return math.log(0.5) / math.log(beta + eps) - 1

    def f_inv(t):
        return math.pow(0.5, 1 / (t + 1))

    if step < warmup:
        a = step / float(warmup)
        return f_inv((1.0 - a) * f(beta_start) + a * f(beta_end))
    return beta_end


class AdEMAMix(torch.optim.Optimizer):
    """AdEMAMix, apple/ml-ademamix's AdEMAMix.step. The warmups' None is 0
    here (a warmup of 0 steps is no warmup in the reference too)."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999, 0.9999), alpha=2.0,
                 beta3_warmup=0, alpha_warmup=0, eps=1e-8, weight_decay=0.0, foreach=None):
        super().__init__(params, dict(lr=lr, betas=betas, alpha=alpha,
                                      beta3_warmup=beta3_warmup, alpha_warmup=alpha_warmup,
                                      eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            lr, lmbda, eps = group["lr"], group["weight_decay"], group["eps"]
            beta1, beta2, beta3_final = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                state = self.state[p]
                if len(state) == 0:
                    state["step"] = 0
                    state["exp_avg_fast"] = torch.zeros_like(p) if beta1 != 0.0 else None
                    state["exp_avg_slow"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                exp_avg_fast = state["exp_avg_fast"]
                exp_avg_slow, exp_avg_sq = state["exp_avg_slow"], state["exp_avg_sq"]
                state["step"] += 1
                step = state["step"]
                bias_correction1 = 1 - beta1 ** step
                bias_correction2 = 1 - beta2 ** step
                alpha = group["alpha"]
                if group["alpha_warmup"]:
                    alpha = _linear_warmup(step, alpha, 0, group["alpha_warmup"])
                beta3 = beta3_final
                if group["beta3_warmup"]:
                    beta3 = _linear_hl_warmup(step, beta3_final, beta1, group["beta3_warmup"])
                if beta1 != 0.0:
                    exp_avg_fast.mul_(beta1).add_(grad, alpha=1 - beta1)
                else:
                    exp_avg_fast = grad
                exp_avg_slow.mul_(beta3).add_(grad, alpha=1 - beta3)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                denom = (exp_avg_sq.sqrt() / math.sqrt(bias_correction2)).add_(eps)
                update = (exp_avg_fast.div(bias_correction1) + alpha * exp_avg_slow) / denom
                update.add_(p, alpha=lmbda)
                p.add_(-lr * update)


OPTIMIZERS = {"lion": Lion, "adan": Adan, "ademamix": AdEMAMix}
