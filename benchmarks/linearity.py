"""Per-unit cost from instruction counts at three sizes, and the check that they are linear.

A count at N units (instructions.py: from one run's checkpoints) is
``fixed + N * per_unit`` only if nothing else grew with N or landed in one
part by chance (garbage piling up, a cache filling, a .pyc compiled: ~170 M
instructions). Two
counts always give *a* slope; three counts give two slopes, and when those
disagree the figure is not a per-unit cost and is not reported.
"""

from __future__ import annotations

from dataclasses import dataclass

TOLERANCE = 0.005  # 0.5 %: the two slopes' relative difference allowed


class NonLinearError(ValueError):
    """The counts do not grow linearly with the number of units."""


@dataclass(frozen=True)
class Fit:
    sizes: tuple[int, int, int]
    counts: tuple[int, int, int]
    slopes: tuple[float, float]  # low -> mid, mid -> high
    per_unit: float  # low -> high

    @property
    def disagreement(self) -> float:
        """Relative difference of the two slopes, |s2 - s1| / per_unit."""
        return abs(self.slopes[1] - self.slopes[0]) / self.per_unit

    def as_dict(self) -> dict[str, object]:
        return {
            "sizes": list(self.sizes),
            "counts": list(self.counts),
            "slopes": list(self.slopes),
            "per_unit": self.per_unit,
            "disagreement": self.disagreement,
        }


def fit(counts: dict[int, int]) -> Fit:
    """The per-unit cost from exactly three (size -> instruction count) points; no check."""
    if len(counts) != 3:
        raise ValueError(f"need counts at three sizes, got {sorted(counts)}")
    low, mid, high = sorted(counts)
    if not 0 <= low < mid < high:
        raise ValueError(f"sizes must be distinct and >= 0: {sorted(counts)}")
    c = (counts[low], counts[mid], counts[high])
    slopes = ((c[1] - c[0]) / (mid - low), (c[2] - c[1]) / (high - mid))
    per_unit = (c[2] - c[0]) / (high - low)
    if per_unit <= 0:
        raise NonLinearError(f"counts do not grow with the size: {dict(zip((low, mid, high), c))}")
    return Fit((low, mid, high), c, slopes, per_unit)


def checked_fit(counts: dict[int, int], tolerance: float = TOLERANCE, what: str = "") -> Fit:
    """`fit`, refusing (NonLinearError) when the two slopes differ by more than ``tolerance``."""
    result = fit(counts)
    if result.disagreement > tolerance:
        low, mid, high = result.sizes
        raise NonLinearError(
            f"{what or 'counts'}: not linear in the number of units: slope {low}->{mid} = {result.slopes[0]:,.0f}, "
            f"{mid}->{high} = {result.slopes[1]:,.0f} instructions per unit, {result.disagreement:.2%} apart "
            f"(allowed {tolerance:.2%}). Something other than the units landed in a run (a .pyc written, "
            f"a collection, a growing cache): not reporting it."
        )
    return result
