"""The components an app's pyproject.toml names must exist before a run starts.

``[tool.flwrmtls.app.components]`` names ``serverapp`` and ``clientapp`` as
``package.module:attribute``. A name that does not exist would start the run and end it with
the ServerApp's traceback; checked here instead, when the bundle is built, in one line naming
the entry. Rules:

* The module must be one of the files being bundled (``package/module.py`` or
  ``package/module/__init__.py``).
* The attribute must be bound at the module's top level: assigned, defined (``def``,
  ``class``) or imported by name. The source is parsed (``ast``), never imported or run.
* What cannot be known without running the module is accepted: a module with a star import
  (``from x import *``) or a module-level ``__getattr__`` may bind any name.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping

from flwrmtls.errors import InputError

__all__ = ["check_component"]


def _module_files(module: str) -> tuple[str, str]:
    path = module.replace(".", "/")
    return f"{path}.py", f"{path}/__init__.py"


def _top_level_names(tree: ast.Module) -> tuple[set[str], bool]:
    """Names the module binds at its top level, and whether it may bind any (star import)."""
    names: set[str] = set()
    anything = False

    def targets(node: ast.expr) -> Iterable[str]:
        if isinstance(node, ast.Name):
            yield node.id
        elif isinstance(node, ast.Tuple | ast.List):
            for element in node.elts:
                yield from targets(element)
        elif isinstance(node, ast.Starred):
            yield from targets(node.value)

    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
            anything |= node.name == "__getattr__"
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                names.update(targets(target))
        elif isinstance(node, ast.AnnAssign | ast.AugAssign) and node.value is not None:
            names.update(targets(node.target))
        elif isinstance(node, ast.Import | ast.ImportFrom):
            for alias in node.names:
                if alias.name == "*":
                    anything = True
                else:
                    names.add(alias.asname or alias.name.split(".", 1)[0])
        elif isinstance(node, ast.If | ast.Try | ast.With):  # conditional definitions count
            inner, any_inner = _top_level_names(ast.Module(body=_bodies(node), type_ignores=[]))
            names |= inner
            anything |= any_inner
    return names, anything


def _bodies(node: ast.If | ast.Try | ast.With) -> list[ast.stmt]:
    statements = list(node.body)
    if isinstance(node, ast.If):
        statements += node.orelse
    elif isinstance(node, ast.Try):
        statements += node.orelse + node.finalbody
        for handler in node.handlers:
            statements += handler.body
    return statements


def check_component(entry: str, reference: str, sources: Mapping[str, bytes], where: str) -> None:
    """Raise InputError unless ``reference`` (``package.module:attribute``) exists among
    ``sources`` (bundle member name -> bytes). ``entry`` names the key, ``where`` the file."""
    module, _, attribute = reference.partition(":")
    candidates = _module_files(module)
    source = next((sources[name] for name in candidates if name in sources), None)
    if source is None:
        raise InputError(
            f"{where}: [tool.flwrmtls.app.components] {entry} = {reference!r}: the app has no "
            f"module {module} (looked for {candidates[0]} and {candidates[1]})"
        )
    try:
        tree = ast.parse(source, filename=candidates[0])
    except (SyntaxError, ValueError) as error:
        raise InputError(
            f"{where}: [tool.flwrmtls.app.components] {entry} = {reference!r}: module "
            f"{module} does not parse: {error}"
        ) from None
    names, anything = _top_level_names(tree)
    if attribute not in names and not anything:
        raise InputError(
            f"{where}: [tool.flwrmtls.app.components] {entry} = {reference!r}: module "
            f"{module} defines no {attribute!r}"
        )
