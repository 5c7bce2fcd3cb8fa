#!/usr/bin/env python3
"""The Grafana dashboard (deploy/grafana/token-exchange.json) against a real run, as a picture.

    python bench/dashboard.py                 # writes deploy/grafana/token-exchange.png
    python bench/dashboard.py --phase 20      # seconds per phase (default 40)

It runs ``token-exchange serve`` (2 workers, the SQLite store) against bench/'s fake Auth0 tenant
and permissions API, and a real Prometheus (Debian's ``prometheus``) scraping its /metrics every
second with the alerting rules of deploy/prometheus loaded. The load, with wrk: warm exchanges,
then cold ones (a new user each, one permissions question each), with a trickle of refused
requests (an expired token, an unknown audience) throughout; then the permissions API is stopped
while cold exchanges go on, so that its breaker opens and exchanges answer 503. Each panel's
queries are then asked of Prometheus over the run (the range API, Grafana's variables
substituted) and drawn where the dashboard puts them (its 24-column grid): time series as lines,
stats as their last value, state timelines as bands.

No Grafana server is run (none is installable here): the picture shows the dashboard's own
queries on the real run's data, drawn by matplotlib, not Grafana's rendering of them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.run import (
    API,
    ISSUER,
    STS_AUDIENCE,
    _config,
    _fakes_process,
    _form,
    _free_port,
    _issuer_key,
    _process,
    _server,
    _stop,
    _tokens,
    _wait,
    _warm_up,
    _wrk,
)

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy" / "grafana" / "token-exchange.json"
RULES = ROOT / "deploy" / "prometheus" / "token-exchange-alerts.yml"
STEP = 2  # seconds between points


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--phase", type=int, default=40, help="seconds per phase")
    parser.add_argument("--out", default=str(ROOT / "deploy" / "grafana" / "token-exchange.png"))
    parser.add_argument("--cache", default="~/.cache/token-exchange-bench")
    parser.add_argument("--data", help="keep the queries' answers in this JSON file; if it "
                        "exists, draw from it without a run")  # fmt: skip
    args = parser.parse_args()
    if args.data and Path(args.data).exists():
        data = json.loads(Path(args.data).read_text())
        _draw(data["panels"], Path(args.out), data["seconds"])
        print(f"wrote {args.out}")
        return 0
    for tool in ("wrk", "prometheus"):
        if shutil.which(tool) is None:
            print(f"dashboard: {tool} is not installed (apt-get install {tool})", file=sys.stderr)
            return 2
    cache = Path(args.cache).expanduser()
    cache.mkdir(parents=True, exist_ok=True)
    key = _issuer_key(cache)
    warm, cold = _tokens(cache, key, 40_000)
    with tempfile.TemporaryDirectory(prefix="te-dashboard-") as tmp:
        work = Path(tmp)
        (work / "warm.txt").write_text(warm + "\n")
        half = len(cold) // 2
        (work / "cold.txt").write_text("\n".join(cold[:half]) + "\n")
        now = int(time.time())
        expired = jwt.encode(
            {"iss": ISSUER, "sub": "auth0|expired", "aud": [STS_AUDIENCE], "iat": now - 900,
             "exp": now - 600},
            key, algorithm="RS256", headers={"kid": "bench-issuer"},
        )  # fmt: skip
        with contextlib.ExitStack() as stack:
            fakes_url, fakes = stack.enter_context(_fakes_process(work, key))
            (work / "ES256").mkdir()
            config = _config(work / "ES256", "ES256", fakes_url, "sqlite:state/store.db")
            # A key published ahead of its turn: the board's "next rotation".
            subprocess.run(
                [sys.executable, "-m", "token_exchange.serve.cli", "keys", "rotate",
                 "--config", str(config), "--delay", "86400"],
                check=True, capture_output=True,
            )  # fmt: skip
            url, _ = stack.enter_context(_server(config, 2, None))
            _warm_up(url, warm)
            prometheus = stack.enter_context(_prometheus(work, url))
            started = time.time()
            stop = threading.Event()
            threading.Thread(target=_refusals, args=(url, warm, expired, stop), daemon=True).start()
            print("warm ...", flush=True)
            _wrk("wrk", url, work, 2, 8, args.phase, 1.0)
            print("cold ...", flush=True)
            _wrk("wrk", url, work, 2, 8, args.phase, 0.0)
            print("permissions API stopped, cold ...", flush=True)
            _stop(fakes, 5)
            # Users not seen before: no cached answer can serve them.
            (work / "cold.txt").write_text("\n".join(cold[half:]) + "\n")
            _wrk("wrk", url, work, 2, 8, args.phase / 2, 0.0)
            stop.set()
            time.sleep(3)  # the last scrapes
            ended = time.time()
            panels = _query_panels(prometheus, started, ended)
    if args.data:
        Path(args.data).write_text(json.dumps({"panels": panels, "seconds": ended - started}))
    _draw(panels, Path(args.out), ended - started)
    print(f"wrote {args.out}")
    return 0


def _refusals(url: str, warm: str, expired: str, stop: threading.Event) -> None:
    """A few refused requests a second: an expired subject token, an unknown audience."""
    with requests.Session() as session:
        while not stop.is_set():
            session.post(url + "/token", data=_form(expired), timeout=5)
            session.post(url + "/token", data=_form(warm, audience=API + "/nowhere"), timeout=5)
            time.sleep(0.1)


@contextlib.contextmanager
def _prometheus(work: Path, target: str) -> Iterator[str]:
    port = _free_port()
    directory = work / "prometheus"
    directory.mkdir()
    shutil.copy(RULES, directory / RULES.name)
    (directory / "prometheus.yml").write_text(
        json.dumps(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [RULES.name],
                "scrape_configs": [
                    {
                        "job_name": "token-exchange",
                        "static_configs": [{"targets": [target.removeprefix("http://")]}],
                    }
                ],
            }
        )
    )
    with _process(
        ["prometheus", f"--config.file={directory / 'prometheus.yml'}",
         f"--storage.tsdb.path={directory / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
        log=directory / "prometheus.log",
    ) as process:  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        _wait(url + "/-/ready", process)
        yield url


def _substituted(expr: str, seconds: float) -> str:
    return (
        expr.replace("$__rate_interval", "10s")
        .replace("$__range", f"{int(seconds)}s")
        .replace("$job", ".+")
    )


def _query_panels(prometheus: str, start: float, end: float) -> list[dict[str, Any]]:
    board = json.loads(DASHBOARD.read_text())
    panels = []
    for panel in board["panels"]:
        series = []
        for target in panel.get("targets", []):
            expr = _substituted(target["expr"], end - start)
            answer = requests.get(
                prometheus + "/api/v1/query_range",
                params={"query": expr, "start": start, "end": end, "step": STEP},
                timeout=30,
            ).json()
            if answer.get("status") != "success":
                raise SystemExit(f"dashboard: {panel['title']}: {answer}")
            for result in answer["data"]["result"]:
                legend = target.get("legendFormat") or ""
                for name, value in result["metric"].items():
                    legend = legend.replace("{{" + name + "}}", value)
                points = [(float(t) - start, float(v)) for t, v in result["values"]]
                series.append((legend, points))
        panels.append({**panel, "series": series})
    return panels


def _draw(panels: list[dict[str, Any]], out: Path, seconds: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    unit_w, unit_h = 0.75, 0.36  # inches per grid column and row
    fig = plt.figure(figsize=(24 * unit_w, rows * unit_h), facecolor="#111217")
    for panel in panels:
        g = panel["gridPos"]
        left, bottom = g["x"] / 24, 1 - (g["y"] + g["h"]) / rows
        width, height = g["w"] / 24, g["h"] / rows
        if panel["type"] == "row":
            fig.text(left + 0.004, bottom + height / 2, panel["title"], color="#ccccdc",
                     fontsize=13, weight="bold", va="center")  # fmt: skip
            continue
        # The panel, and inside it the plot, with room for its title and axis labels.
        fig.add_artist(Rectangle((left + 0.003, bottom + 0.003), width - 0.006,
                                     height - 0.006, transform=fig.transFigure,
                                     facecolor="#181b1f", edgecolor="#2c3235",
                                     zorder=-1))  # fmt: skip
        fig.text(left + 0.008, bottom + height - 0.012, panel["title"], color="#ccccdc",
                 fontsize=10, va="top")  # fmt: skip
        plotted = panel["type"] in ("timeseries", "state-timeline")
        inset = (0.045, 0.03, 0.05, 0.055) if plotted else (0.01, 0.01, 0.02, 0.04)
        ax = fig.add_axes(
            [left + inset[0], bottom + inset[1], width - inset[2], height - inset[3]],
            facecolor="#181b1f",
        )
        for spine in ax.spines.values():
            spine.set_color("#2c3235")
        ax.tick_params(colors="#8e8e8e", labelsize=7)
        unit = panel["fieldConfig"]["defaults"].get("unit")
        if panel["type"] == "timeseries":
            for legend, points in panel["series"]:
                ax.plot([p[0] for p in points], [_scaled(p[1], unit) for p in points],
                        label=legend[:40], linewidth=1)  # fmt: skip
            ax.set_xlim(0, seconds)
            ax.set_xlabel("seconds into the run", color="#8e8e8e", fontsize=7)
            if panel["series"]:
                ax.legend(fontsize=6, loc="upper left", facecolor="#181b1f",
                          labelcolor="#ccccdc", framealpha=0.6)  # fmt: skip
            if unit:
                ax.set_ylabel(_unit_label(unit), color="#8e8e8e", fontsize=7)
        elif panel["type"] == "state-timeline":
            colors = {0: "#73bf69", 1: "#ff9830", 2: "#f2495c"}
            for i, (legend, points) in enumerate(panel["series"]):
                for t, v in points:
                    ax.broken_barh([(t, STEP)], (i + 0.1, 0.8), color=colors.get(int(v), "gray"))
                ax.text(1, i + 0.5, legend, color="#111217", fontsize=7, va="center")
            ax.set_xlim(0, seconds)
            ax.set_ylim(0, max(1, len(panel["series"])))
            ax.set_yticks([])
            ax.set_xlabel("seconds into the run (green closed, orange half-open, red open)",
                          color="#8e8e8e", fontsize=7)  # fmt: skip
        else:  # stat: each series' last value
            ax.set_xticks([])
            ax.set_yticks([])
            values = [(legend, points[-1][1]) for legend, points in panel["series"] if points]
            if not values:
                ax.text(0.5, 0.5, "no value", color="#8e8e8e", ha="center", va="center",
                        transform=ax.transAxes, fontsize=12)  # fmt: skip
            shown = sorted(values, key=lambda lv: -lv[1])[:6]
            for i, (legend, value) in enumerate(shown):
                ax.text(0.5, 1 - (i + 0.7) / max(len(shown), 1) * 0.9,
                        f"{legend[:34]}: {_formatted(value, unit)}", color="#73bf69",
                        ha="center", va="center", transform=ax.transAxes,
                        fontsize=14 if len(shown) == 1 else 8, weight="bold")  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80, facecolor=fig.get_facecolor())


def _scaled(value: float, unit: str | None) -> float:
    return value * 1000 if unit == "s" else value * 100 if unit == "percentunit" else value


def _unit_label(unit: str) -> str:
    return {"s": "ms", "reqps": "per second", "percentunit": "%"}.get(unit, unit)


def _formatted(value: float, unit: str | None) -> str:
    if unit == "s":
        if abs(value) >= 86400:
            return f"{value / 86400:.1f} d"
        if abs(value) >= 60:
            return f"{value / 60:.0f} min"
        return f"{value * 1000:.1f} ms" if abs(value) < 1 else f"{value:.0f} s"
    if unit == "percentunit":
        return f"{value * 100:.1f} %"
    return f"{value:.0f}" if abs(value) >= 10 else f"{value:.3g}"


if __name__ == "__main__":
    sys.exit(main())
