"""Which project modules an app imports, and which environment variables they read at import.

In-process apps share one ``sys.modules``: a settings module that reads ``os.environ`` when it
is first imported keeps the first app's value for every later app, which then fails its health
check with nothing to say why. This finds such a module statically, without importing anything:
``ast`` over the project's own files (modules that resolve under the app directory, never
site-packages), bounded in files and bytes. Pure functions over source text, then a thin reader.
"""

from __future__ import annotations

import ast
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

#: Bounds of one app's walk: a project past them is analysed as far as they go.
MAX_FILES = 2000
MAX_FILE_BYTES = 1 << 20
MAX_TOTAL_BYTES = 32 << 20

_ENVIRON_METHODS = frozenset({"get", "setdefault", "pop", "__getitem__"})


@dataclass(frozen=True)
class ModuleFacts:
    """What one module's source says, read without running it."""

    #: Absolute names of modules it may import, anywhere in it (a lazy import still fills
    #: ``sys.modules`` once, for every app after it). Some may not exist (``from pkg import name``
    #: names an attribute or a submodule): the reader keeps those it finds.
    imports: tuple[str, ...] = ()
    #: Variables it reads while it is imported (module level and class bodies).
    env_reads: tuple[str, ...] = ()
    #: pydantic-settings classes it defines: ``name -> variables`` an instance reads.
    settings_classes: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    #: Names it calls while imported that it got by ``from X import name``: ``name -> X``.
    imported_calls: Mapping[str, str] = field(default_factory=dict)


def module_facts(source: str | bytes, name: str, *, is_package: bool = False) -> ModuleFacts:
    """The facts of module ``name`` from its source (empty if it does not parse)."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return ModuleFacts()
    package = name if is_package else name.rpartition(".")[0]
    imports: list[str] = []
    from_names: dict[str, str] = {}
    os_names, environ_names, getenv_names = {"os"}, set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                imports.append(alias.name)
                if alias.name == "os":
                    os_names.add(alias.asname or "os")
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node.module, node.level, package)
            if base is None:
                continue
            imports.append(base)
            for alias in node.names:
                if alias.name == "*":
                    continue
                imports.append(f"{base}.{alias.name}")
                from_names[alias.asname or alias.name] = base
                if base == "os" and alias.name == "environ":
                    environ_names.add(alias.asname or "environ")
                elif base == "os" and alias.name == "getenv":
                    getenv_names.add(alias.asname or "getenv")
    reader = _EnvReads(os_names, environ_names, getenv_names)
    reader.visit_body(tree.body)
    settings = {
        node.name: _settings_fields(node)
        for node in ast.walk(tree)
        if isinstance(node, ast.ClassDef) and any(_tail(base) == "BaseSettings" for base in node.bases)
    }
    reads = set(reader.reads)
    for called in reader.calls:
        reads.update(settings.get(called, ()))
    return ModuleFacts(
        imports=tuple(dict.fromkeys(imports)),
        env_reads=tuple(sorted(reads)),
        settings_classes=settings,
        imported_calls={n: from_names[n] for n in sorted(reader.calls) if n in from_names and n not in settings},
    )


def _absolute(module: str | None, level: int, package: str) -> str | None:
    """The absolute module a ``from`` import names (None: relative past the top)."""
    if level == 0:
        return module
    parts = package.split(".") if package else []
    if level - 1 > len(parts) or (level - 1 == len(parts) and not module):
        return None
    base = parts[: len(parts) - (level - 1)]
    return ".".join(base + ([module] if module else [])) or None


def _tail(node: ast.expr) -> str | None:
    """``Name`` or the last part of ``a.b.Name``."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def _const(node: ast.expr | None) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _settings_fields(cls: ast.ClassDef) -> tuple[str, ...]:
    """The variables a pydantic-settings class reads: its annotated fields, upper-cased, after a
    constant ``env_prefix`` (``model_config = SettingsConfigDict(env_prefix=...)`` or ``class Config``).
    Aliases and nested models are not followed."""
    prefix = ""
    fields: list[str] = []
    for stmt in cls.body:
        if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
            if not stmt.target.id.startswith("_") and _tail(_ann_head(stmt.annotation)) != "ClassVar" \
                    and stmt.target.id != "model_config":
                fields.append(stmt.target.id)
        value = stmt.value if isinstance(stmt, (ast.Assign, ast.AnnAssign)) else None
        targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target] if isinstance(stmt, ast.AnnAssign) else []
        if isinstance(value, ast.Call) and any(isinstance(t, ast.Name) and t.id == "model_config" for t in targets):
            prefix = next((_const(k.value) or "" for k in value.keywords if k.arg == "env_prefix"), prefix)
        if isinstance(stmt, ast.ClassDef) and stmt.name == "Config":
            for inner in stmt.body:
                if isinstance(inner, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "env_prefix"
                                                         for t in inner.targets):
                    prefix = _const(inner.value) or prefix
    return tuple((prefix + f).upper() for f in fields)


