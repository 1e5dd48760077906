"""torchrun worker for tests/test_losses.py: the losses over a global batch split across ranks.

Every rank builds the same seeded global batch and tiny model, keeps its slice of the
batch, computes the local loss and backward, then averages the parameter gradients over
ranks as DDP would. Rank 0 saves the mean local loss, the averaged parameter gradients
and the gradients w.r.t. the global inputs to <outdir>/<loss>.pt.

    python -m torch.distributed.run --nproc_per_node 2 tests/dist_loss_worker.py OUTDIR
"""

import math
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

from flameclip.losses import build_loss

B_GLOBAL, P, D_IN, E = 8, 3, 12, 16
LOSS_NAMES = ("sigmoid", "softmax")


class Tiny(nn.Module):
    """Two linear towers and the learnable temperature/bias, so every input has a gradient."""

    def __init__(self):
        super().__init__()
        self.img = nn.Linear(D_IN, E)
        self.txt = nn.Linear(D_IN, E)
        # not the FLAME init (10, -10): moderate values so negatives carry gradient too
        self.log_scale = nn.Parameter(torch.tensor(math.log(5.0)))
        self.bias = nn.Parameter(torch.tensor(-2.0))

    def forward(self, x_img, x_txt):
        return (F.normalize(self.img(x_img), dim=-1), F.normalize(self.txt(x_txt), dim=-1),
                self.log_scale.exp(), self.bias)


def make_problem(seed=0):
    """The same model and global batch in every process (and in the test)."""
    torch.manual_seed(seed)
    model = Tiny()
    x_img = torch.randn(B_GLOBAL, D_IN)
    x_txt = torch.randn(B_GLOBAL, P, D_IN)
    return model, x_img, x_txt


def main(outdir):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    assert B_GLOBAL % world == 0
    b = B_GLOBAL // world

    for name in LOSS_NAMES:
        model, x_img, x_txt = make_problem()
        x_img = x_img[rank * b:(rank + 1) * b].clone().requires_grad_(True)
        x_txt = x_txt[rank * b:(rank + 1) * b].clone().requires_grad_(True)
        loss = build_loss(name)(*model(x_img, x_txt))
        loss.backward()

        # what DDP does: average parameter gradients (and here also the loss, for the check)
        grads = {}
        for pname, p in model.named_parameters():
            dist.all_reduce(p.grad)
            grads[pname] = p.grad / world
        mean_loss = loss.detach().clone()
        dist.all_reduce(mean_loss)
        mean_loss /= world
        # per-sample input gradients, collected in global order, to see they reach their owner
        gx_img = [torch.empty_like(x_img.grad) for _ in range(world)]
        gx_txt = [torch.empty_like(x_txt.grad) for _ in range(world)]
        dist.all_gather(gx_img, x_img.grad)
        dist.all_gather(gx_txt, x_txt.grad)

        if rank == 0:
            torch.save({"world": world, "loss": mean_loss, "grads": grads,
                        "x_img_grad": torch.cat(gx_img), "x_txt_grad": torch.cat(gx_txt)},
                       os.path.join(outdir, f"{name}.pt"))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
