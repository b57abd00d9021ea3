from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from icl_fungi.features import DEFAULT_MODEL, FeatureConfig, FungiEncoder, MeanPooledModel, resolve_model
from icl_fungi.features.heads import spherical_kmeans
from icl_fungi.features.views import delete_words

TEXTS = [
    "I still haven't received my card",
    "how do I top up with apple pay?",
    "My transfer was declined, why?",
    "what is the exchange rate for euros",
]


@pytest.fixture(scope="module")
def encoder(st_model, intent_pool):
    enc = FungiEncoder(st_model, FeatureConfig(features=("embedding", "kl", "simclr")), show_progress_bar=False)
    return enc.fit(*intent_pool)


def _weight_grad_reference(enc: FungiEncoder, loss_fn) -> np.ndarray:
    """Per-text gradient via autograd on the real weight (the slow, obvious way)."""
    layer = enc.target.module
    layer.weight.requires_grad_(True)
    layer.bias.requires_grad_(True)
    try:
        with torch.enable_grad():
            loss = loss_fn()
            gw, gb = torch.autograd.grad(loss, [layer.weight, layer.bias])
    finally:
        layer.weight.requires_grad_(False)
        layer.bias.requires_grad_(False)
    return torch.cat([gw, gb[:, None]], dim=1).numpy()


def _reference_feature(enc: FungiEncoder, block: str, loss_fn) -> np.ndarray:
    """The unit feature of ``block`` built from the autograd gradient of ``loss_fn`` through the block's projection."""
    ref = enc.projections[block].transform_matrices(_weight_grad_reference(enc, loss_fn)[None])[0]
    return ref / np.linalg.norm(ref)


def _head_entropy(z: torch.Tensor, head: torch.Tensor, tau: float) -> torch.Tensor:
    """Minus the entropy of ``softmax(z @ head.T / tau)`` (the loss of the label-mean, prototype and random heads)."""
    logp = F.log_softmax(z @ head.T / tau, dim=-1)
    return (logp.exp() * logp).sum()


def _neighbor_entropy(z: torch.Tensor, head: torch.Tensor, rows: torch.Tensor, tau: float, skip: int | None = None):
    """Minus the entropy of the soft k-NN label probabilities, written out label by label (row ``skip`` left out)."""
    keep = [i for i in range(len(head)) if i != skip]
    p = F.softmax(z @ head[keep].T / tau, dim=-1)[0]
    probs = torch.stack([p[rows[keep] == c].sum() for c in range(int(rows.max()) + 1)])
    return (probs * torch.log(probs.clamp_min(1e-12))).sum()


def test_default_model_resolves_to_packaged_folder():
    path = resolve_model(DEFAULT_MODEL)
    assert path != DEFAULT_MODEL and path.endswith("model")
    assert resolve_model("some/other-model") == "some/other-model"


def test_blocks_shapes_normalised_and_single_string(encoder):
    blocks = encoder.encode(TEXTS)
    assert sorted(blocks) == ["embedding", "kl", "simclr"]
    for arr in blocks.values():
        assert arr.shape == (4, 384) and arr.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(arr, axis=1), 1.0, rtol=1e-5)
    one = encoder.encode(TEXTS[0])
    assert one["kl"].shape == (384,)
    # the gradient blocks carry information beyond the embedding and differ per text
    assert np.abs(blocks["kl"][0] - blocks["kl"][1]).max() > 1e-3
    assert np.abs(blocks["simclr"][0] - blocks["kl"][0]).max() > 1e-3


def test_batched_gradients_equal_one_text_at_a_time(encoder):
    batch = encoder.encode(TEXTS)
    for i, text in enumerate(TEXTS):
        alone = encoder.encode([text])
        for name in batch:
            np.testing.assert_allclose(batch[name][i], alone[name][0], atol=2e-5)


def test_kl_feature_equals_autograd_reference(encoder):
    text = TEXTS[2]
    cfg = encoder.config

    def loss():
        z = F.normalize(encoder.forward(encoder.tokenize([text])), dim=-1)
        assert encoder.head.center_ is not None  # the default label-mean head works on centred embeddings
        z = F.normalize(z - encoder.head.center_, dim=-1)
        return _head_entropy(z, encoder.head.rows_, cfg.kl_tau)

    np.testing.assert_allclose(encoder.encode([text])["kl"][0], _reference_feature(encoder, "kl", loss), atol=1e-4)


