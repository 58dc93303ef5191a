"""Counting and reporting videos that were skipped, once, in one summary."""

from __future__ import annotations

from collections import Counter

# How many example names a summary shows per reason.
_EXAMPLES = 3


class SkipReport:
    """Skipped items grouped by reason, with a few example names for each."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.examples: dict[str, list[str]] = {}

    def add(self, name: str, reason: str) -> None:
        # Reasons carry details (frame numbers, decoder messages); group by their first clause.
        kind = reason.split(":")[0].strip()
        self.counts[kind] += 1
        examples = self.examples.setdefault(kind, [])
        if len(examples) < _EXAMPLES:
            examples.append(f"{name} ({reason})")

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self, what: str = "videos") -> str:
        """One multi-line paragraph: total, then one line per reason with examples."""
        if not self.total:
            return f"0 {what} skipped"
        lines = [f"{self.total} {what} skipped:"]
        for kind, count in self.counts.most_common():
            lines.append(f"  {count} x {kind}: e.g. " + "; ".join(self.examples[kind]))
        return "\n".join(lines)
