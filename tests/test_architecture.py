"""Which edgekit packages may import which: checked on the source, so a cycle cannot creep back."""
from __future__ import annotations

import ast
from pathlib import Path

import edgekit

PACKAGE = Path(edgekit.__file__).parent


def imported_modules(path: Path) -> set[str]:
    """Every module `path` imports, anywhere in it (lazy and type-checking imports included), absolute."""
    package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(part for part in (base, node.module) if part)
            found |= {module} | {f"{module}.{alias.name}" for alias in node.names}
    return found


def test_layerwise_does_not_import_stages():
    """Stages use the per-layer tools (the TFLite float fallback places its ops with them), not the reverse."""
    offending = {path.name: sorted(m for m in imported_modules(path)
                                   if m == "edgekit.stages" or m.startswith("edgekit.stages."))
                 for path in sorted((PACKAGE / "layerwise").glob("*.py"))}
    assert not {name: modules for name, modules in offending.items() if modules}
