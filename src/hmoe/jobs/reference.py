"""The key reference pages, generated from the config classes themselves.

``docs/config.md`` lists every key of an ``ExperimentConfig`` (what ``--set`` and search spaces
change) and ``docs/data_spec.md`` every key of a dataset spec, each with its type, its default
and its meaning. The meaning is read from the source: the comment on the field's line or the
lines above it, else the first sentence of the class docstring that names the field in double
backticks. ``python -m hmoe.jobs.reference docs/`` rewrites both pages; a test keeps them current.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import re
import textwrap
import types
import typing
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal, Union

from hmoe.config import Config

__all__ = ["Key", "keys_of", "main", "render_config_page", "render_data_spec_page"]

#: what a reader of a table cell needs of a long default (a nested config is its own section)
MAX_DEFAULT_CHARS = 60
_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z`(])|;\s+")
GENERATED_NOTE = (
    "Generated from the config classes by `python -m hmoe.jobs.reference docs/`; "
    "a test keeps this page current."
)


@dataclasses.dataclass(frozen=True)
class Key:
    """One documented key: its dotted path, type, default and meaning ("" when undocumented)."""

    path: str
    type: str
    default: str
    meaning: str
    section: str  # the dotted path of the config that holds it ("" for the root)
    owner: str  # the config class name


def keys_of(root: type[Config]) -> list[Key]:
    """Every key reachable from ``root``, depth first in field order."""
    return list(_walk(root, "", set()))


def _walk(cls: type[Config], prefix: str, seen: set[tuple[type, str]]) -> Iterator[Key]:
    if (cls, prefix) in seen:
        return
    seen.add((cls, prefix))
    meanings = _field_meanings(cls)
    hints = typing.get_type_hints(cls)
    nested: list[tuple[str, type[Config]]] = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        tp = hints[f.name]
        path = f"{prefix}.{f.name}" if prefix else f.name
        children = _config_children(tp, path)
        meaning = meanings.get(f.name, "")
        if not meaning and children:  # a section: what its class is for
            meaning = _first_sentence(inspect.getdoc(children[0][0]) or "")
        yield Key(
            path=path,
            type=_type_text(tp),
            default=_default_text(f),
            meaning=meaning,
            section=prefix,
            owner=cls.__name__,
        )
        for child, child_path in children:
            nested.append((child_path, child))
    for child_path, child in nested:
        yield from _walk(child, child_path, seen)


def _config_children(tp: Any, path: str) -> list[tuple[type[Config], str]]:
    """The config classes a field holds: itself, ``X | None``, or the values of a mapping."""
    if inspect.isclass(tp) and issubclass(tp, Config):
        return [(tp, path)]
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (Union, types.UnionType):
        return [c for a in args for c in _config_children(a, path)]
    if origin is not None and inspect.isclass(origin) and issubclass(origin, Mapping):
        return _config_children(args[1], f"{path}.<name>") if len(args) == 2 else []
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return _config_children(args[0], f"{path}[]")
    return []


def _type_text(tp: Any) -> str:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is type(None):
        return "null"
    if origin is Literal:
        return " \\| ".join(repr(a).replace("'", '"') for a in args)
    if origin in (Union, types.UnionType):
        return " \\| ".join(_type_text(a) for a in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            item = _type_text(args[0])
            return "list of sections" if item == "section" else f"list of {item}"
        return "[" + ", ".join(_type_text(a) for a in args) + "]"
    if origin is not None and inspect.isclass(origin) and issubclass(origin, Mapping):
        return f"mapping of {_type_text(args[0])} to {_type_text(args[1])}"
    if inspect.isclass(tp) and issubclass(tp, Config):
        return "section"
    return getattr(tp, "__name__", str(tp))


def _default_text(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return "required"
    if isinstance(value, Config):
        return "see section"
    if isinstance(value, Mapping):
        value = dict(value)
        if value and all(isinstance(v, Config) for v in value.values()):
            return "see section"
    text = _yaml_text(value)
    if len(text) > MAX_DEFAULT_CHARS:
        text = text[: MAX_DEFAULT_CHARS - 3] + "..."
    return f"`{text}`"


def _yaml_text(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"' if value == "" else value
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_yaml_text(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_yaml_text(v)}" for k, v in value.items()) + "}"
    return repr(value)


def _field_meanings(cls: type) -> dict[str, str]:
    """Per field: its line comment, else the comment lines above it, else the first docstring
    sentence naming it."""
    source = textwrap.dedent(inspect.getsource(cls))
    lines = source.splitlines()
    tree = ast.parse(source)
    (node,) = [n for n in tree.body if isinstance(n, ast.ClassDef)]
    docstring = inspect.getdoc(cls) or ""
    args = _args_section(docstring)
    sentences = _SENTENCE.split(" ".join(docstring.split("\nArgs:")[0].split()))
    out: dict[str, str] = {}
    for statement in node.body:
        if not isinstance(statement, ast.AnnAssign) or not isinstance(statement.target, ast.Name):
            continue
        name = statement.target.id
        meaning = _line_comment(lines[statement.end_lineno - 1])
        if not meaning:
            meaning = _comment_above(lines, statement.lineno - 1)
        if not meaning:
            meaning = args.get(name, "")
        if not meaning:  # a clause of the docstring about ``name`` (or ``name=value``)
            named = re.compile(rf"``{re.escape(name)}(``|\s*=)")
            about = [s for s in sentences if named.search(s)]
            meaning = next((s for s in about if named.match(s)), about[0] if about else "")
        out[name] = _markdown(meaning)
    return out


def _args_section(docstring: str) -> dict[str, str]:
    """``name: text`` entries of a Google-style ``Args:`` section, by name."""
    if "\nArgs:" not in docstring:
        return {}
    entries: dict[str, str] = {}
    current = ""
    for line in docstring.split("\nArgs:", 1)[1].splitlines():
        if line and not line.startswith(" "):
            break  # the next section
        match = re.match(r"^\s{4}(\w+): (.*)$", line)
        if match:
            current = match.group(1)
            entries[current] = match.group(2).strip()
        elif current and line.strip():
            entries[current] += " " + line.strip()
    return entries


def _first_sentence(doc: str) -> str:
    return _markdown(_SENTENCE.split(" ".join(doc.split("\n\n")[0].split()))[0])


def _line_comment(line: str) -> str:
    """The ``# comment`` ending a line of code (a ``#`` inside a string is not one)."""
    try:
        tokens = list(_tokens(line))
    except SyntaxError:
        return ""
    return next((t[1:].strip() for t in tokens if t.startswith("#")), "")


