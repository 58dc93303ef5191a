"""The golden tensors of tests/golden/ are what the code computes today (see tests/golden.py)."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from tests.golden import CAPABILITY_KEY, GOLDEN_DIR, cases, compute, cpu_capability


def load(name: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(GOLDEN_DIR / f"{name}.safetensors"), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})  # noqa: SIM118


def test_every_case_has_a_file_and_no_file_is_stale() -> None:
    files = {p.stem for p in GOLDEN_DIR.glob("*.safetensors")}
    assert files == set(cases()), "run `python -m tests.golden` and commit tests/golden/"


@pytest.mark.parametrize("name", sorted(cases()))
def test_numerics_match_the_golden_tensors(name: str) -> None:
    expected, meta = load(name)
    got = compute(name)
    assert sorted(got) == sorted(expected), (
        f"keys differ: new {sorted(set(got) - set(expected))}, "
        f"gone {sorted(set(expected) - set(got))}"
    )
    exact = meta.get(CAPABILITY_KEY) == cpu_capability()
    differ = []
    for key in sorted(expected):
        a, b = got[key].to(expected[key].dtype), expected[key]
        same = torch.equal(a, b) if exact else torch.allclose(a, b, rtol=1e-4, atol=1e-5)
        if not same:
            delta = (a.double() - b.double()).abs().max().item() if a.shape == b.shape else None
            differ.append(f"{key} (max abs diff {delta})")
    how = "bit for bit" if exact else f"to 1e-4 (files from {meta.get(CAPABILITY_KEY)})"
    assert not differ, f"{len(differ)} tensor(s) differ {how}: " + "; ".join(differ[:8])
