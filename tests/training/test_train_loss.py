"""The training objective of one micro-batch (aft/training/trainer.py ``_train_loss``)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from aft.training.trainer import _train_loss

CPU = torch.device("cpu")


def test_label_smoothing_applies_without_mixup() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 5))
    images, labels = torch.randn(6, 3, 2, 2), torch.tensor([0, 1, 2, 3, 4, 0])
    data = SimpleNamespace(task="classification", label_smoothing=0.1)
    loss, count = _train_loss(model, (images, labels), data, None, CPU)
    logits = model(images)
    assert count == 6
    assert loss.item() == pytest.approx(F.cross_entropy(logits, labels, label_smoothing=0.1).item())
    assert loss.item() != pytest.approx(F.cross_entropy(logits, labels).item())