@pytest.mark.parametrize("view_blocks", [None, 1])
def test_simclr_feature_equals_autograd_reference(st_model, intent_pool, view_blocks):
    enc = FungiEncoder(
        st_model, FeatureConfig(features=("simclr",), simclr_view_blocks=view_blocks), show_progress_bar=False
    ).fit(intent_pool[0][:64])
    text = TEXTS[1]
    V = enc.config.simclr_views

    def loss():
        views = enc.gradients.view_embeddings([text], None, tuple(range(V)))
        return enc.simclr.loss(F.normalize(views, dim=-1).reshape(V, 1, -1)).sum()

    np.testing.assert_allclose(enc.encode([text])["simclr"][0], _reference_feature(enc, "simclr", loss), atol=1e-4)


def test_word_deletion_simclr_feature_equals_autograd_reference(st_model, intent_pool):
    """Word-deletion views are other token sequences: the feature is the gradient summed over the views' own
    forward passes, the same as autograd on the real weight through the views' embeddings."""
    cfg = FeatureConfig(features=("embedding", "simclr"), simclr_view_mode="word_deletion", word_deletion_p=0.3)
    enc = FungiEncoder(st_model, cfg, show_progress_bar=False).fit(intent_pool[0][:64])
    text = "please tell me why my international transfer is still pending"
    V = cfg.simclr_views
    views = enc.views.texts([text], range(V))
    assert len(set(views)) == V and all(v != text for v in views)  # the views really differ

    def loss():
        z = enc.forward(enc.tokenize(views))
        return enc.simclr.loss(F.normalize(z, dim=-1).reshape(V, 1, -1)).sum()

    np.testing.assert_allclose(enc.encode([text])["simclr"][0], _reference_feature(enc, "simclr", loss), atol=1e-4)


def test_dropout_views_differ_and_are_deterministic(encoder):
    feats = encoder.tokenize(TEXTS[:1])
    with torch.no_grad():
        views = encoder.gradients.view_embeddings(TEXTS[:1], feats, (0, 1))
        again = encoder.gradients.view_embeddings(TEXTS[:1], feats, (0, 1))
        clean = encoder.forward(feats)
    assert not torch.allclose(views[0], views[1])
    assert not torch.allclose(views[0], clean[0])
    torch.testing.assert_close(views, again)


def test_same_seed_same_features_other_seed_differs(st_model, intent_pool):
    texts, labels = intent_pool[0][:40], intent_pool[1][:40]
    a = FungiEncoder(st_model, FeatureConfig(seed=1), show_progress_bar=False).fit(texts, labels).encode(TEXTS)
    b = FungiEncoder(st_model, FeatureConfig(seed=1), show_progress_bar=False).fit(texts, labels).encode(TEXTS)
    c = FungiEncoder(st_model, FeatureConfig(seed=2), show_progress_bar=False).fit(texts, labels).encode(TEXTS)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])
    np.testing.assert_array_equal(a["embedding"], c["embedding"])
    assert not np.allclose(a["kl"], c["kl"])


def test_word_deletion_views(st_model, intent_pool):
    enc = FungiEncoder(
        st_model, FeatureConfig(features=("embedding", "simclr"), simclr_view_mode="word_deletion"), show_progress_bar=False
    ).fit(intent_pool[0][:32])
    out = enc.encode(TEXTS)
    assert out["simclr"].shape == (4, 384)
    assert np.isfinite(out["simclr"]).all()
    text = "one two three four five six seven eight nine ten"
    assert delete_words(text, 0.1, 5) == delete_words(text, 0.1, 5)
    assert delete_words("single", 0.99, 1) == "single"  # never an empty view


def test_truncation_is_counted(encoder):
    long_text = "card " * 600
    out = encoder.encode([long_text, TEXTS[0]])
    assert encoder.n_truncated_ == 1
    assert np.isfinite(out["kl"]).all()


