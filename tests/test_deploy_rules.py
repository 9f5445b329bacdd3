"""deploy/prometheus: the alert and recording rules pass ``promtool check rules``, their unit tests pass
``promtool test rules``, every alert is both fired and kept quiet by a test, and every alert says what it is about
and links its runbook section in docs/operations.md. (That every metric the rules use is exported by the service:
tests/service/test_dashboard.py, which scrapes it.) promtool missing: skipped, failed in CI."""

from __future__ import annotations

import re

from tests._deploy import (
    RULES,
    RULES_TEST,
    RUNBOOK,
    alert_tests,
    anchors,
    promql_usage,
    read_rules,
    recorded_labels,
    run_promtool,
)

SEVERITIES = {"critical", "warning"}


def test_promtool_check_rules() -> None:
    result = run_promtool("check", "rules", RULES)
    assert result.returncode == 0, result.stdout + result.stderr
    # The reader the other checks use sees every rule promtool sees.
    found = re.search(r"SUCCESS: (\d+) rules found", result.stdout)
    assert found is not None, result.stdout
    assert int(found.group(1)) == len(read_rules())


def test_promtool_test_rules() -> None:
    result = run_promtool("test", "rules", RULES_TEST)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_is_fired_by_a_test_and_kept_quiet_by_another() -> None:
    alerts = {rule.name for rule in read_rules() if rule.kind == "alert"}
    assert len(alerts) >= 7
    tests = alert_tests()
    unknown = {name for name, _ in tests} - alerts
    assert not unknown, f"rules_test.yml tests alerts rules.yml does not have (a quiet test would pass): {unknown}"
    fired = {name for name, fires in tests if fires}
    quiet = {name for name, fires in tests if not fires}
    assert alerts - fired == set(), f"no test fires {sorted(alerts - fired)}"
    assert alerts - quiet == set(), f"no test keeps {sorted(alerts - quiet)} quiet"


def test_every_alert_has_severity_summary_description_and_runbook() -> None:
    runbook_anchors = anchors(RUNBOOK)
    for rule in read_rules():
        if rule.kind != "alert":
            continue
        fields = rule.fields
        assert fields.get("for"), f"{rule.name}: no `for`: one bad scrape would page"
        severity = fields.get("severity", "")
        templated = set(re.findall(r"\b(critical|warning|info)\b", severity)) if "{{" in severity else {severity}
        assert templated, f"{rule.name}: no severity"
        assert templated <= SEVERITIES, f"{rule.name}: severity {severity!r}"
        assert len(fields.get("summary", "")) > 20, f"{rule.name}: summary"
        assert len(fields.get("description", "")) > 80, f"{rule.name}: description"
        runbook = fields.get("runbook_url", "")
        assert runbook == f"docs/operations.md#{rule.name.lower()}", f"{rule.name}: runbook_url {runbook!r}"
        assert rule.name.lower() in runbook_anchors, f"{rule.name}: docs/operations.md has no section `### {rule.name}`"


def test_recording_rules_are_named_for_the_labels_they_keep() -> None:
    records = [rule for rule in read_rules() if rule.kind == "record"]
    assert records
    names = {rule.name for rule in records}
    for rule in records:
        assert re.fullmatch(r"[a-z_]+:[a-z0-9_]+:[a-z0-9_]+", rule.name), f"{rule.name}: not level:metric:operations"
        usage = promql_usage(rule.expr)
        assert usage.grouping - {"le"} == recorded_labels(rule.name), (
            f"{rule.name} keeps {sorted(usage.grouping - {'le'})}, its name says {sorted(recorded_labels(rule.name))}"
        )
        for selector in usage.selectors:
            if ":" in selector.metric:
                assert selector.metric in names, f"{rule.name} uses an unknown recording rule {selector.metric}"
