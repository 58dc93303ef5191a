"""The package's layers (DESIGN.md): each module imports only from its own layer and those below.
Model code never imports apv_hub.training."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "apv_hub"

# Lowest first. A module belongs to the first entry that is a prefix of its dotted name.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    (
        "building blocks",
        (
            "apv_hub.errors",
            "apv_hub.version",
            "apv_hub.io",
            "apv_hub.config_base",
            "apv_hub.config",
            "apv_hub.weights",
            "apv_hub.optim",
            "apv_hub.compilation",
            "apv_hub.seeding",
            "apv_hub.cli",
            "apv_hub.cards",
            "apv_hub.hub",
            "apv_hub.nets",
            "apv_hub.rssm",
        ),
    ),
    ("data, environments, replay", ("apv_hub.data", "apv_hub.envs", "apv_hub.replay")),
    (
        "agents and models",
        (
            "apv_hub.video_model",
            "apv_hub.world_model",
            "apv_hub.intrinsic",
            "apv_hub.behavior",
            "apv_hub.agent",
            "apv_hub.predict",
            "apv_hub.synthetic",
            "apv_hub.viper",
            "apv_hub.convert",
        ),
    ),
    ("evaluation", ("apv_hub.evaluation",)),
    ("training", ("apv_hub.training",)),
]


def layer_of(module: str) -> int:
    for index, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return index
    raise AssertionError(f"{module} has no layer: add it to LAYERS in {__file__}")


def imports(path: Path, module: str) -> list[str]:
    """Every apv_hub module ``path`` imports at run time (relative imports resolved), at any
    depth; imports for type checking only (``if TYPE_CHECKING:``) are not dependencies."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING"):
            node.body = []
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = module.split(".")[: -node.level]
                base = ".".join([*parts, base] if base else parts)
            found += [f"{base}.{a.name}" if base == "apv_hub" else base for a in node.names]
    return [name for name in found if name.startswith("apv_hub.")]


def modules() -> list[tuple[str, Path]]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            if len(parts) == 2:
                continue  # apv_hub/__init__.py gathers the public API from every layer.
            parts = parts[:-1]
        out.append((".".join(parts), path))
    return out


def test_every_module_imports_only_its_layer_and_below() -> None:
    wrong = []
    for module, path in modules():
        own = layer_of(module)
        for name in imports(path, module):
            if layer_of(name) > own:
                wrong.append(
                    f"{module} ({LAYERS[own][0]}) imports {name} ({LAYERS[layer_of(name)][0]})"
                )
    assert not wrong, "\n".join(wrong)


def test_nothing_outside_training_imports_training() -> None:
    offenders = [
        module
        for module, path in modules()
        if not module.startswith("apv_hub.training")
        and any(name.startswith("apv_hub.training") for name in imports(path, module))
    ]
    assert not offenders, offenders
