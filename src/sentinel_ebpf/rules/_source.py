"""Read a YAML or JSON text into plain Python values plus the source line of every value.

YAML goes through PyYAML's ``compose`` (the node tree carries start marks). JSON goes through a small
recursive-descent reader built on the standard library's own string and number scanners, so JSON values
keep strict JSON semantics and every value still gets its line. Duplicate mapping keys are reported
(PyYAML and ``json`` would silently keep the last one).
"""

from __future__ import annotations

import bisect
import json
import json.decoder
import json.scanner
from dataclasses import dataclass, field
from typing import Any

import yaml

from sentinel_ebpf.rules.errors import Problem

Path = tuple[str | int, ...]


@dataclass
class Document:
    """A parsed document: ``data`` as plain values, ``lines`` mapping a value's path to its 1-based line."""

    file: str
    data: Any
    fmt: str  # "yaml" or "json"
    lines: dict[Path, int] = field(default_factory=dict)

    def line(self, path: Path) -> int | None:
        """The line of the value at ``path``, or of its nearest ancestor that has one."""
        p = tuple(path)
        while True:
            if p in self.lines:
                return self.lines[p]
            if not p:
                return None
            p = p[:-1]


class SourceError(Exception):
    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("; ".join(str(p) for p in problems))
        self.problems = problems


def looks_like_json(text: str, file: str) -> bool:
    if file.lower().endswith(".json"):
        return True
    stripped = text.lstrip()
    return stripped.startswith("[") or stripped.startswith("{")


def parse_documents(text: str, file: str) -> list[Document]:
    """Parse ``text``; YAML may hold several documents separated by ``---``."""
    if looks_like_json(text, file):
        try:
            return [_JsonReader(text, file).read()]
        except SourceError:
            if file.lower().endswith(".json"):
                raise
            # "{a: 1}" is YAML flow style, not JSON: let the YAML reader have it.
    return _read_yaml(text, file)


# --- YAML -----------------------------------------------------------------------------------------


def _read_yaml(text: str, file: str) -> list[Document]:
    loader = yaml.SafeLoader(text)
    docs: list[Document] = []
    problems: list[Problem] = []
    try:
        while loader.check_node():
            node = loader.get_node()
            doc = Document(file=file, data=None, fmt="yaml")
            if node is None:
                break
            doc.data = _convert(loader, node, (), doc, problems)
            docs.append(doc)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        reason = f"not valid YAML: {exc.problem or exc.context}"
        raise SourceError([Problem(file=file, reason=reason, line=line)]) from exc
    except yaml.YAMLError as exc:
        raise SourceError([Problem(file=file, reason=f"not valid YAML: {exc}")]) from exc
    finally:
        loader.dispose()
    if problems:
        raise SourceError(problems)
    return docs


def _convert(
    loader: yaml.SafeLoader, node: yaml.Node, path: Path, doc: Document, problems: list[Problem]
) -> Any:
    doc.lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)  # resolves YAML merge keys ("<<")
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            if not isinstance(key, (str, int, float, bool)) and key is not None:
                problems.append(
                    Problem(
                        file=doc.file,
                        line=key_node.start_mark.line + 1,
                        reason=f"mapping key must be a scalar, got {type(key).__name__}",
                    )
                )
                continue
            if key in out:
                problems.append(
                    Problem(
                        file=doc.file,
                        line=key_node.start_mark.line + 1,
                        field=".".join(str(p) for p in (*path, key)),
                        reason=f"duplicate key {key!r}",
                    )
                )
            kpath: Path = (*path, str(key) if not isinstance(key, int) or isinstance(key, bool) else key)
            out[key] = _convert(loader, value_node, kpath, doc, problems)
            doc.lines[kpath] = key_node.start_mark.line + 1
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_convert(loader, item, (*path, i), doc, problems) for i, item in enumerate(node.value)]
    return loader.construct_object(node, deep=True)


# --- JSON -----------------------------------------------------------------------------------------