def _ann_head(node: ast.expr) -> ast.expr:
    return node.value if isinstance(node, ast.Subscript) else node


class _EnvReads(ast.NodeVisitor):
    """Collects ``os.environ[...]``, ``os.environ.get(...)``, ``os.getenv(...)``, ``"X" in
    os.environ`` and the simple names called, in code that runs at import: the module body and
    class bodies, decorators and default values, not function bodies."""

    def __init__(self, os_names: set[str], environ_names: set[str], getenv_names: set[str]) -> None:
        self.os_names, self.environ_names, self.getenv_names = os_names, environ_names, getenv_names
        self.reads: list[str] = []
        self.calls: set[str] = set()

    def visit_body(self, body: Iterable[ast.stmt]) -> None:
        for stmt in body:
            self.visit(stmt)

    def _environ(self, node: ast.expr) -> bool:
        if isinstance(node, ast.Name):
            return node.id in self.environ_names
        return (isinstance(node, ast.Attribute) and node.attr == "environ" and isinstance(node.value, ast.Name)
                and node.value.id in self.os_names)

    def _function(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) -> None:
        for expr in [*getattr(node, "decorator_list", []), *node.args.defaults, *node.args.kw_defaults]:
            if expr is not None:
                self.visit(expr)

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _function

    def visit_Subscript(self, node: ast.Subscript) -> None:
        if self._environ(node.value) and (var := _const(node.slice)):
            self.reads.append(var)
        self.generic_visit(node)

    def visit_Compare(self, node: ast.Compare) -> None:
        if (len(node.ops) == 1 and isinstance(node.ops[0], (ast.In, ast.NotIn)) and self._environ(node.comparators[0])
                and (var := _const(node.left))):
            self.reads.append(var)
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        first = _const(node.args[0]) if node.args else None
        if first and isinstance(func, ast.Attribute) and func.attr in _ENVIRON_METHODS and self._environ(func.value):
            self.reads.append(first)
        elif first and (
            (isinstance(func, ast.Name) and func.id in self.getenv_names)
            or (isinstance(func, ast.Attribute) and func.attr == "getenv" and isinstance(func.value, ast.Name)
                and func.value.id in self.os_names)
        ):
            self.reads.append(first)
        elif isinstance(func, ast.Name):
            self.calls.add(func.id)
        self.generic_visit(node)


# --------------------------------------------------------------------------- closure (pure)

#: Finds a module's source: ``name -> (path, source, is_package)``, or None if it is not the project's.
Finder = Callable[[str], "tuple[Path, bytes, bool] | None"]


@dataclass(frozen=True)
class ModuleInfo:
    """A project module an app imports: its file, facts, and every variable it reads at import
    (its own reads, and the fields of settings classes it imported and instantiated)."""

    path: Path
    facts: ModuleFacts
    env_reads: tuple[str, ...]


def closure(start: str, find: Finder, *, max_files: int = MAX_FILES, max_bytes: int = MAX_TOTAL_BYTES
            ) -> dict[str, ModuleInfo]:
    """The project modules importing ``start`` may import, transitively (within the bounds)."""
    found: dict[str, ModuleInfo] = {}
    seen: set[str] = set()
    queue = [start]
    total = 0
    while queue and len(found) < max_files and total < max_bytes:
        name = queue.pop(0)
        parts = name.split(".")
        for i in range(1, len(parts) + 1):  # importing a.b.c runs a and a.b first
            part = ".".join(parts[:i])
            if part in seen:
                continue
            seen.add(part)
            hit = find(part)
            if hit is None:
                continue
            path, source, is_package = hit
            total += len(source)
            facts = module_facts(source, part, is_package=is_package)
            found[part] = ModuleInfo(path, facts, facts.env_reads)
            queue.extend(facts.imports)
    for name, info in found.items():  # a settings class imported from a project module, instantiated here
        reads = set(info.env_reads)
        for called, origin in info.facts.imported_calls.items():
            if origin in found:
                reads.update(found[origin].facts.settings_classes.get(called, ()))
        found[name] = ModuleInfo(info.path, info.facts, tuple(sorted(reads)))
    return found


@dataclass(frozen=True)
class SharedRead:
    """Two in-process apps import ``module``, which reads ``var`` at import, and need different values."""

    module: str
    path: Path
    var: str
    first: str
    second: str

    def describe(self) -> str:
        return (f"apps '{self.first}' and '{self.second}' both import {self.module}, which reads "
                f"{self.var} when first imported, and they set {self.var} differently")


