"""The report's front page: the verdict and its reasons on one screen, linking to Evidently's
full drift and performance reports in the same folder."""

from __future__ import annotations

from html import escape
from typing import Any

STYLE = """
body{font-family:system-ui,sans-serif;margin:2rem;color:#222;max-width:70rem}
table{border-collapse:collapse;margin:.5rem 0 1.5rem}
td,th{border:1px solid #ccc;padding:.3rem .7rem;text-align:right}
td:first-child,th:first-child{text-align:left}
.bad{background:#fde2e1}.ok{background:#e3f6e5}
.verdict{font-size:1.4rem;padding:.6rem 1rem;display:inline-block;border-radius:.3rem}
"""
CONFUSION = ("true_positives", "false_positives", "false_negatives", "true_negatives")


def _row(cells: list[str], css: str = "") -> str:
    attr = f' class="{css}"' if css else ""
    return f"<tr{attr}>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"


def _table(header: list[str], rows: list[str]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def _drift_rows(columns: list[dict[str, Any]]) -> list[str]:
    ordered = sorted(columns, key=lambda c: (not c["drifted"], c["column"]))
    return [
        _row(
            [
                escape(c["column"]),
                "yes" if c["drifted"] else "no",
                f"{c['score']:.4f}",
                escape(c["method"]),
                f"{c['threshold']:g}",
            ],
            "bad" if c["drifted"] else "ok",
        )
        for c in ordered
    ]


def _performance_section(performance: dict[str, Any], files: dict[str, str]) -> str:
    if not performance["assessed"]:
        return (
            f"<p>Not assessed: {performance['labelled_frauds']} labelled frauds among "
            f"{performance['labelled_rows']} labelled predictions so far.</p>"
        )
    rows = []
    production = performance["production"]
    for metric, value in production.items():
        if metric in CONFUSION:
            continue
        trained = performance["training"].get(metric)
        bad = metric in performance["degraded_metrics"]
        rows.append(
            _row(
                [
                    escape(metric),
                    f"{value:.4f}",
                    "" if trained is None else f"{trained:.4f}",
                    "degraded" if bad else "",
                ],
                "bad" if bad else "",
            )
        )
    link = (
        f'<p><a href="{escape(files["performance_html"])}">Evidently classification report</a>'
        " (labelled production rows next to the labelled reference)</p>"
        if "performance_html" in files
        else ""
    )
    confusion = ", ".join(f"{production[c]:.0f} {c.replace('_', ' ')}" for c in CONFUSION)
    return (
        f"<p>{performance['labelled_rows']} labelled predictions, "
        f"{performance['labelled_frauds']} frauds; at the model's threshold: {confusion}.</p>"
        + _table(["metric", "production", "training time", ""], rows)
        + link
    )


def render(summary: dict[str, Any]) -> str:
    """HTML of a monitor summary (the JSON the monitor writes next to it)."""
    verdict = summary["verdict"]
    drift = summary["drift"]
    score = drift["score"]
    model = summary["model"]
    files = summary["files"]
    css = "ok" if verdict == "no_drift" else "bad"
    score_line = (
        f"<p>Predicted fraud probability: score {score['score']:.4f} ({escape(score['method'])},"
        f" threshold {score['threshold']:g}) — {'drifted' if score['drifted'] else 'stable'}.</p>"
        if score
        else ""
    )
    retrain = summary.get("retrain")
    retrain_line = (
        f"<h2>Retraining</h2><p>challenger v{escape(str(retrain['challenger_version']))}: "
        f"{escape(retrain['reason'])}</p>"
        if retrain
        else ""
    )
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>fraudflow monitor — {escape(verdict)}</title>
<style>{STYLE}</style></head><body>
<h1>fraudflow monitor</h1>
<p class="verdict {css}">verdict: <b>{escape(verdict)}</b></p>
<p>{escape(model['name'])} v{escape(model['version'])} (run {escape(model['run_id'])}) on
{summary['rows']['current']:,} logged predictions from {escape(summary['window']['start'])} to
{escape(summary['window']['end'])}; drift judged on {summary['rows']['compared']:,} of them
against {summary['rows']['reference']:,} reference rows.</p>
<h2>Feature drift</h2>
<p>{drift['drifted_count']} of {len(drift['columns'])} features drifted
(share {drift['drifted_share']:.2f}; the verdict turns to drift at
{summary['thresholds']['drift_share']:.2f}).
<a href="{escape(files['drift_html'])}">Evidently drift report</a> (distributions per feature).</p>
{score_line}
{_table(["feature", "drifted", "score", "method", "threshold"], _drift_rows(drift["columns"]))}
<h2>Performance on late labels</h2>
{_performance_section(summary["performance"], files)}
{retrain_line}
</body></html>
"""
