"""Weight-space interpolation of the trained model with its initial weights (WiSE-FT, Wortsman et al., CVPR 2022),
tried as a remedy for issue 16's MovieLens-100k HotelMatch row (fine-tuning lowered the cold targets' Recall@100
from the untrained encoder's 0.122 to 0.011).

    .venv/bin/python benchmarks/quality_interpolation.py WORKDIR RUN_ID [--family hotelmatch] [--alphas 0,0.5,1]

WORKDIR/RUN_ID is a finished run of `benchmarks/quality.py` (e.g. /tmp/tandem-quality/movielens/hotelmatch and
movielens-hotelmatch). For each alpha the model's weights are theta0 + alpha (theta_trained - theta0), theta0 the
recipe's seeded initial weights (the train stage's own `_new_model`); the popularity term is chosen again on the
validation pairs (`choose_weight`, as the train stage does), and the run's test pairs are ranked by cosine alone
and with the term: the primary metric on all / warm / cold pairs. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from quality import recipe  # noqa: E402

from tandem.data.features import read_items  # noqa: E402
from tandem.evaluation.evaluate import EvalSet, resolve_protocol  # noqa: E402
from tandem.evaluation.metrics import per_pair_metrics  # noqa: E402
from tandem.models import load_model  # noqa: E402
from tandem.models.popularity import PopularityTerm, item_biases  # noqa: E402
from tandem.pipeline import stages  # noqa: E402
from tandem.training.popularity import choose_weight  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("workdir", type=Path)
    parser.add_argument("run_id")
    parser.add_argument("--family", default="hotelmatch")
    parser.add_argument("--alphas", default="0,0.25,0.5,0.75,1")
    args = parser.parse_args()
    cfg = recipe(args.family, [], 0)
    run = stages.RunPaths.of(args.workdir, args.run_id)
    catalog = stages.items(run)
    train, valid, test = (stages.pairs(run, s) for s in ("train", "valid", "test"))
    model = load_model(run / "model")
    trained = {k: v.detach().clone() for k, v in model.state_dict().items()}
    initial = stages._new_model(cfg, catalog).state_dict()
    feature = cfg.model.popularity_feature
    counts = read_items(args.workdir, catalog["item_id"], as_of=run.summary("features")["as_of"], columns=[feature])
    untuned = PopularityTerm(0.0, feature, item_biases(catalog["item_id"], counts[feature].to_numpy()))
    ev = EvalSet.from_pairs(test, catalog, cfg.eval, resolve_protocol(cfg.eval.protocol, model.symmetric), True, train)
    ids, cold, primary = catalog["item_id"].astype(str).to_numpy(), ev.subsets["cold"], cfg.eval.primary_metric
    print(f"| alpha | cosine all | warm | cold | + term (w, prior) | all | warm | cold | seconds |\n|{'---|' * 9}")
    for alpha in (float(a) for a in args.alphas.split(",")):
        started = time.perf_counter()
        model.load_state_dict({
            k: initial[k] + alpha * (v - initial[k]) if v.is_floating_point() and k in initial else v
            for k, v in trained.items()
        })  # fmt: skip
        model.popularity = None
        term = choose_weight(model, catalog, valid, train, untuned, cfg.eval)
        queries, pool = ev.encode(model, catalog, progress=False)
        cells = []
        for t in (None, term if term.weight else None):
            q, p = (t.augment_queries(queries), t.augment_items(pool, ids[ev.pool])) if t else (queries, pool)
            m = per_pair_metrics(ev.ranks(ev.vector_scorer(q, p)), cfg.eval.ks, cfg.eval.mrr_k)[primary]
            cells += [f"{m.mean():.4f}", f"{m[~cold].mean():.4f}", f"{m[cold].mean():.4f}"]
        cells.insert(3, f"{term.weight:g}, {term.cold_bias:g}")
        print(f"| {alpha:g} | " + " | ".join(cells) + f" | {time.perf_counter() - started:.0f} |", flush=True)


if __name__ == "__main__":
    main()
