"""Other self-supervised losses on the KL head, tried before the label-mean head became the default.

Each variant swaps the loss (or how the pool's own texts see the head) in a subclass of
:class:`FungiEncoder`; everything else is the library's retriever (embedding + KL block,
centred, weighted, PCA, exact search). Dev split as in ``ablate_quality.py`` (stratified
20 % of banking-77 train held out; pool = the other 80 %). Resumable.

Losses (``z`` the unit embedding, ``c_k`` the head's unit rows, logits ``s_k = z.c_k / T``):

* ``entropy`` - the library's KL(softmax(s) || uniform) = -H(p);
* ``ce_uniform`` - KL(uniform || softmax(s)) = -mean_k log p_k (gradient p - 1/K on the logits);
* ``dino`` - cross-entropy to a sharpened, detached teacher softmax(z.c_k / T_t), T_t = 0.02;
* ``loo`` - entropy, but a pool text's own label mean leaves the text out (no self-match);
* ``knn`` - a soft k-NN head: the rows are the sample's own (centred, unit) embeddings, the
  softmax over them is summed per label and the loss is minus the entropy of those label
  probabilities (a text never matches itself or an identical text);
* ``sub`` - like the label head, but each label gets 3 rows (spherical k-means inside the
  label) whose probabilities are summed per label before the entropy.

    python eval/explore_kl_losses.py

Writes eval/results/ablate_quality/dev-losses.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from icl_fungi import ICLRetriever, load_pool
from icl_fungi.encoder import FeatureConfig, FungiEncoder, spherical_kmeans
from icl_fungi.evaluation import retrieval_metrics, stratified_split


class LossEncoder(FungiEncoder):
    """FungiEncoder with another KL-head loss (see the module docstring)."""

    def __init__(self, *args, loss: str = "entropy", teacher_tau: float = 0.02, n_sub: int = 3, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.n_sub = n_sub
        self.loss = loss
        self.teacher_tau = teacher_tau
        self.own: dict[str, tuple[int, torch.Tensor]] = {}  # pool text -> (label row, its head-space vector)
        self.head_sums: torch.Tensor | None = None
        self._batch: list[str] = []

    def fit_encode(self, texts, labels=None):
        if self.loss == "loo":  # keep what a pool text added to its own label mean
            emb = F.normalize(torch.from_numpy(FungiEncoder(self.model, FeatureConfig(features=("embedding",)),
                                                            show_progress_bar=False).encode(texts)["embedding"]), dim=-1)
            self._loo_mean = emb.mean(0) if self.config.kl_centered else None
            if self._loo_mean is not None:
                emb = F.normalize(emb - self._loo_mean, dim=-1)
            rows: dict = {}
            ids = torch.tensor([rows.setdefault(lab, len(rows)) for lab in labels])
            self.head_sums = torch.zeros(len(rows), emb.shape[1]).index_add_(0, ids, emb)
            self.own = {t: (int(i), e) for t, i, e in zip(texts, ids, emb, strict=True)}
        out = super().fit_encode(texts, labels)
        if self.loss == "loo":  # the head for queries: label means over the whole pool
            self.kl_head = F.normalize(self.head_sums, dim=-1)
            self.own = {}
        return out

    def _fit_prototypes(self, emb, labels=None):
        super()._fit_prototypes(emb, labels)
        if self.loss in ("knn", "sub"):  # rows grouped by label: (rows, row -> label id)
            z = F.normalize(emb.float(), dim=-1)
            if self.kl_center_ is not None:
                z = F.normalize(z - self.kl_center_, dim=-1)
            classes: dict = {}
            ids = torch.tensor([classes.setdefault(lab, len(classes)) for lab in labels])
            if self.loss == "knn":
                self.kl_head, self.row_label = z, ids
            else:
                rows, row_ids = [], []
                for c in range(len(classes)):
                    cent = spherical_kmeans(z[ids == c], self.n_sub, seed=self.config.seed)
                    rows.append(cent)
                    row_ids += [c] * len(cent)
                self.kl_head, self.row_label = torch.cat(rows), torch.tensor(row_ids)
            self.n_classes = len(classes)
        if self.loss == "loo":  # label means over the whole pool, matching the left-out rows
            self.kl_head, self.kl_center_ = F.normalize(self.head_sums, dim=-1), self._loo_mean

    def _gradient_blocks(self, texts, *args, **kwargs):
        self._batch = texts
        return super()._gradient_blocks(texts, *args, **kwargs)

    def _kl_loss(self, z: torch.Tensor) -> torch.Tensor:
        if self.kl_center_ is not None:
            z = F.normalize(z - self.kl_center_, dim=-1)
        tau = self.config.kl_tau
        logits = z @ self.kl_head.T
        if self.loss == "loo" and self.own and self._batch and self._batch[0] in self.own:
            rows = torch.tensor([self.own[t][0] for t in self._batch])
            loo = F.normalize(self.head_sums[rows] - torch.stack([self.own[t][1] for t in self._batch]), dim=-1)
            logits = logits.clone()
            logits[torch.arange(len(rows)), rows] = (z * loo).sum(-1)
        if self.loss == "knn":  # no self-match (nor an identical text)
            logits = logits.masked_fill(logits > 0.9999, float("-inf"))
        logp = F.log_softmax(logits / tau, dim=-1)
        if self.loss in ("knn", "sub"):
            p = torch.zeros(len(z), self.n_classes).index_add_(1, self.row_label, logp.exp())
            return (p * torch.log(p.clamp_min(1e-12))).sum()
        if self.loss == "ce_uniform":
            return -logp.mean(-1).sum()
        if self.loss == "dino":
            return -(F.softmax(logits.detach() / self.teacher_tau, dim=-1) * logp).sum()
        return (logp.exp() * logp).sum()


VARIANTS: dict[str, dict] = {}
for _head, _kw in (("labels centred", {"kl_head": "labels"}), ("proto K256", {"kl_head": "prototypes"})):
    for _loss in ("entropy", "ce_uniform", "dino"):
        VARIANTS[f"{_head} {_loss}"] = {"cfg": _kw, "loss": _loss}
VARIANTS["labels centred loo"] = {"cfg": {"kl_head": "labels"}, "loss": "loo"}
for _t in (0.03, 0.07):
    VARIANTS[f"soft k-NN head T{_t}"] = {"cfg": {"kl_head": "labels", "kl_temperature": _t}, "loss": "knn"}
VARIANTS["3 sub-means per label T0.07"] = {"cfg": {"kl_head": "labels"}, "loss": "sub"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/data/banking77"))
    ap.add_argument("--weights", default="0.3,0.5", help="KL block weights to evaluate for every variant")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "ablate_quality" / "dev-losses"))
    args = ap.parse_args()
    texts, labels = load_pool(Path(args.data) / "train.csv", label_column="category")
    keep, held = stratified_split(labels, 0.2, seed=0)
    pool_t, pool_l = [texts[i] for i in keep], [labels[i] for i in keep]
    q_t, q_l = [texts[i] for i in held], [labels[i] for i in held]
    out = Path(args.out)
    path = out.with_suffix(".json")
    doc = json.loads(path.read_text()) if path.exists() else {"results": {}}
    doc["meta"] = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "pool": len(pool_t),
                   "queries": len(q_t), "python": platform.python_version(), "command": " ".join(sys.argv),
                   "split": "dev: stratified 20% of banking-77 train (seed 0) held out"}

    def record(name: str, enc: FungiEncoder, pool_blocks: dict, query_blocks: dict, weights: dict, build_s: float) -> None:
        """Metrics of the retriever's combination (centred blocks, weights, PCA) with exact cosine search."""
        r = ICLRetriever(enc, block_weights=weights)
        r.block_means_ = {f: b.mean(axis=0) for f, b in pool_blocks.items()}
        pool = r.pca.fit_transform(r._concat(pool_blocks))
        qv = r.pca.transform(r._concat(query_blocks))
        pool /= np.linalg.norm(pool, axis=1, keepdims=True)
        qv /= np.linalg.norm(qv, axis=1, keepdims=True)
        sims = qv @ pool.T
        top = np.argsort(-sims, axis=1, kind="stable")[:, :20]
        m = retrieval_metrics([[pool_l[i] for i in row] for row in top], np.take_along_axis(sims, top, 1).tolist(), q_l, 20)
        m.update(build_s=round(build_s, 1), weights=r.block_weights)
        doc["results"][name] = m
        print(f"{name:<40} P@20 {m['p@20']:.4f}  1-NN {m['1nn_acc']:.4f}  vote {m['knn20_vote_acc']:.4f}", flush=True)
        path.write_text(json.dumps(doc, indent=2))

    weights = [float(w) for w in args.weights.split(",")]
    if "embedding" not in doc["results"]:
        t0 = time.perf_counter()
        enc = FungiEncoder(config=FeatureConfig(features=("embedding",)), show_progress_bar=False)
        pb = enc.fit_encode(pool_t, pool_l)
        record("embedding", enc, pb, enc.encode(q_t), {}, time.perf_counter() - t0)
    for name, spec in VARIANTS.items():
        if all(f"{name} w{w:g}" in doc["results"] for w in weights):
            continue
        t0 = time.perf_counter()
        enc = LossEncoder(config=FeatureConfig(features=("embedding", "kl"), **spec["cfg"]), loss=spec["loss"],
                          show_progress_bar=False)
        pb = enc.fit_encode(pool_t, pool_l)
        qb = enc.encode(q_t)
        build_s = time.perf_counter() - t0
        for w in weights:
            record(f"{name} w{w:g}", enc, pb, qb, {"kl": w}, build_s)
    write_table(doc, out)


def write_table(doc: dict, stem: Path) -> None:
    res = doc["results"]
    base = res["embedding"]["p@20"]
    lines = [f"# KL-head losses (dev split; pool {doc['meta']['pool']}, {doc['meta']['queries']} queries, all-MiniLM-L6-v2, CPU)",
             "", f"`{doc['meta']['command']}`", "",
             "| variant | P@20 | vs embedding | 1-NN acc | weighted 20-NN vote |", "|---|---|---|---|---|"]
    for name, m in res.items():
        lines.append(f"| {name} | {m['p@20']:.4f} | {100 * (m['p@20'] - base):+.2f} pt | {m['1nn_acc']:.4f} | "
                     f"{m['knn20_vote_acc']:.4f} |")
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