@pytest.mark.parametrize("features", [("embedding", "simclr"), ("embedding", "kl")])
def test_simclr_and_fitted_heads_need_fit(st_model, features):
    enc = FungiEncoder(st_model, FeatureConfig(features=features), show_progress_bar=False)
    with pytest.raises(RuntimeError, match="fit"):
        enc.encode(TEXTS)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"features": ("embedding", "bogus")}, "unknown feature"),
        ({"features": ()}, "at least one"),
        ({"features": ("kl", "kl")}, "duplicates"),
        ({"simclr_views": 1}, "simclr_views"),
        ({"kl_temperature": 0}, "kl_temperature"),
        ({"simclr_view_mode": "crop"}, "simclr_view_mode"),
        ({"word_deletion_p": 1.5}, "word_deletion_p"),
    ],
)
def test_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FeatureConfig(**kwargs)


def test_bad_target_layer_and_model(st_model):
    with pytest.raises(ValueError, match="no module"):
        FungiEncoder(st_model, FeatureConfig(target_layer="nope.dense"))
    with pytest.raises(ValueError, match="Linear"):
        FungiEncoder(st_model, FeatureConfig(target_layer="encoder.layer.5.output.LayerNorm"))
    with pytest.raises(ValueError, match="several"):
        FungiEncoder(st_model, FeatureConfig(target_layer="dense"))
    with pytest.raises(TypeError, match="model must be a name"):
        FungiEncoder(42)


def test_default_target_is_the_last_ffn_output_and_views_start_after_it(st_model):
    enc = FungiEncoder(st_model, show_progress_bar=False)
    assert enc.target.name.endswith("encoder.layer.5.output.dense") and enc.target.gradient_shape == (384, 1537)
    # what runs before the target in its block is replayed from the trunk pass, so its Dropout is not a view
    replayed = {n for n, m in enc.model.named_modules() if any(m is r for r in enc.gradients.replayed_modules())}
    assert {n.rsplit(".", 1)[1] if "layer.5" not in n else n.rsplit("layer.5.", 1)[1] for n in replayed} == {
        "embeddings", "attention", "intermediate", "output.dense"}
    tiled = {n.rsplit(".", 2)[-1] for n, m in enc.model.named_modules() if enc.gradients._tile.get(m)}
    assert tiled == {"attention", "dense"}  # repeated per view: only what the views' own computation reads
    assert [n for n, m in enc.model.named_modules() if any(m is v for v in enc.views.modules)] == \
        [n for n in dict(enc.model.named_modules()) if n.endswith("layer.5.output.dropout")]
    attn = FungiEncoder(st_model, FeatureConfig(target_layer="attention_output"), show_progress_bar=False)
    assert attn.target.name.endswith("layer.5.attention.output.dense")
    assert FungiEncoder(st_model, FeatureConfig(target_layer=None), show_progress_bar=False).target.name == attn.target.name
    assert len(attn.views.modules) == 2  # after the attention output: its own Dropout and the FFN's


def test_other_target_layer(st_model, intent_pool):
    cfg = FeatureConfig(features=("embedding", "kl"), target_layer="encoder.layer.4.output.dense")
    enc = FungiEncoder(st_model, cfg, show_progress_bar=False).fit(*intent_pool)
    assert enc.target.module.out_features == 384 and enc.target.module.in_features == 1536
    assert enc.encode(TEXTS)["kl"].shape == (4, 384)


def test_config_roundtrip():
    cfg = FeatureConfig(features=("embedding", "kl"), kl_temperature=3.0)
    assert FeatureConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown"):
        FeatureConfig.from_dict({**cfg.to_dict(), "bogus": 1})


