from __future__ import annotations

import numpy as np
import pytest

from icl_fungi import ICLRetriever
from icl_fungi.combine import AUTO_KL_ANCHORS, BlockCombiner

from .helpers import unit_rows


def _blocks(spread: float, n_labels: int = 8, per_label: int = 25, seed: int = 0) -> tuple[dict, list]:
    """Embeddings clustered by label (tighter clusters for smaller ``spread``) and a random KL block."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_labels, 16))
    labels = [f"l{i}" for i in range(n_labels) for _ in range(per_label)]
    emb = np.repeat(centres, per_label, axis=0) + spread * rng.standard_normal((n_labels * per_label, 16))
    return {"embedding": emb.astype(np.float32), "kl": rng.standard_normal((len(labels), 16)).astype(np.float32)}, labels


@pytest.mark.parametrize(("spread", "weight"), [(0.01, AUTO_KL_ANCHORS[1][1]), (100.0, AUTO_KL_ANCHORS[0][1])])
def test_auto_weights_follow_how_well_the_embedding_groups_labels(spread, weight):
    blocks, labels = _blocks(spread)
    comb = BlockCombiner(("embedding", "kl")).fit(blocks)
    got = comb.auto_weights(blocks, labels)
    assert comb.weights["kl"] == weight == got["weights"]["kl"] and got["k"] == 20
    assert (got["loo_p@k"] > 0.99) if spread < 1 else (got["loo_p@k"] < 0.3)


def test_auto_weights_interpolate_and_use_a_k_the_labels_allow():
    blocks, labels = _blocks(1.2, per_label=6)
    comb = BlockCombiner(("embedding", "kl")).fit(blocks)
    got = comb.auto_weights(blocks, labels)
    assert got["k"] == 5  # six examples per label: five same-label neighbours at most
    (p_lo, w_hi), (p_hi, w_lo) = AUTO_KL_ANCHORS
    assert comb.weights["kl"] == round(float(np.interp(got["loo_p@k"], [p_lo, p_hi], [w_hi, w_lo])), 3)
    assert comb.weights["embedding"] == 1.0


def test_auto_weights_leave_other_block_sets_alone():
    blocks, labels = _blocks(0.01)
    comb = BlockCombiner(("embedding",)).fit({"embedding": blocks["embedding"]})
    assert comb.auto_weights({"embedding": blocks["embedding"]}, labels)["loo_p@k"] is None
    assert comb.weights == {"embedding": 1.0}
    with pytest.raises(ValueError, match="fit_weights must be one of"):
        comb.choose_weights("best", blocks, labels)


def test_auto_weights_keep_a_kl_weight_the_caller_gave():
    blocks, labels = _blocks(100.0)  # auto alone would choose the largest weight
    comb = BlockCombiner(("embedding", "kl"), weights={"kl": 0.1}).fit(blocks)
    assert comb.auto_weights(blocks, labels)["loo_p@k"] is None and comb.weights["kl"] == 0.1
    given_other = BlockCombiner(("embedding", "kl"), weights={"embedding": 2.0}).fit(blocks)
    given_other.auto_weights(blocks, labels)
    assert given_other.weights == {"embedding": 2.0, "kl": AUTO_KL_ANCHORS[0][1]}


def test_retriever_with_automatic_weights_saves_and_loads_them(intent_pool, st_model, tmp_path):
    texts, labels = intent_pool
    r = ICLRetriever.from_texts(texts, labels, model=st_model, show_progress_bar=False)  # the defaults: embedding + KL, auto
    assert r.config.features == ("embedding", "kl") and r.fit_weights == "auto"
    (fit,) = r.weight_search_
    # the weight follows from the pool's own embedding, recomputed here: leave-one-out P@9 (ten texts per intent)
    # of the unit embeddings centred on the pool mean
    emb = unit_rows(st_model.encode(texts, normalize_embeddings=True))
    emb = unit_rows(emb - emb.mean(0))
    sims = emb @ emb.T
    np.fill_diagonal(sims, -np.inf)
    lab = np.array(labels)
    p_at_9 = float((lab[np.argsort(-sims, axis=1)[:, :9]] == lab[:, None]).mean())
    assert fit["k"] == 9 and fit["loo_p@k"] == pytest.approx(p_at_9, abs=0.005)
    (p_lo, w_hi), (p_hi, w_lo) = AUTO_KL_ANCHORS
    assert r.block_weights == fit["weights"]
    assert r.block_weights["kl"] == pytest.approx(float(np.interp(p_at_9, [p_lo, p_hi], [w_hi, w_lo])), abs=0.005)
    back = ICLRetriever.load(r.save(tmp_path / "auto"), model=st_model)
    assert back.block_weights == r.block_weights and back.fit_weights == "auto"
    assert [x.index for x in back.retrieve("card arrival", 5)] == [x.index for x in r.retrieve("card arrival", 5)]
