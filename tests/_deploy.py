"""Helpers of the deploy/ checks (tests/test_deploy_rules.py, tests/service/test_dashboard.py): where the files are,
promtool, a reader for the rule files, and a PromQL scanner that finds the metrics and labels an expression uses.

The rule files are read without a YAML library (none is a dependency of the project): :func:`read_rules` knows the
shape of deploy/prometheus/rules.yml (``- record:`` / ``- alert:`` entries, block scalars) and
``tests/test_deploy_rules.py`` checks that it finds as many rules as ``promtool check rules`` does. The PromQL
scanner is lexical (strings, ranges, grouping clauses, function calls set aside), enough for checking names;
promtool itself parses every expression.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from harness.services import skip_or_fail

REPO = Path(__file__).resolve().parent.parent
RULES = REPO / "deploy" / "prometheus" / "rules.yml"
RULES_TEST = REPO / "deploy" / "prometheus" / "rules_test.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "cachelayer.json"
RUNBOOK = REPO / "docs" / "operations.md"

#: Labels Prometheus adds to every scraped series (not in the service's own exposition).
TARGET_LABELS = frozenset({"job", "instance"})


def promtool() -> str:
    """The path of promtool; skips the test (fails it in CI) when it is missing."""
    path = shutil.which("promtool")
    if path is None:
        skip_or_fail("promtool is not installed (Debian's prometheus package; `make system-deps` installs it)")
    return path


def run_promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *map(str, args)], capture_output=True, text=True, timeout=120, check=False)


# --------------------------------------------------------------------------- rule files


@dataclass
class Rule:
    kind: str  # "record" or "alert"
    name: str
    fields: dict[str, str] = field(default_factory=dict)  # expr, for, and the labels' and annotations' keys

    @property
    def expr(self) -> str:
        return self.fields["expr"]


_RULE_START = re.compile(r"^(\s*)- (record|alert):\s*(\S+)\s*$")
_KEY = re.compile(r"^(\s*)([A-Za-z_]\w*):\s*(.*?)\s*$")


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    return value


def read_rules(path: Path = RULES) -> list[Rule]:
    """The rules of a rule file, in order, each with its keys flattened (``labels.severity`` -> ``severity``).
    Block scalars (``|``, ``>-``) are joined: ``|`` keeps its lines, ``>`` folds them into one."""
    lines = path.read_text().splitlines()
    rules: list[Rule] = []
    i = 0
    while i < len(lines):
        start = _RULE_START.match(lines[i])
        i += 1
        if start is None:
            continue
        rule = Rule(start.group(2), start.group(3))
        rules.append(rule)
        indent = len(start.group(1))
        while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > indent):
            key = _KEY.match(lines[i])
            i += 1
            if key is None or key.group(3).startswith("#"):
                continue
            value = key.group(3)
            if value in ("|", "|-", ">", ">-"):
                key_indent = len(key.group(1))
                block: list[str] = []
                while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > key_indent):
                    block.append(lines[i].strip())
                    i += 1
                value = ("\n" if value.startswith("|") else " ").join(part for part in block if part)
            rule.fields[key.group(2)] = _unquote(value)
    return rules


_ALERT_TEST = re.compile(r"^\s*-?\s*alertname:\s*(\S+)\s*\n\s*exp_alerts:\s*(\[\])?\s*$", re.M)


def alert_tests(path: Path = RULES_TEST) -> list[tuple[str, bool]]:
    """(alertname, fires) of each alert_rule_test entry: fires is False for ``exp_alerts: []``. Every
    ``alertname:`` must be followed by its ``exp_alerts`` (checked: the count must match)."""
    text = path.read_text()
    found = [(m.group(1), m.group(2) is None) for m in _ALERT_TEST.finditer(text)]
    assert len(found) == len(re.findall(r"^\s*-?\s*alertname:", text, re.M)), (
        f"{path.name}: write each alert_rule_test as `alertname:` followed by its `exp_alerts:`"
    )
    return found


def anchors(path: Path = RUNBOOK) -> set[str]:
    """The anchors of a Markdown file's headings (GitHub's rule: lower case, punctuation dropped, spaces to -)."""
    found: set[str] = set()
    fenced = False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and (heading := re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)):
            found.add(re.sub(r"[^\w\- ]", "", heading.group(1).lower()).replace(" ", "-"))
    return found


# --------------------------------------------------------------------------- PromQL


@dataclass(frozen=True)
class Selector:
    metric: str  # a metric's name, or a recording rule's (it has colons)
    labels: frozenset[str]  # label names of its matchers


@dataclass(frozen=True)
class Usage:
    selectors: tuple[Selector, ...]
    grouping: frozenset[str]  # labels of by / without / on / ignoring / group_left / group_right


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_RANGE = re.compile(r"\[[^\]]*\]")
_OFFSET = re.compile(r"\boffset\s+-?\w+")
_TOKEN = re.compile(r"(?<![\w.:])([A-Za-z_:][\w:]*)?\s*(\{[^}]*\})?")
_MATCHER_LABEL = re.compile(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)")
_KEYWORDS = frozenset({"and", "or", "unless", "bool", "inf", "nan", "offset", "atan2"})


def promql_usage(expr: str) -> Usage:
    """The selectors of a PromQL expression (metric or recording rule, and its matchers' label names) and the
    labels its grouping clauses name."""
    text = _STRING.sub('""', expr)
    grouping = {label.strip() for clause in _GROUPING.findall(text) for label in clause.split(",") if label.strip()}
    text = _OFFSET.sub(" ", _RANGE.sub(" ", _GROUPING.sub(" ", text)))
    selectors: list[Selector] = []
    for match in _TOKEN.finditer(text):
        name, matchers = match.group(1), match.group(2)
        if not name and not matchers:
            continue
        if name and not matchers and (name.lower() in _KEYWORDS or text[match.end() :].lstrip().startswith("(")):
            continue  # a keyword, or a function or an aggregation
        labels = frozenset(_MATCHER_LABEL.findall(matchers or ""))
        if not name:
            raise AssertionError(f"a selector without a metric name ({matchers}) cannot be checked: {expr}")
        selectors.append(Selector(name, labels))
    return Usage(tuple(selectors), frozenset(grouping))


_GRAFANA_DURATIONS = re.compile(r"\$__(?:rate_interval|interval|range)\b|\$\{__(?:rate_interval|interval|range)\}")
_GRAFANA_VARIABLE = re.compile(r"\$\{\w+(?::\w+)?\}|\$\w+|\[\[\w+\]\]")


def grafana_to_promql(expr: str) -> str:
    """A Grafana query as Prometheus sees it: ``$__rate_interval`` and the like become 5m, every other variable
    (used only inside label matchers' values) a plain word."""
    expr = _GRAFANA_VARIABLE.sub("all", _GRAFANA_DURATIONS.sub("5m", expr))
    assert "$" not in expr, f"a Grafana variable left in {expr!r}"
    return expr


def recorded_labels(record: str) -> frozenset[str]:
    """The labels a recording rule keeps, from its name (level:metric:operations, level = labels joined by _),
    plus job."""
    return frozenset({"job", *record.split(":")[0].split("_")})
