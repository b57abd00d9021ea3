"""Can a different SimCLR loss earn the block its place? Variants of the loss on the same dropout views.

Issue 16 asks SimCLR to add >= +0.5 pt P@20 over KL only at equal KL weight (dev split, MiniLM).
The view and bank variants are in ``ablate_quality.py --grid simclr``; this script swaps the loss
itself (an experiment-only subclass of ``SimCLRLoss`` set on the encoder before it is fitted):

- ``projection head``: InfoNCE on a frozen seeded two-layer MLP head (384 -> 384 -> 128, ReLU) of the
  embeddings, as SimCLR trains with, instead of on the embeddings;
- ``nearest-neighbour positive``: each view's nearest text in a bank of 2,048 pool embeddings is
  one more positive (NNCLR-style; no labels, so queries and pool texts are treated alike);
- ``pseudo-label positive``: the row of the KL head (label mean) the text is closest to is one
  more positive and the other rows are negatives (supervised contrast with the label a query
  would be given, since a query has no label of its own).

Blocks are encoded once per variant; SimCLR weights 0.3, 0.5 and 1 are swept at KL 0.3.

    python eval/explore/explore_simclr.py

Writes eval/results/ablate_quality/dev-simclr-losses.{json,md}.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # eval/: common.py
sys.path.insert(0, str(Path(__file__).resolve().parent))  # this folder's scripts it imports
from common import DEFAULT_DATA, FEATURES_0_3, RESULTS, markdown_table, pool_and_queries, read_results, run_meta, write_results
from explore_weights import evaluate

from icl_fungi.features import FeatureConfig, FungiEncoder
from icl_fungi.features.simclr import SimCLRLoss

SIMCLR_WEIGHTS = (0.3, 0.5, 1.0)


class HeadLoss(SimCLRLoss):
    """InfoNCE on a frozen seeded MLP head of the embeddings (views and negatives alike)."""

    def __init__(self, dim: int, out: int = 128, **kw) -> None:
        super().__init__(**kw)
        g = torch.Generator().manual_seed(self.seed + 7)
        self.w1 = torch.randn(dim, dim, generator=g) / dim**0.5
        self.w2 = torch.randn(dim, out, generator=g) / dim**0.5

    def head(self, z: torch.Tensor) -> torch.Tensor:
        return F.normalize(torch.relu(z @ self.w1) @ self.w2, dim=-1)

    def fit(self, negative_embeddings: torch.Tensor) -> HeadLoss:
        self.negatives_ = self.head(F.normalize(negative_embeddings.detach(), dim=-1))
        return self

    def loss(self, z: torch.Tensor) -> torch.Tensor:
        return super().loss(self.head(z))


class ExtraPositiveLoss(SimCLRLoss):
    """InfoNCE whose positives are the other views plus one chosen row of ``rows`` (the rest of ``rows`` are
    negatives, with the bank)."""

    def rows(self) -> torch.Tensor:
        raise NotImplementedError

    def prepare(self, z: torch.Tensor) -> torch.Tensor:
        return z

    def loss(self, z: torch.Tensor) -> torch.Tensor:
        V, tau = z.shape[0], self.temperature
        cos = self.prepare(z) @ self.rows().T  # (V, n, R)
        sim = cos / tau
        # the nearest row is the extra positive; a row that is the text itself (cosine > 0.99) is skipped
        chosen = cos.detach().masked_fill(cos.detach() > 0.99, -2.0).argmax(-1, keepdim=True)
        extra = sim.gather(-1, chosen).squeeze(-1)  # (V, n)
        pos = torch.einsum("vnd,wnd->nvw", z, z) / tau
        eye = torch.eye(V, dtype=torch.bool, device=z.device)
        pos = pos.masked_fill(eye, float("-inf"))
        neg = z @ self.negatives_.T / tau
        denom = torch.logsumexp(torch.cat([pos, sim.permute(1, 0, 2), neg.permute(1, 0, 2)], dim=-1), dim=-1)  # (n, V)
        terms = (pos - denom[..., None]).masked_fill(eye, 0.0).sum(-1) + (extra.T - denom)
        return -terms.sum(-1) / (V * V)


class NeighbourLoss(ExtraPositiveLoss):
    """Nearest text in a bank of pool embeddings as the extra positive (NNCLR-style)."""

    def __init__(self, bank: int = 2048, **kw) -> None:
        super().__init__(**kw)
        self.bank_size = bank
        self.bank: torch.Tensor | None = None

    def fit(self, negative_embeddings: torch.Tensor) -> NeighbourLoss:
        z = F.normalize(negative_embeddings.detach(), dim=-1)
        self.negatives_, self.bank = z[:256], z
        return self

    def rows(self) -> torch.Tensor:
        return self.bank


class PseudoLabelLoss(ExtraPositiveLoss):
    """The KL head's nearest label row as the extra positive, its other rows as negatives."""

    def __init__(self, encoder: FungiEncoder, **kw) -> None:
        super().__init__(**kw)
        self.encoder = encoder

    def rows(self) -> torch.Tensor:
        return F.normalize(self.encoder.head.rows_, dim=-1)

    def prepare(self, z: torch.Tensor) -> torch.Tensor:
        return self.encoder.head.prepare(z)  # the head's (centred) space