def test_prototype_head_is_fitted_kmeans_and_random_head_needs_no_fit(st_model, intent_pool):
    cfg = FeatureConfig(features=("embedding", "kl"), kl_head="prototypes", kl_head_dim=16)
    enc = FungiEncoder(st_model, cfg, show_progress_bar=False)
    assert enc.needs_fit
    enc.fit(intent_pool[0])
    assert not enc.needs_fit and enc.head.rows_.shape == (16, 384)
    np.testing.assert_allclose(enc.head.rows_.norm(dim=1).numpy(), 1.0, rtol=1e-5)
    assert enc.config.kl_tau == 0.07
    rnd = FungiEncoder(st_model, FeatureConfig(features=("embedding", "kl"), kl_head="random"), show_progress_bar=False)
    assert not rnd.needs_fit and rnd.config.kl_tau == 15.0
    assert rnd.encode(TEXTS)["kl"].shape == (4, 384)
    # spherical k-means recovers well separated directions
    centres = F.normalize(torch.eye(3, 8), dim=-1)
    x = F.normalize(centres.repeat(20, 1) + 0.05 * torch.randn(60, 8, generator=torch.Generator().manual_seed(0)), dim=-1)
    found = spherical_kmeans(x, 3, seed=1)
    assert sorted((found @ centres.T).max(dim=1).values.gt(0.99).tolist()) == [True, True, True]


@pytest.mark.parametrize("features", [("embedding", "kl", "simclr"), ("embedding", "kl")])
def test_fit_encode_equals_fit_then_encode(st_model, intent_pool, features):
    """The shared trunk pass of fit_encode gives the same prototypes and features as fit() + encode()."""
    texts, labels = intent_pool[0][:120], intent_pool[1][:120]
    cfg = FeatureConfig(features=features)
    a = FungiEncoder(st_model, cfg, show_progress_bar=False)
    b = FungiEncoder(st_model, cfg, show_progress_bar=False)
    fused = a.fit_encode(texts, labels)
    plain = b.fit(texts, labels).encode(texts)
    torch.testing.assert_close(a.head.rows_, b.head.rows_, atol=1e-5, rtol=0)
    for f in cfg.features:
        np.testing.assert_allclose(fused[f], plain[f], atol=1e-4)


def test_plain_transformers_model_with_mean_pooling(st_model, intent_pool):
    """A transformers model wrapped as MeanPooledModel: MiniLM loaded with AutoModel gives the
    sentence-transformers embedding (mean pooling) and the same gradient features."""
    from transformers import AutoModel, AutoTokenizer

    path = resolve_model(DEFAULT_MODEL)
    plain = MeanPooledModel(AutoModel.from_pretrained(path), AutoTokenizer.from_pretrained(path), max_seq_length=256)
    cfg = FeatureConfig(features=("embedding", "kl", "simclr"))
    ours = FungiEncoder(plain, cfg, show_progress_bar=False)
    assert ours.target.name.endswith("encoder.layer.5.output.dense")  # the last FFN output projection
    ref = FungiEncoder(st_model, cfg, show_progress_bar=False)
    texts, labels = intent_pool[0][:64], intent_pool[1][:64]
    got, want = ours.fit_encode(texts, labels), ref.fit_encode(texts, labels)
    for f in cfg.features:
        np.testing.assert_allclose(got[f], want[f], atol=2e-4)
    with pytest.raises(TypeError, match="MeanPooledModel"):
        FungiEncoder(AutoModel.from_pretrained(path))


def test_model_without_dropout_needs_word_deletion_views(intent_pool):
    from transformers import AutoModel, AutoTokenizer

    path = resolve_model(DEFAULT_MODEL)
    model = AutoModel.from_pretrained(path)
    for module in list(model.modules()):  # a model with no Dropout modules (like Gemma 3)
        for child, sub in list(module.named_children()):
            if isinstance(sub, torch.nn.Dropout):
                setattr(module, child, torch.nn.Identity())
    plain = MeanPooledModel(model, AutoTokenizer.from_pretrained(path))
    with pytest.raises(ValueError, match="word_deletion"):
        FungiEncoder(plain, FeatureConfig(features=("embedding", "kl", "simclr")))
    enc = FungiEncoder(plain, FeatureConfig(features=("embedding", "kl", "simclr"), simclr_view_mode="word_deletion"),
                       show_progress_bar=False)
    blocks = enc.fit_encode(intent_pool[0][:40], intent_pool[1][:40])
    assert np.isfinite(blocks["simclr"]).all() and np.allclose(np.linalg.norm(blocks["simclr"], axis=1), 1, atol=1e-5)