def shared_reads(apps: Mapping[str, tuple[Mapping[str, ModuleInfo], Mapping[str, str]]],
                 base_env: Mapping[str, str]) -> list[SharedRead]:
    """One conflict per (module, variable): ``apps`` is ``name -> (its modules, its env)``; an app
    that does not set a variable sees ``base_env``'s value."""
    out: dict[tuple[str, str], SharedRead] = {}
    first_seen: dict[tuple[str, str], tuple[str, str | None]] = {}
    for app in sorted(apps):
        modules, env = apps[app]
        for module in sorted(modules):
            info = modules[module]
            for var in info.env_reads:
                key = (module, var)
                value = env[var] if var in env else base_env.get(var)
                if key not in first_seen:
                    first_seen[key] = (app, value)
                elif first_seen[key][1] != value and key not in out:
                    out[key] = SharedRead(module, info.path, var, first_seen[key][0], app)
    return [out[k] for k in sorted(out)]


# --------------------------------------------------------------------------- reading


def project_finder(root: Path) -> Finder:
    """A finder for modules under ``root`` only (a package's ``__init__.py`` or a ``.py`` file)."""
    root = Path(os.path.realpath(root))

    def find(name: str) -> tuple[Path, bytes, bool] | None:
        base = root.joinpath(*name.split("."))
        for path, is_package in ((base / "__init__.py", True), (base.with_name(base.name + ".py"), False)):
            try:
                if not os.path.realpath(path).startswith(str(root) + os.sep) or not path.is_file():
                    continue
                with open(path, "rb") as fh:
                    return path, fh.read(MAX_FILE_BYTES), is_package
            except OSError:
                continue
        return None

    return find


_cache: dict[tuple[str, Path], tuple[tuple[tuple[str, float, int], ...], dict[str, ModuleInfo]]] = {}


def app_modules(target: str, root: Path) -> dict[str, ModuleInfo]:
    """The project modules the app ``"module:attribute"`` may import (cached until a file changes)."""
    module = target.partition(":")[0]
    key = (module, Path(root))
    cached = _cache.get(key)
    if cached is not None and all(_stamp(p) == (p, m, s) for p, m, s in cached[0]):
        return cached[1]
    found = closure(module, project_finder(root))
    _cache[key] = (tuple(_stamp(str(info.path)) for info in found.values()), found)
    return found


def _stamp(path: str) -> tuple[str, float, int]:
    try:
        st = os.stat(path)
    except OSError:
        return path, -1.0, -1
    return path, st.st_mtime, st.st_size


class AppService(Protocol):
    """What this needs of a service (``ServiceConfig``)."""

    @property
    def name(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def app(self) -> str | None: ...
    @property
    def env(self) -> Mapping[str, str]: ...


def shared_module_conflicts(services: Iterable[AppService], root: Path, base_env: Mapping[str, str]
                            ) -> list[SharedRead]:
    """The conflicts among a config's app services, for mode resolution and ``check``."""
    apps = {s.name: (s.app, s.env) for s in services if s.kind == "app" and s.app}
    if len(apps) < 2:
        return []
    return shared_reads({name: (app_modules(app, root), env) for name, (app, env) in apps.items()}, base_env)


# --------------------------------------------------------------------------- in this process

#: What each project module an in-process app imported here saw of the variables it reads at
#: import: ``module -> (service, {var: value})``, for checking the apps imported after it.
_imported_with: dict[str, tuple[str, dict[str, str | None]]] = {}


def _loaded_from(module: object, info: ModuleInfo) -> bool:
    """Whether a module in ``sys.modules`` is the project file the analysis read."""
    file = getattr(module, "__file__", None)
    return bool(file) and os.path.realpath(str(file)) == os.path.realpath(info.path)


def stale_import(target: str, root: Path, wanted: Mapping[str, str | None],
                 loaded: Mapping[str, object]) -> tuple[str, str, str] | None:
    """A project module the app needs that is loaded already, imported under another value of a
    variable it reads than the app wants: ``(module, var, service that imported it)``, or None.
    ``wanted(var)`` is the app's value (its env, else the launcher's base environment)."""
    for name, info in sorted(app_modules(target, root).items()):
        record = _imported_with.get(name)
        if record is None or name not in loaded or not _loaded_from(loaded[name], info):
            continue
        service, values = record
        for var in info.env_reads:
            if var in values and values[var] != wanted.get(var):
                return name, var, service
    return None


def record_imports(service: str, target: str, root: Path, before: Iterable[str], loaded: Mapping[str, object],
                   environ: Mapping[str, str]) -> None:
    """Remember what the project modules this app's import loaded saw of the variables they read."""
    earlier = set(before)
    for name, info in app_modules(target, root).items():
        if name not in earlier and name in loaded and _loaded_from(loaded[name], info):
            _imported_with[name] = (service, {var: environ.get(var) for var in info.env_reads})