def encoder_for(variant: str, cfg: FeatureConfig) -> FungiEncoder:
    enc = FungiEncoder(config=cfg, show_progress_bar=False)
    kw = {"temperature": cfg.simclr_temperature, "n_negatives": cfg.simclr_negatives, "seed": cfg.seed}
    if variant == "projection head":
        enc.simclr = HeadLoss(enc.dim, **kw)
    elif variant == "nearest-neighbour positive":
        enc.simclr = NeighbourLoss(**{**kw, "n_negatives": 2048})
    elif variant == "pseudo-label positive":
        enc.simclr = PseudoLabelLoss(enc, **kw)
    return enc


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (``argv``: the arguments after the script, default ``sys.argv[1:]``)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--queries", type=int, default=0, help="dev queries (0: all)")
    ap.add_argument("--out", default=str(RESULTS / "ablate_quality" / "dev-simclr-losses.json"))
    return ap.parse_args(argv)


def main() -> None:
    args = parse_args()
    pool_t, pool_l, q_t, q_l = pool_and_queries(args.data, "dev")
    q_t, q_l = (q_t[: args.queries], q_l[: args.queries]) if args.queries else (q_t, q_l)
    path = Path(args.out)
    rows = read_results(path).get("rows", {})
    cfg = FeatureConfig(**FEATURES_0_3)  # embedding, kl and simclr at the 0.3.0 settings
    for variant in ("InfoNCE (0.3.0)", "projection head", "nearest-neighbour positive", "pseudo-label positive"):
        if any(r["variant"] == variant for r in rows.values()):
            continue
        t0 = time.perf_counter()
        enc = encoder_for(variant, cfg)
        pool_b, q_b = enc.fit_encode(pool_t, pool_l), enc.encode(q_t)
        secs = round(time.perf_counter() - t0, 1)
        mixes = [("kl only", {"embedding": 1.0, "kl": 0.3})] if variant.startswith("InfoNCE") else []
        mixes += [(f"simclr {w:g}", {"embedding": 1.0, "kl": 0.3, "simclr": w}) for w in SIMCLR_WEIGHTS]
        for mix, weights in mixes:
            m = evaluate(pool_b, q_b, pool_l, q_l, weights, 20)
            name = "KL only (w 0.3)" if mix == "kl only" else f"{variant}, {mix}"
            rows[name] = {**m, "variant": variant if mix != "kl only" else "kl only", "weights": weights, "encode_s": secs}
            print(f"{name:<45} P@20 {m['p@20']:.4f}  1-NN {m['1nn_acc']:.4f}  vote {m['knn20_vote_acc']:.4f}", flush=True)
        write_results(path, {"meta": run_meta(queries=len(q_t), feature_config=cfg.to_dict()), "rows": rows},
                      title="SimCLR losses (dev split)", table="")
    base = rows["KL only (w 0.3)"]["p@20"]
    table = [{"configuration": n, "P@20": r["p@20"], "vs KL only": f"{100 * (r['p@20'] - base):+.2f} pt", "1-NN": r["1nn_acc"],
              "20-NN vote": r["knn20_vote_acc"], "encode s": r["encode_s"]} for n, r in rows.items()]
    cols = ["configuration", "P@20", "vs KL only", "1-NN", "20-NN vote", "encode s"]
    write_results(path, {"meta": run_meta(queries=len(q_t), feature_config=cfg.to_dict()), "rows": rows},
                  title=f"SimCLR losses against KL only (dev split, {len(pool_t)} pool texts, {len(q_t)} queries, KL 0.3)",
                  table=markdown_table(table, cols))
    print(markdown_table(table, cols))


if __name__ == "__main__":
    main()
