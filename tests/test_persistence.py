"""Saving and loading retrievers: identical answers, parts with their own state, integrity checks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from icl_fungi import ICLRetriever, VectorIndex

from .helpers import rewrite_manifest


@pytest.fixture(scope="module")
def simclr_retriever(intent_pool, st_model):
    """The three blocks (SimCLR is an option since 0.4.0) with fixed weights."""
    return ICLRetriever.from_texts(*intent_pool, model=st_model, features=("embedding", "kl", "simclr"), fit_weights=None,
                                   show_progress_bar=False)


@pytest.mark.parametrize("which", ["default", "simclr"])
def test_save_load_identical(which, fungi_retriever, simclr_retriever, tmp_path, st_model):
    retriever = fungi_retriever if which == "default" else simclr_retriever
    path = retriever.save(tmp_path / "r.icl")
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["format_version"] == 2 and manifest["n_examples"] == 120
    assert set(manifest["versions"]) >= {"icl_fungi", "torch", "transformers", "hnswlib"}
    assert all(len(h) == 64 for h in manifest["files"].values())
    # one folder per part, each with its own config
    assert {p.name for p in path.iterdir() if p.is_dir()} == {"encoder", "combiner", "pca", "index"}
    parts = {"kl_head", "projection_kl"} | ({"simclr", "projection_simclr"} if which == "simclr" else set())
    assert {p.name for p in (path / "encoder").iterdir() if p.is_dir()} == parts
    enc_cfg = json.loads((path / "encoder" / "config.json").read_text())
    assert enc_cfg["feature_config"]["features"] == (["embedding", "kl"] if which == "default" else ["embedding", "kl", "simclr"])
    loaded = ICLRetriever.load(path, model=st_model)
    assert loaded.block_weights == retriever.block_weights and loaded.fit_weights == retriever.fit_weights
    for q in ("card arrival", "how to top up", "exchange rate"):
        a = retriever.retrieve(q, k=10)
        b = loaded.retrieve(q, k=10)
        assert [x.index for x in a] == [x.index for x in b]
        np.testing.assert_allclose([x.score for x in a], [x.score for x in b], atol=1e-6)
    np.testing.assert_array_equal(loaded.vectors(["card arrival"]), retriever.vectors(["card arrival"]))
    # no pickle anywhere: every array loads with allow_pickle=False (an object array would raise)
    arrays = sorted(path.rglob("*.npy"))
    assert {f.parent.name for f in arrays} >= {"kl_head", "combiner", "pca", "index"}
    for f in arrays:
        assert np.load(f, allow_pickle=False).size > 0, f


def test_load_by_model_name_and_hnsw_roundtrip(intent_pool, tmp_path):
    texts, labels = intent_pool
    r = ICLRetriever.from_texts(texts, labels, features=("embedding", "kl"), index=VectorIndex(exact_threshold=10),
                                show_progress_bar=False)
    assert r.index.uses_hnsw
    r.save(tmp_path / "big")
    loaded = ICLRetriever.load(tmp_path / "big")  # the default model re-resolved from its name
    assert loaded.index.uses_hnsw and loaded.index.exact_threshold == 10
    for q in ("card arrival", "refund please"):
        assert [x.index for x in r.retrieve(q, k=20)] == [x.index for x in loaded.retrieve(q, k=20)]


def test_load_detects_corruption(fungi_retriever, tmp_path, st_model):
    path = fungi_retriever.save(tmp_path / "r")
    vec = path / "index" / "vectors.npy"
    data = vec.read_bytes()
    vec.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"index/vectors\.npy is corrupt or truncated"):
        ICLRetriever.load(path, model=st_model)
    vec.unlink()
    with pytest.raises(ValueError, match="missing"):
        ICLRetriever.load(path, model=st_model)
    (path / "manifest.json").write_text("{not json")
    with pytest.raises(ValueError, match="corrupt"):
        ICLRetriever.load(path, model=st_model)
    with pytest.raises(ValueError, match="not a saved retriever"):
        ICLRetriever.load(tmp_path / "nothing-here", model=st_model)


def test_load_rejects_other_format_versions(fungi_retriever, tmp_path, st_model):
    path = fungi_retriever.save(tmp_path / "r")
    rewrite_manifest(path, lambda m: m.update(format_version=99))
    with pytest.raises(ValueError, match="format version 99"):
        ICLRetriever.load(path, model=st_model)
    # a retriever saved by 0.1.0 (format 1: flat arrays) is refused with the version and how to rebuild
    old = tmp_path / "old"
    old.mkdir()
    (old / "manifest.json").write_text(json.dumps({"format": "icl-fungi-retriever", "format_version": 1,
                                                   "versions": {"icl_fungi": "0.1.0"}, "files": {}}))
    with pytest.raises(ValueError, match=r"saved by icl-fungi 0\.1\.0 \(format version 1\).*Rebuild"):
        ICLRetriever.load(old, model=st_model)


def test_save_never_clobbers_user_data_and_replaces_atomically(fungi_retriever, tmp_path, st_model):
    user_dir = tmp_path / "mine"
    user_dir.mkdir()
    (user_dir / "notes.txt").write_text("precious")
    with pytest.raises(ValueError, match="refusing"):
        fungi_retriever.save(user_dir)
    assert (user_dir / "notes.txt").read_text() == "precious"
    path = fungi_retriever.save(tmp_path / "r")
    (path / "left-from-before.txt").write_text("old")
    fungi_retriever.save(path)  # overwrite an existing retriever: the new folder replaces the old one whole
    assert not (path / "left-from-before.txt").exists()
    listed = set(json.loads((path / "manifest.json").read_text())["files"])
    assert listed == {f.relative_to(path).as_posix() for f in path.rglob("*") if f.is_file()} - {"manifest.json"}
    back = ICLRetriever.load(path, model=st_model)
    assert [x.index for x in back.retrieve("card arrival", 3)] == [x.index for x in fungi_retriever.retrieve("card arrival", 3)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "r"]  # no temp folders left


def test_load_rejects_different_model(fungi_retriever, tmp_path, st_model):
    import copy

    path = fungi_retriever.save(tmp_path / "r")
    other = copy.deepcopy(st_model)
    with torch.no_grad():
        for name, mod in other.named_modules():
            if name.endswith("layer.5.attention.output.dense"):
                mod.weight.add_(0.01)
    with pytest.raises(ValueError, match="differs"):
        ICLRetriever.load(path, model=other)


def test_default_weights_centring_and_loo_weights(intent_pool, st_model, tmp_path):
    texts, labels = intent_pool
    r = ICLRetriever.from_texts(texts, labels, model=st_model, features=("embedding", "kl"), fit_weights=None,
                                show_progress_bar=False)
    assert r.block_weights == {"embedding": 1.0, "kl": 0.3}
    assert set(r.combiner.means_) == {"embedding", "kl"}
    loaded = ICLRetriever.load(r.save(tmp_path / "c"), model=st_model)
    np.testing.assert_array_equal(loaded.combiner.means_["kl"], r.combiner.means_["kl"])
    assert [x.index for x in loaded.retrieve("card arrival", 5)] == [x.index for x in r.retrieve("card arrival", 5)]
    loo = ICLRetriever.from_texts(texts, labels, model=st_model, features=("embedding", "kl"), fit_weights="loo",
                                  show_progress_bar=False)
    best = max(loo.weight_search_, key=lambda t: t["loo_p@k"])
    assert loo.block_weights == best["weights"] and len(loo.weight_search_) >= 6
    back = ICLRetriever.load(loo.save(tmp_path / "loo"), model=st_model)
    assert back.block_weights == loo.block_weights and back.fit_weights == "loo"
    with pytest.raises(ValueError, match="fit_weights"):
        ICLRetriever.from_texts(texts[:5], labels[:5], model=st_model, fit_weights="cv")


@pytest.mark.parametrize("head", ["labels", "neighbors", "prototypes", "random"])
def test_save_load_keeps_each_kl_head(intent_pool, tmp_path, st_model, head):
    texts, labels = intent_pool
    r = ICLRetriever.from_texts(texts, labels, model=st_model, features=("embedding", "kl"), kl_head=head, kl_head_dim=16,
                                show_progress_bar=False)
    back = ICLRetriever.load(r.save(tmp_path / head), model=st_model)
    assert type(back.encoder.head) is type(r.encoder.head) and back.encoder.head.name == head
    torch.testing.assert_close(back.encoder.head.rows_, r.encoder.head.rows_, rtol=0, atol=0)
    if r.encoder.head.center_ is not None:
        torch.testing.assert_close(back.encoder.head.center_, r.encoder.head.center_, rtol=0, atol=0)
    if head == "neighbors":
        torch.testing.assert_close(back.encoder.head.row_labels_, r.encoder.head.row_labels_)
    np.testing.assert_array_equal(back.vectors("card arrival"), r.vectors("card arrival"))


def test_fallback_head_is_saved_as_what_it_is(tmp_path, st_model, intent_pool):
    texts = intent_pool[0][:30]
    r = ICLRetriever.from_texts(texts, [f"answer {i}" for i in range(30)], model=st_model, features=("embedding", "kl"),
                                kl_head_dim=4, show_progress_bar=False)
    assert r.encoder.head.name == "prototypes"  # free-text labels: k-means instead of label means
    back = ICLRetriever.load(r.save(tmp_path / "f"), model=st_model)
    assert back.encoder.head.name == "prototypes" and back.config.kl_head == "labels"
    np.testing.assert_array_equal(back.vectors("card"), r.vectors("card"))
