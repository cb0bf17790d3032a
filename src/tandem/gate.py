"""Promotion gate: the challenger goes live only if it beats the champion on the primary metric."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from tandem.config import GateConfig


@dataclass(frozen=True)
class GateDecision:
    decision: str  # "promote" | "reject"
    reason: str
    primary_metric: str
    challenger: float
    champion: float | None  # None when nothing is live yet
    champion_collection: str | None

    def to_dict(self) -> dict:
        return asdict(self)


def decide(
    primary_metric: str,
    challenger: dict[str, float],
    champion: dict[str, float] | None,
    champion_collection: str | None,
    cfg: GateConfig = GateConfig(),
) -> GateDecision:
    """Compare on the same evaluation set; the first run (no champion) is promoted."""
    if primary_metric not in challenger:
        raise ValueError(
            f"primary metric {primary_metric!r} not among {sorted(challenger)}; fix EvalConfig.primary_metric"
        )
    new = challenger[primary_metric]
    if champion is None:
        return GateDecision("promote", "no live model yet: the first run is promoted", primary_metric, new, None, None)
    old = champion[primary_metric]
    if new > old + cfg.min_improvement:
        verdict, why = "promote", f"{primary_metric} {new:.4f} > champion {old:.4f} + margin {cfg.min_improvement}"
    else:
        verdict, why = (
            "reject",
            f"{primary_metric} {new:.4f} does not beat champion {old:.4f} + margin {cfg.min_improvement}",
        )
    return GateDecision(verdict, why, primary_metric, new, old, champion_collection)
