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


LIVE_FIGURES = (
    ("average_precision", "average precision"),
    ("card_precision_at_k", "card precision@{k} (mean of days)"),
    ("recall_at_alert_volume", "recall at the champion's alert volume ({n:,})"),
)


def _number(value: Any, digits: int = 4) -> str:
    return "n/a" if value is None or value != value else f"{value:.{digits}f}"


def _live_section(live: dict[str, Any] | None) -> str:
    """Champion and challenger on the same logged transactions (absent without a challenger)."""
    if not live:
        return ""
    champion, challenger = live["champion"], live["challenger"]
    rows = [
        _row(
            [
                escape(label.format(k=live["k"], n=live["alert_volume"])),
                _number(champion[key]),
                _number(challenger[key]),
            ]
        )
        for key, label in LIVE_FIGURES
    ]
    daily = [
        _row(
            [
                escape(d["day"]),
                f"{d['labelled_rows']:,}",
                f"{d['labelled_frauds']:,}",
                _number(d["champion_card_precision_at_k"]),
                _number(d["challenger_card_precision_at_k"]),
            ]
        )
        for d in live["daily"]
    ]
    css = "ok" if live["verdict"] == "challenger better" else ""
    reasons = "".join(f"<li>{escape(r)}</li>" for r in live["reasons"])
    return (
        "<h2>Champion vs challenger</h2>"
        f"<p>champion v{escape(live['champion_version'])} and challenger "
        f"v{escape(live['challenger_version'])} both scored {live['rows']:,} logged transactions; "
        f"{live['labelled_rows']:,} labelled ({live['labelled_frauds']:,} frauds) over "
        f"{live['days']} days.</p>"
        f'<p class="verdict {css}">live verdict: <b>{escape(live["verdict"])}</b></p>'
        + (f"<ul>{reasons}</ul>" if reasons else "")
        + "<p>Average precision difference (challenger − champion) "
        f"{_number(live['ap_difference'])}, {live['confidence']:.0%} paired bootstrap interval "
        f"[{_number(live['ap_difference_low'])}, {_number(live['ap_difference_high'])}] "
        f"({live['bootstrap_samples']:,} resamples). Decisions agree on "
        f"{_number(live['agreement_rate'], 3)} of the transactions; the day's top-{live['k']} "
        f"cards overlap {_number(live['top_k_overlap'], 3)}; score PSI (challenger against "
        f"champion) {_number(live['score_psi'], 3)}.</p>"
        + _table(["figure", "champion", "challenger"], rows)
        + _table(
            ["day", "labelled", "frauds", "champion card precision", "challenger card precision"],
            daily,
        )
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
{_live_section(summary.get("live"))}
{retrain_line}
</body></html>
"""