def _tokens(line: str) -> Iterator[str]:
    import io
    import tokenize

    try:
        for token in tokenize.generate_tokens(io.StringIO(line + "\n").readline):
            if token.type == tokenize.COMMENT:
                yield token.string
    except tokenize.TokenError:
        return


def _comment_above(lines: list[str], index: int) -> str:
    """The block of ``#`` lines directly above line ``index`` (0-based), joined."""
    block: list[str] = []
    j = index - 1
    while j >= 0 and lines[j].strip().startswith("#"):
        block.insert(0, lines[j].strip()[1:].strip())
        j -= 1
    return " ".join(block)


def _markdown(text: str) -> str:
    """Docstring markup as Markdown: ``x`` -> `x`; table-safe pipes."""
    return text.replace("``", "`").replace("|", "\\|")


def _table(keys: list[Key]) -> list[str]:
    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for k in keys:
        rows.append(f"| `{k.path}` | {k.type} | {k.default} | {k.meaning} |")
    return rows


def _sections(keys: list[Key], root_doc: str) -> list[str]:
    by_section: dict[str, list[Key]] = {}
    for k in keys:
        by_section.setdefault(k.section, []).append(k)
    out: list[str] = []
    first_place: dict[str, str] = {}  # class name -> the section that lists its keys
    for section, members in by_section.items():
        cls_name = members[0].owner
        out += ["", f"## `{section}`" if section else "## top level", ""]
        if cls_name in first_place:
            out.append(
                f"Class `{cls_name}`: the keys of `{first_place[cls_name]}`, under this path."
            )
            continue
        first_place[cls_name] = section
        doc = _class_summary(members[0], root_doc)
        if doc:
            out += [doc, ""]
        out += [f"Class `{cls_name}`.", ""]
        out += _table(members)
    return out


def _class_summary(key: Key, root_doc: str) -> str:
    return _CLASS_DOCS.get(key.owner, "") if key.section else root_doc


_CLASS_DOCS: dict[str, str] = {}


def _collect_class_docs(root: type[Config]) -> None:
    """The first paragraph of each config class's docstring, by class name."""
    stack: list[type] = [root]
    done: set[type] = set()
    while stack:
        cls = stack.pop()
        if cls in done:
            continue
        done.add(cls)
        doc = inspect.getdoc(cls) or ""
        _CLASS_DOCS[cls.__name__] = _markdown(" ".join(doc.split("\n\n")[0].split()))
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            stack += [c for c, _ in _config_children(hints[f.name], f.name)]


def render_config_page() -> str:
    """``docs/config.md``: every key of an experiment config."""
    from hmoe.platform.experiment import ExperimentConfig

    _collect_class_docs(ExperimentConfig)
    keys = keys_of(ExperimentConfig)
    head = [
        "# Configuration keys",
        "",
        "Every key of a run's configuration (`hmoe.platform.experiment.ExperimentConfig`): what "
        "`hmoe train --set KEY=VALUE`, job-spec `overrides` and search spaces change. A preset "
        "(`hmoe.models.zoo.PRESETS`) sets its own values for many of them; the defaults below "
        "are the classes' own. `<name>` stands for a key of a mapping (an expert kind, a task). "
        f"{len(keys)} keys.",
        "",
        GENERATED_NOTE,
    ]
    return "\n".join(head + _sections(keys, _CLASS_DOCS["ExperimentConfig"])) + "\n"


def render_data_spec_page() -> str:
    """``docs/data_spec.md``: every key of a dataset spec, with a shipped spec as the example."""
    from importlib import resources

    from hmoe.platform.data.spec import DatasetSpec

    _collect_class_docs(DatasetSpec)
    keys = keys_of(DatasetSpec)
    specs = resources.files("hmoe.platform.data") / "specs"
    names = sorted(p.name for p in specs.iterdir() if p.name.endswith(".yaml"))
    example = (specs / "ml-100k.yaml").read_text().rstrip()
    head = [
        "# Dataset spec keys",
        "",
        "A dataset spec (YAML) tells `hmoe data prepare` where the raw logs are and what each "
        "column is: `hmoe.platform.data.spec.DatasetSpec`. `hmoe data synth` writes one beside "
        "its logs; the shipped specs are "
        + ", ".join(f"`{n}`" for n in names)
        + " under `src/hmoe/platform/data/specs/`. "
        f"{len(keys)} keys.",
        "",
        GENERATED_NOTE,
        "",
        "## Example: MovieLens-100k",
        "",
        "```yaml",
        example,
        "```",
    ]
    return "\n".join(head + _sections(keys, _CLASS_DOCS["DatasetSpec"])) + "\n"


PAGES = {"config.md": render_config_page, "data_spec.md": render_data_spec_page}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="the docs folder to write the pages into")
    args = parser.parse_args(argv)
    for name, render in PAGES.items():
        (args.out / name).write_text(render())
        print(args.out / name)


if __name__ == "__main__":
    main()
