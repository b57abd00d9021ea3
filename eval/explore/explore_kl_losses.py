"""Other self-supervised losses on the KL head: is minus the entropy (the library's loss) the right one?

Each variant is a KL head of its own, written against the public :class:`icl_fungi.KLHead`
interface and registered by name, the way a user adds a head; everything else is the
library's retriever (embedding + KL block, centred, weighted, PCA, exact search). Dev split:
a stratified 20 % of banking-77 train held out, pool = the other 80 %. Resumable.

Losses (``z`` the unit embedding, ``c_k`` the head's unit rows, logits ``s_k = z.c_k / T``):

* ``entropy`` - the library's ``sum_k p_k log p_k`` (KL(p || uniform) - log K), ``p = softmax(s)``;
* ``ce_uniform`` - KL(uniform || p) = -mean_k log p_k;
* ``dino`` - cross-entropy to a sharpened, detached teacher softmax(z.c_k / 0.02);
* ``sub`` - 3 rows per label (spherical k-means inside the label), probabilities summed per label;
* ``neighbors`` - the library's soft k-NN head (the sample's own rows, summed per label).

    python eval/explore/explore_kl_losses.py [--weights 0.3,0.5]

Writes eval/results/ablate_quality/dev-losses.{json,md}. (The committed file also has a ``loo``
variant, run at commit 4473af4 by a subclass of the encoder's private methods; heads cannot see
which pool text they encode, so it is not among the variants here.)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # eval/: common.py
from common import (
    DEFAULT_DATA,
    EMBEDDING,
    RESULTS,
    build_retriever,
    markdown_table,
    pool_and_queries,
    read_results,
    retriever_config,
    run_meta,
    write_results,
)

from icl_fungi import KLHead, register_kl_head
from icl_fungi.evaluation import retrieval_metrics
from icl_fungi.features import LabelMeanHead, PrototypeHead
from icl_fungi.features.heads import spherical_kmeans


def _ce_uniform(head: KLHead, z: torch.Tensor) -> torch.Tensor:
    return -F.log_softmax(head.logits(head.prepare(z)), dim=-1).mean(-1).sum()


def _dino(head: KLHead, z: torch.Tensor, teacher_tau: float = 0.02) -> torch.Tensor:
    z = head.prepare(z)
    teacher = F.softmax((z @ head.rows_.T).detach() / teacher_tau, dim=-1)
    return -(teacher * F.log_softmax(head.logits(z), dim=-1)).sum()


def _variant(base: type[KLHead], loss_name: str, loss) -> type[KLHead]:
    cls = type(f"{base.__name__}_{loss_name}", (base,), {"name": f"explore-{base.name}-{loss_name}", "loss": loss})
    return register_kl_head(cls)


@register_kl_head
class SubMeansHead(KLHead):
    """3 spherical k-means rows per label; the softmax over rows is summed per label."""

    name = "explore-sub-means"
    needs_labels = True
    centered_by_default = True

    def fit_rows(self, z, labels=None):
        classes = {lab: i for i, lab in enumerate(dict.fromkeys(labels))}
        ids = torch.tensor([classes[lab] for lab in labels])
        rows, row_ids = [], []
        for c in range(len(classes)):
            cent = spherical_kmeans(z[ids == c], 3, seed=self.seed)
            rows.append(cent)
            row_ids += [c] * len(cent)
        self.rows_, self.row_labels_ = torch.cat(rows), torch.tensor(row_ids)

    def loss(self, z):
        p = F.softmax(self.logits(self.prepare(z)), dim=-1)
        probs = torch.zeros(len(z), int(self.row_labels_.max()) + 1).index_add_(1, self.row_labels_, p)
        return (probs * torch.log(probs.clamp_min(1e-12))).sum()

    def state_arrays(self):
        return {**super().state_arrays(), "row_labels": self.row_labels_.numpy()}


LABELS = {"features": ("embedding", "kl"), "kl_head": "labels", "kl_center": True, "kl_temperature": 0.07}
PROTO = {"features": ("embedding", "kl"), "kl_head": "prototypes", "kl_center": False, "kl_temperature": 0.07, "kl_head_dim": 256}
VARIANTS: dict[str, dict] = {"labels centred entropy": LABELS, "proto K256 entropy": PROTO}
for _loss_name, _loss in (("ce_uniform", _ce_uniform), ("dino", _dino)):
    VARIANTS[f"labels centred {_loss_name}"] = {**LABELS, "kl_head": _variant(LabelMeanHead, _loss_name, _loss).name}
    VARIANTS[f"proto K256 {_loss_name}"] = {**PROTO, "kl_head": _variant(PrototypeHead, _loss_name, _loss).name}
for _t in (0.03, 0.07):
    VARIANTS[f"soft k-NN head T{_t}"] = {**LABELS, "kl_head": "neighbors", "kl_temperature": _t}
VARIANTS["3 sub-means per label T0.07"] = {**LABELS, "kl_head": SubMeansHead.name}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (``argv``: the arguments after the script, default ``sys.argv[1:]``)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--weights", default="0.3,0.5", help="KL block weights to evaluate for every variant")
    ap.add_argument("--out", default=str(RESULTS / "ablate_quality" / "dev-losses.json"))
    return ap.parse_args(argv)


def main() -> None:
    args = parse_args()
    pool_t, pool_l, q_t, q_l = pool_and_queries(args.data, "dev")
    path = Path(args.out)
    rows = read_results(path).get("rows", {})
    todo = {"embedding": EMBEDDING} | {f"{n} w{w}": {**spec, "block_weights": {"kl": float(w)}}
                                        for n, spec in VARIANTS.items() for w in args.weights.split(",")}
    for name, spec in todo.items():
        if name in rows:
            continue
        t0 = time.perf_counter()
        r = build_retriever(pool_t, pool_l, spec)
        res = r.retrieve_batch(q_t, k=20)
        m = retrieval_metrics([[x.label for x in row] for row in res], [[x.score for x in row] for row in res], q_l, 20)
        rows[name] = {**m, "build_s": round(time.perf_counter() - t0, 1), "config": retriever_config(r)}
        print(f"{name:<40} P@20 {m['p@20']:.4f}  1-NN {m['1nn_acc']:.4f}  vote {m['knn20_vote_acc']:.4f}", flush=True)
        write_results(path, {"meta": run_meta(split="dev", pool=len(pool_t), queries=len(q_t)), "rows": rows},
                      title="KL-head losses (dev split)", table="")
    base = rows["embedding"]["p@20"]
    table = [{"variant": n, "P@20": m["p@20"], "vs embedding": f"{100 * (m['p@20'] - base):+.2f} pt", "1-NN": m["1nn_acc"],
              "20-NN vote": m["knn20_vote_acc"]} for n, m in rows.items()]
    cols = ["variant", "P@20", "vs embedding", "1-NN", "20-NN vote"]
    write_results(path, {"meta": run_meta(split="dev", pool=len(pool_t), queries=len(q_t)), "rows": rows},
                  title=f"KL-head losses (dev split; pool {len(pool_t)}, {len(q_t)} queries)", table=markdown_table(table, cols))
    print(markdown_table(table, cols))


if __name__ == "__main__":
    main()