_WS = " \t\n\r"
_scanstring: Any = json.decoder.scanstring  # type: ignore[attr-defined]


class _JsonReader:
    def __init__(self, text: str, file: str) -> None:
        self.text = text
        self.file = file
        self.pos = 0
        self.doc = Document(file=file, data=None, fmt="json")
        self.problems: list[Problem] = []
        # Line starts, to turn an offset into a line number by bisection.
        self._line_starts = [0] + [i + 1 for i, ch in enumerate(text) if ch == "\n"]

    def read(self) -> Document:
        self._skip_ws()
        self.doc.data = self._value(())
        self._skip_ws()
        if self.pos != len(self.text):
            self._fail("extra data after the JSON value")
        if self.problems:
            raise SourceError(self.problems)
        return self.doc

    def _line(self, pos: int) -> int:
        return bisect.bisect_right(self._line_starts, pos)

    def _fail(self, msg: str) -> None:
        line = self._line(self.pos)
        raise SourceError([Problem(file=self.file, line=line, reason=f"not valid JSON: {msg}")])

    def _skip_ws(self) -> None:
        text, pos = self.text, self.pos
        while pos < len(text) and text[pos] in _WS:
            pos += 1
        self.pos = pos

    def _value(self, path: Path) -> Any:
        self._skip_ws()
        if self.pos >= len(self.text):
            self._fail("unexpected end of document")
        self.doc.lines[path] = self._line(self.pos)
        ch = self.text[self.pos]
        if ch == "{":
            return self._object(path)
        if ch == "[":
            return self._array(path)
        if ch == '"':
            return self._string()
        for word, val in (("true", True), ("false", False), ("null", None)):
            if self.text.startswith(word, self.pos):
                self.pos += len(word)
                return val
        m = json.scanner.NUMBER_RE.match(self.text, self.pos)
        if m is None:
            self._fail(f"unexpected character {ch!r}")
            raise AssertionError  # unreachable; _fail raises
        integer, frac, exp = m.groups()
        self.pos = m.end()
        if frac or exp:
            return float(integer + (frac or "") + (exp or ""))
        return int(integer)

    def _string(self) -> str:
        try:
            s, end = _scanstring(self.text, self.pos + 1, True)
        except json.JSONDecodeError as exc:
            self.pos = exc.pos
            self._fail(exc.msg)
            raise AssertionError from exc
        self.pos = end
        return str(s)

    def _take(self, token: str) -> bool:
        """Consume ``token`` if the text goes on with it."""
        if self.text.startswith(token, self.pos):
            self.pos += len(token)
            return True
        return False

    def _item_ends(self, close: str, container: str) -> bool:
        """After an item of an object or array: True at its ``close``, False at a ',' (either consumed)."""
        self._skip_ws()
        if self._take(","):
            return False
        if not self._take(close):
            self._fail(f"expected ',' or '{close}' in {container}")
        return True

    def _object(self, path: Path) -> dict[str, Any]:
        out: dict[str, Any] = {}
        self.pos += 1
        self._skip_ws()
        if self._take("}"):
            return out
        while True:
            self._skip_ws()
            if not self.text.startswith('"', self.pos):
                self._fail("expected a property name in double quotes")
            key_line = self._line(self.pos)
            key = self._string()
            self._skip_ws()
            if not self._take(":"):
                self._fail("expected ':' after a property name")
            if key in out:
                self.problems.append(
                    Problem(
                        file=self.file,
                        line=key_line,
                        field=".".join(str(p) for p in (*path, key)),
                        reason=f"duplicate key {key!r}",
                    )
                )
            kpath: Path = (*path, key)
            out[key] = self._value(kpath)
            self.doc.lines[kpath] = key_line
            if self._item_ends("}", "an object"):
                return out

    def _array(self, path: Path) -> list[Any]:
        out: list[Any] = []
        self.pos += 1
        self._skip_ws()
        if self._take("]"):
            return out
        while True:
            out.append(self._value((*path, len(out))))
            if self._item_ends("]", "an array"):
                return out
