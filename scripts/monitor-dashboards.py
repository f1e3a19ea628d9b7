#!/usr/bin/env python3
"""monitor-dashboards.py: the Grafana dashboard, written from the one list of panels.

    scripts/monitor-dashboards.py           write docker-compose/monitor/grafana/dashboards/archlab.json
    scripts/monitor-dashboards.py --check   exit 1 if the committed file differs from what the
                                            panels give, or does not fit Grafana's provisioning

What: stages/lab/monitor/panels.json lists the live dashboard's panels (title, why, unit,
PromQL queries with legends). The console page (archlab.html) draws them in the browser; this
script turns them into a Grafana dashboard (schema 39, time-series panels, two to a row), so
both dashboards show the same queries. scripts/test runs --check: a panel edited in one place
and not the other, or a dashboard naming a data source Grafana is not given, fails CI.
"""
import json
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
PANELS = ROOT / "stages/lab/monitor/panels.json"
OUT = ROOT / "docker-compose/monitor/grafana/dashboards/archlab.json"
DATASOURCES = ROOT / "docker-compose/monitor/grafana/provisioning/datasources/prometheus.yml"
UNITS = {"req/s": "reqps", "ms": "ms", "of budget": "percentunit", "per second": "ops", "": "short"}


def datasource_uid():
    found = re.search(r"^\s*uid:\s*(\S+)", DATASOURCES.read_text(), re.M)
    if not found:
        sys.exit(f"no uid in {DATASOURCES}")
    return found.group(1)


def dashboard():
    spec = json.loads(PANELS.read_text())
    uid = datasource_uid()
    panels = []
    for i, p in enumerate(spec["panels"]):
        if p["unit"] not in UNITS:
            sys.exit(f"panel {p['title']!r}: no Grafana unit for {p['unit']!r} (add it to UNITS)")
        panels.append({
            "id": i + 1,
            "type": "timeseries",
            "title": p["title"],
            "description": p["why"],
            "datasource": {"type": "prometheus", "uid": uid},
            "gridPos": {"x": 12 * (i % 2), "y": 8 * (i // 2), "w": 12, "h": 8},
            "fieldConfig": {"defaults": {"unit": UNITS[p["unit"]]}, "overrides": []},
            "options": {"legend": {"displayMode": "list", "placement": "bottom", "calcs": ["lastNotNull"]}},
            "targets": [
                {
                    "refId": chr(ord("A") + j),
                    "datasource": {"type": "prometheus", "uid": uid},
                    "expr": q["expr"],
                    # panels.json writes a series label as {name}; Grafana as {{name}}.
                    "legendFormat": re.sub(r"\{(\w+)\}", r"{{\1}}", q["legend"]),
                }
                for j, q in enumerate(p["queries"])
            ],
        })
    return {
        "uid": "archlab-live",
        "title": spec["title"],
        "description": spec["about"],
        "schemaVersion": 39,
        "editable": False,
        "refresh": "5s",
        "time": {"from": "now-5m", "to": "now"},
        "tags": ["archlab"],
        "panels": panels,
    }


def main():
    text = json.dumps(dashboard(), indent=2) + "\n"
    if sys.argv[1:] == ["--check"]:
        if not OUT.exists() or OUT.read_text() != text:
            sys.exit(f"{OUT.relative_to(ROOT)} is not what {PANELS.relative_to(ROOT)} gives: "
                     "run scripts/monitor-dashboards.py and commit the result")
        print(f"ok      {OUT.relative_to(ROOT)} matches {PANELS.relative_to(ROOT)} "
              f"({len(json.loads(text)['panels'])} panels, data source {datasource_uid()})")
        return
    OUT.write_text(text)
    print(f"wrote {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
