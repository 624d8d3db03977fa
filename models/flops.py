"""Compute cost of a model: a real operator count with ``torch.utils.flop_counter``.

FlopCounterMode counts 2 FLOPs per multiply-accumulate of convolutions, matmuls and attention; element-wise
ops (BatchNorm at inference, activations, softmax, pooling) are not counted. Papers that quote "FLOPs" often
mean multiply-accumulates (MACs): divide ``count_gflops`` by 2 to compare with those.
"""
import torch
from torch.utils.flop_counter import FlopCounterMode


def count_gflops(model, size, batch_size=1):
    """GFLOPs (2 per MAC) of one forward pass of ``model`` on a (batch_size, 3, size, size) input.

    Runs in eval mode without gradients on the model's device and restores the training flag afterwards.
    """
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.zeros(batch_size, 3, size, size, device=device))
    model.train(was_training)
    return counter.get_total_flops() / 1e9