def test_kl_center_prototypes_match_autograd_reference(st_model, intent_pool):
    """kl_center: prototypes fitted on pool-centred embeddings, logits on the centred query embedding."""
    with pytest.raises(ValueError, match="kl_center"):
        FeatureConfig(kl_head="random", kl_center=True)
    pool = intent_pool[0][:150]
    proto = FeatureConfig(features=("embedding", "kl"), kl_head="prototypes")
    assert not proto.kl_centered
    enc = FungiEncoder(st_model, dataclasses.replace(proto, kl_center=True), show_progress_bar=False).fit(pool)
    plain = FungiEncoder(st_model, proto, show_progress_bar=False).fit(pool)
    emb = torch.from_numpy(plain.encode(pool)["embedding"])
    torch.testing.assert_close(enc.head.center_, emb.mean(0), atol=1e-5, rtol=0)
    text = TEXTS[0]

    def loss():
        z = F.normalize(F.normalize(enc.forward(enc.tokenize([text])), dim=-1) - enc.head.center_, dim=-1)
        return _head_entropy(z, enc.head.rows_, enc.config.kl_tau)

    got = enc.encode([text])["kl"][0]
    np.testing.assert_allclose(got, _reference_feature(enc, "kl", loss), atol=1e-4)
    assert not np.allclose(got, plain.encode([text])["kl"][0], atol=1e-2)


@pytest.mark.parametrize("center", [None, False])
def test_labels_head_is_unit_label_means_and_matches_autograd(st_model, intent_pool, center):
    """kl_head='labels': one prototype per pool label (the unit mean of its unit embeddings, centred on the
    sample mean by default)."""
    texts, labels = intent_pool[0][:120], intent_pool[1][:120]
    cfg = FeatureConfig(features=("embedding", "kl"), kl_head="labels", kl_center=center)
    assert cfg.kl_centered is (center is None)
    enc = FungiEncoder(st_model, cfg, show_progress_bar=False)
    with pytest.raises(ValueError, match="labels"):
        enc.fit(texts)
    with pytest.raises(ValueError, match="120 texts but 3 labels"):
        enc.fit(texts, labels[:3])
    with pytest.raises(TypeError, match="hashable"):
        enc.fit(texts, [[lab] for lab in labels])
    assert enc.needs_fit and cfg.kl_tau == 0.07
    blocks = enc.fit_encode(texts, labels)
    assert enc.head.name == "labels"
    names = list(dict.fromkeys(labels))  # first-seen order
    emb = torch.from_numpy(blocks["embedding"])
    mean = emb.mean(0) if cfg.kl_centered else torch.zeros(384)
    if cfg.kl_centered:
        torch.testing.assert_close(enc.head.center_, mean, atol=1e-5, rtol=0)
        emb = F.normalize(emb - mean, dim=-1)
    else:
        assert enc.head.center_ is None
    want = torch.stack([F.normalize(emb[[i for i, lab in enumerate(labels) if lab == n]].sum(0), dim=0) for n in names])
    torch.testing.assert_close(enc.head.rows_, want, atol=1e-5, rtol=0)
    text = TEXTS[3]

    def loss():
        z = F.normalize(F.normalize(enc.forward(enc.tokenize([text])), dim=-1) - mean, dim=-1)
        return _head_entropy(z, enc.head.rows_, cfg.kl_tau)

    np.testing.assert_allclose(enc.encode([text])["kl"][0], _reference_feature(enc, "kl", loss), atol=1e-4)
    # fit() + encode() gives the same head and features as the shared pass
    other = FungiEncoder(st_model, cfg, show_progress_bar=False).fit(texts, labels)
    torch.testing.assert_close(other.head.rows_, enc.head.rows_, atol=1e-5, rtol=0)
    np.testing.assert_allclose(other.encode(texts)["kl"], blocks["kl"], atol=1e-4)


