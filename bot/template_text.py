"""A prompt template's text: checked when it is saved, filled in when it is run, in Jinja2's sandbox.

The sandbox keeps a template from reaching Python internals; on top of it a template gets only what a
prompt needs (values, filters that cannot blow up, `if`, one level of `for`), so that what people write
for their server can neither read the process nor make it build a gigabyte of text.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from jinja2 import StrictUndefined, TemplateError, TemplateSyntaxError, meta, nodes
from jinja2.runtime import LoopContext
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

TEXT_LIMIT = 4000  # characters of a template as saved
VALUE_LIMIT = 1000  # characters of one variable's value
OUTPUT_LIMIT = 12_000  # characters of the question a template makes
FORM_FIELDS = 5  # variables a template may have: a Discord form holds five text fields
VARIABLE_NAME = re.compile(r"[a-z_][a-z0-9_]{0,39}")
BUILT_INS = ("user", "channel", "date", "time")
RANGE_LIMIT = 100
# Filters whose output stays about the size of their input (no center(10**9), no chained replace).
FILTERS = [
    "abs",
    "capitalize",
    "count",
    "d",
    "default",
    "e",
    "escape",
    "first",
    "float",
    "int",
    "last",
    "length",
    "lower",
    "reverse",
    "round",
    "sort",
    "string",
    "striptags",
    "title",
    "trim",
    "truncate",
    "unique",
    "upper",
    "wordcount",
]
# What a template may contain besides text, values, `if` and `for`.
REFUSED_TAGS: tuple[tuple[type[nodes.Node], str], ...] = (
    (nodes.Assign, "{% set %}"),
    (nodes.AssignBlock, "{% set %}"),
    (nodes.Macro, "{% macro %}"),
    (nodes.CallBlock, "{% call %}"),
    (nodes.Block, "{% block %}"),
    (nodes.Extends, "{% extends %}"),
    (nodes.Include, "{% include %}"),
    (nodes.Import, "{% import %}"),
    (nodes.FromImport, "{% from … import %}"),
    (nodes.With, "{% with %}"),
    (nodes.FilterBlock, "{% filter %}"),
)


class TemplateRefused(ValueError):
    """A template that cannot be saved or run, with the one sentence that says why."""


class _Sandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox, with no attributes but a loop's and no operator that multiplies text."""

    intercepted_binops = frozenset({"*", "**", "%"})

    def is_safe_attribute(self, obj: object, attr: str, value: object) -> bool:
        return isinstance(obj, LoopContext) and super().is_safe_attribute(obj, attr, value)

    def call_binop(self, context: object, operator: str, left: object, right: object) -> object:
        if operator == "%" and isinstance(left, str):
            raise SecurityError("templates may not format text with %")
        if operator == "**" and isinstance(right, int | float) and abs(right) > 64:
            raise SecurityError("that power is too large")
        if operator == "*":
            for text, times in ((left, right), (right, left)):
                sized = isinstance(text, str | list | tuple) and isinstance(times, int)
                if sized and len(text) * times > OUTPUT_LIMIT:  # type: ignore[arg-type, operator]
                    raise SecurityError("that repetition makes too much text")
        return super().call_binop(context, operator, left, right)  # type: ignore[arg-type]


def _range(*args: int) -> range:
    numbers = range(*args)
    if len(numbers) > RANGE_LIMIT:
        raise SecurityError(f"range() is limited to {RANGE_LIMIT} numbers in a template")
    return numbers


def _environment() -> _Sandbox:
    environment = _Sandbox(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)
    environment.filters = {name: environment.filters[name] for name in FILTERS}
    environment.globals = {"range": _range}
    return environment


_ENVIRONMENT = _environment()


def variables(text: str) -> tuple[str, ...]:
    """The variables a template asks for (built-ins left out), in the order they first appear; raises
    TemplateRefused with one sentence when the text cannot be a template."""
    if len(text) > TEXT_LIMIT:
        raise TemplateRefused(f"That template is {len(text):,} characters; the limit is {TEXT_LIMIT:,}.")
    try:
        tree = _ENVIRONMENT.parse(text)
        _ENVIRONMENT.compile(tree)  # unknown filters and the like are found here
    except TemplateSyntaxError as error:
        message = (error.message or "").rstrip(".")
        raise TemplateRefused(f"The template does not parse: {message} (line {error.lineno}).") from None
    _check(tree)
    undeclared = meta.find_undeclared_variables(tree) - {*BUILT_INS, "range"}
    names = tuple(dict.fromkeys(n.name for n in tree.find_all(nodes.Name) if n.name in undeclared))
    for name in names:
        if not VARIABLE_NAME.fullmatch(name):
            raise TemplateRefused(
                f"The variable {name[:40]!r} is not a name a form can ask for: use lower-case letters, "
                "digits and _, at most 40 characters."
            )
    if len(names) > FORM_FIELDS:
        raise TemplateRefused(
            f"That template has {len(names)} variables; a template may have at most {FORM_FIELDS} "
            "(besides user, channel, date and time)."
        )
    return names


def _check(tree: nodes.Template) -> None:
    for kind, tag in REFUSED_TAGS:
        if next(tree.find_all(kind), None) is not None:
            raise TemplateRefused(f"Templates may use {{{{ }}}}, if and for, not {tag}.")
    for node in tree.find_all((nodes.Getattr, nodes.Getitem)):
        reached = node.attr if isinstance(node, nodes.Getattr) else getattr(node.arg, "value", None)
        if isinstance(reached, str) and reached.startswith("_"):
            raise TemplateRefused(f"Templates may not reach into {reached!r}: the sandbox refuses internals.")
    for loop in tree.find_all(nodes.For):
        if loop.recursive or next(_inner_loops(loop), None) is not None:
            raise TemplateRefused("Templates may use one level of {% for %}, not a loop inside a loop.")


def _inner_loops(loop: nodes.For) -> Iterable[nodes.For]:
    for child in [*loop.body, *loop.else_]:
        if isinstance(child, nodes.For):
            yield child
        yield from child.find_all(nodes.For)


def render(text: str, values: Mapping[str, str]) -> str:
    """The question a template makes from these values; raises TemplateRefused with one sentence."""
    variables(text)  # a template saved under older rules is held to today's
    pieces: list[str] = []
    size = 0
    try:
        for piece in _ENVIRONMENT.from_string(text).generate(dict(values)):
            size += len(piece)
            if size > OUTPUT_LIMIT:
                raise TemplateRefused(f"The template makes more than {OUTPUT_LIMIT:,} characters of text.")
            pieces.append(piece)
    except TemplateRefused:
        raise
    except SecurityError as error:
        raise TemplateRefused(f"The sandbox refused the template: {str(error).rstrip('.')}.") from None
    except (TemplateError, ArithmeticError, TypeError, ValueError) as error:
        raise TemplateRefused(f"The template could not be filled in: {str(error).rstrip('.')}.") from None
    return "".join(pieces).strip()
