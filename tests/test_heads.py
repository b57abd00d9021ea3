"""KL heads as parts: one interface, their own state, and a head of the user's own through the public API."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from icl_fungi import FeatureConfig, ICLRetriever, KLHead, register_kl_head
from icl_fungi.features import LabelMeanHead, NeighborsHead, PrototypeHead, RandomHead, registered_kl_heads
from icl_fungi.features.heads import kl_head_class

from .helpers import random_unit


class MarginHead(KLHead):
    """A head of the user's own: rows are the label means, logits are scaled cosine margins to the best row."""

    name = "test-margin"
    needs_labels = True
    default_temperature = 0.1

    def fit_rows(self, z, labels=None):
        ids = {lab: i for i, lab in enumerate(dict.fromkeys(labels))}
        rows = torch.zeros(len(ids), z.shape[1]).index_add_(0, torch.tensor([ids[x] for x in labels]), z)
        self.rows_ = F.normalize(rows, dim=-1)

    def logits(self, z):
        cos = z @ self.rows_.T
        return (cos - cos.max(dim=-1, keepdim=True).values.detach()) / self.temperature


register_kl_head(MarginHead)


def test_the_four_heads_are_registered_classes():
    assert set(registered_kl_heads()) >= {"labels", "neighbors", "prototypes", "random"}
    assert [kl_head_class(n) for n in ("labels", "neighbors", "prototypes", "random")] == [
        LabelMeanHead, NeighborsHead, PrototypeHead, RandomHead]
    with pytest.raises(ValueError, match="unknown KL head 'nope'"):
        kl_head_class("nope")
    with pytest.raises(ValueError, match="kl_head must be one of"):
        FeatureConfig(kl_head="nope")
    with pytest.raises(TypeError, match="KLHead subclass"):
        register_kl_head(dict)


@pytest.mark.parametrize("name", ["labels", "neighbors", "prototypes", "random", "test-margin"])
def test_every_head_saves_and_loads_its_own_state(tmp_path, name):
    z, labels = torch.from_numpy(random_unit(40, 8, 0)), [f"l{i % 4}" for i in range(40)]
    head = kl_head_class(name)(8, n_rows=5, seed=3).fit(z, labels)
    head.save(tmp_path / name)
    back = KLHead.load(tmp_path / name)
    assert type(back) is type(head) and back.config() == head.config()
    q = torch.from_numpy(random_unit(6, 8, 1)).requires_grad_(True)
    (g1,) = torch.autograd.grad(head.loss(q), q)
    (g2,) = torch.autograd.grad(back.loss(q), q)
    torch.testing.assert_close(g1, g2, rtol=0, atol=0)
    assert float(head.loss(q.detach())) <= 0.0  # minus an entropy


def test_head_state_is_checked_on_load(tmp_path):
    head = LabelMeanHead(8).fit(torch.from_numpy(random_unit(20, 8, 0)), ["a", "b"] * 10)
    head.save(tmp_path / "h")
    np.save(tmp_path / "h" / "rows.npy", np.zeros((2, 7), np.float32))
    with pytest.raises(ValueError, match=r"shape \(n, 8\)"):
        KLHead.load(tmp_path / "h")
    (tmp_path / "h" / "center.npy").unlink()
    np.save(tmp_path / "h" / "rows.npy", np.zeros((2, 8), np.float32))
    with pytest.raises(ValueError, match="lacks a centre"):
        KLHead.load(tmp_path / "h")


def test_users_head_builds_saves_and_loads_a_retriever(tmp_path, st_model, intent_pool, intent_queries):
    texts, labels = intent_pool
    r = ICLRetriever.from_texts(texts, labels, model=st_model, features=("embedding", "kl"), kl_head="test-margin",
                                show_progress_bar=False)
    assert isinstance(r.encoder.head, MarginHead) and r.encoder.head.rows_.shape == (12, 384)
    assert r.config.kl_tau == 0.1 and not r.config.kl_centered
    back = ICLRetriever.load(r.save(tmp_path / "r"), model=st_model)
    assert isinstance(back.encoder.head, MarginHead)
    q = intent_queries[0][:5]
    np.testing.assert_array_equal(back.vectors(q), r.vectors(q))
    plain = ICLRetriever.from_texts(texts, labels, model=st_model, features=("embedding", "kl"), show_progress_bar=False)
    assert not np.allclose(plain.vectors(q), r.vectors(q), atol=1e-3)  # the head really changes the features