def test_neighbors_head_is_the_pool_sample_and_leaves_the_text_out(st_model, intent_pool):
    """kl_head='neighbors': the rows are the sample's centred unit embeddings with their labels; the
    loss sums the softmax over the rows per label, and a pool text (or a query identical to one) skips its own row."""
    texts, labels = intent_pool[0][:120], intent_pool[1][:120]
    cfg = FeatureConfig(features=("embedding", "kl"), kl_head="neighbors")
    assert cfg.kl_centered and cfg.kl_tau == 0.05
    enc = FungiEncoder(st_model, cfg, show_progress_bar=False)
    with pytest.raises(ValueError, match=r"neighbors.*labels"):
        enc.fit(texts)
    blocks = enc.fit_encode(texts, labels)
    assert enc.head.name == "neighbors"
    emb = torch.from_numpy(blocks["embedding"])
    mean = emb.mean(0)
    torch.testing.assert_close(enc.head.center_, mean, atol=1e-5, rtol=0)
    torch.testing.assert_close(enc.head.rows_, F.normalize(emb - mean, dim=-1), atol=1e-5, rtol=0)  # pool of 120: all rows
    names = list(dict.fromkeys(labels))
    assert enc.head.row_labels_.tolist() == [names.index(lab) for lab in labels]

    def reference(text: str, skip: int | None = None) -> np.ndarray:
        def loss():
            z = F.normalize(F.normalize(enc.forward(enc.tokenize([text])), dim=-1) - mean, dim=-1)
            return _neighbor_entropy(z, enc.head.rows_, enc.head.row_labels_, cfg.kl_tau, skip)

        return _reference_feature(enc, "kl", loss)

    np.testing.assert_allclose(enc.encode([TEXTS[3]])["kl"][0], reference(TEXTS[3]), atol=1e-4)
    i = 5
    assert texts.count(texts[i]) == 1
    np.testing.assert_allclose(blocks["kl"][i], reference(texts[i], skip=i), atol=1e-4)
    assert not np.allclose(blocks["kl"][i], reference(texts[i]), atol=1e-2)  # keeping its own row would differ
    np.testing.assert_allclose(enc.encode([texts[i]])["kl"][0], blocks["kl"][i], atol=1e-4)
    other = FungiEncoder(st_model, cfg, show_progress_bar=False).fit(texts, labels)
    np.testing.assert_allclose(other.encode(texts)["kl"], blocks["kl"], atol=1e-4)


@pytest.mark.parametrize("head", ["labels", "neighbors"])
def test_label_heads_fall_back_to_prototypes_for_free_text_labels(st_model, intent_pool, caplog, head):
    texts = intent_pool[0][:60]
    cfg = FeatureConfig(features=("embedding", "kl"), kl_head=head, kl_head_dim=8)
    with caplog.at_level("WARNING", logger="icl_fungi.encoder"):
        enc = FungiEncoder(st_model, cfg, show_progress_bar=False).fit(texts, [f"answer {i}" for i in range(60)])
    assert enc.head.name == "prototypes" and enc.head.rows_.shape == (8, 384) and not hasattr(enc.head, 'row_labels_')
    assert "falls back" in caplog.text
    one = FungiEncoder(st_model, cfg, show_progress_bar=False).fit(texts, ["same"] * 60)
    assert one.head.name == "prototypes" and np.isfinite(one.encode(TEXTS)["kl"]).all()


def test_labels_sample_is_stratified():
    """Pools over 4,096 texts: the head's sample keeps every label, even a rare one, in proportion."""
    from icl_fungi.features.heads import head_sample

    labels = ["rare"] + ["a"] * 6000 + ["b"] * 3999
    rows = head_sample(len(labels), labels, seed=0)
    assert rows == sorted(set(rows)) and 4090 <= len(rows) <= 4100
    got = [labels[i] for i in rows]
    assert got.count("rare") == 1 and abs(got.count("a") - 2458) <= 2 and abs(got.count("b") - 1638) <= 2
    assert rows == head_sample(len(labels), labels, seed=0)  # seeded
    assert head_sample(10, None, seed=0) == list(range(10))


def test_a_build_shows_the_kl_head_sample_stage_before_the_features_bar(st_model, intent_pool, capsys):
    """The trunk pass over the KL head's sample has its own bar: the features' bar no longer sits at 0 through it
    and then estimates hours from the time it lost."""
    texts, labels = intent_pool[0][:40], intent_pool[1][:40]
    FungiEncoder(st_model, FeatureConfig(), show_progress_bar=True).fit_encode(texts, labels)
    err = capsys.readouterr().err.replace("\r", "\n")
    stage, features = err.find("Encoding (KL head sample): 100%"), err.find("Encoding (features):   0%")
    assert "40/40" in err[stage: features] and 0 <= stage < features, err
