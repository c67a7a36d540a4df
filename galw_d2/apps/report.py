"""Console output and reports of the applications: numbered stage lines, the results table,
report.md (Markdown) and the published numbers they are shown next to."""

import os
import time
from typing import Dict, Optional

from ..tasks import TASKS_BY_NAME

__all__ = ["Stages", "write_report", "print_summary", "PAPER_NUMBERS", "short_task_name", "pct"]


class Stages:
    """Prints numbered stage banners with elapsed times (the demo's progress outline)."""

    def __init__(self, total: int):
        self.total, self.k, self.t0, self.times = total, 0, time.perf_counter(), {}
        self._cur, self._cur_t = None, None

    def start(self, name: str, what: str):
        self.end()
        self.k += 1
        self._cur, self._cur_t = name, time.perf_counter()
        print(f"[demo] ({self.k}/{self.total}) {what}  [t={time.perf_counter() - self.t0:.0f} s]", flush=True)

    def end(self):
        if self._cur is not None:
            self.times[self._cur] = round(time.perf_counter() - self._cur_t, 1)
            self._cur = None

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0


PAPER_NUMBERS = [  # SPEC §6: published mAP / top-1 (%), real datasets, ResNet-50, GPU training
    ("NAE", (91.5, 92.4), (43.3, 80.9)),
    ("AlignPS", (93.1, 93.4), (45.9, 81.9)),
    ("ROI-AlignPS*", (95.0, 95.3), (50.3, 84.3)),
    ("ROI-AlignPS* + GALW", (95.6, 96.3), (52.9, 86.1)),
]


def pct(d: Optional[Dict], k: str) -> str:
    return "-" if not d or k not in d or d[k] is None else f"{100 * d[k]:.2f}"


def write_report(m: Dict, path: str) -> None:
    s = m["settings"]
    rows = [
        ("random initial weights", m["random_init"]),
        (f"phase 1: {s['phase1_strategy'].upper()}, no grouping", m.get("phase1")),
        (f"phase 2: {s['phase2_strategy'].upper()} ({len(m['groups'])} groups)", m["search"]),
    ]
    lines = [
        "# GALW demo report",
        "",
        f"Dataset: `{s['dataset']}` (registered as `{s['dataset_prefix']}`, root `{s['dataset_root']}`); "
        f"model config `{s['config_file']}`; "
        f"seed {s['seed']}; {s['phase1_iters']} + {s['phase2_iters']} iterations on {s['device']} "
        f"({s['torch_threads']} threads); detection score threshold {s['det_thresh']}; "
        f"{'quick mode' if s['quick'] else 'full demo'}.",
        "",
        "## Search on the SynthPS test split (measured by this run)",
        "",
        "| model | mAP (%) | top-1 (%) | top-5 (%) | top-10 (%) |",
        "|---|---|---|---|---|",
    ]
    for name, r in rows:
        lines.append(f"| {name} | {pct(r, 'mAP')} | {pct(r, 'top1')} | {pct(r, 'top5')} | {pct(r, 'top10')} |")
    det = m.get("detection") or {}
    if det:
        lines += ["", f"Detection (phase 2): AP {pct(det, 'AP')} %, recall {pct(det, 'recall')} %."]
    lines += ["", "## Groups found (phase 1 gradient trends)", ""]
    for i, g in enumerate(m["groups"]):
        lines.append(f"{i + 1}. " + ", ".join(f"`{short_task_name(t)}`" for t in g))
    curve = m.get("gallery_size_curve")
    if curve:
        lines += ["", "## mAP vs gallery size", "", "| gallery size | mAP (%) | top-1 (%) |", "|---|---|---|"]
        for row in curve:
            lines.append(f"| {row['gallery_size']} | {100 * row['mAP']:.2f} | {100 * row['top1']:.2f} |")
    lines += [
        "",
        "## Published numbers (paper, real datasets; NOT comparable with SynthPS)",
        "",
        "| method | CUHK-SYSU mAP / top-1 | PRW mAP / top-1 |",
        "|---|---|---|",
    ]
    for name, c, p in PAPER_NUMBERS:
        lines.append(f"| {name} | {c[0]} / {c[1]} | {p[0]} / {p[1]} |")
    rt = m["runtime_s"]
    lines += [
        "",
        "## Runtime (s)",
        "",
        "| " + " | ".join(rt) + " |",
        "|" + "---|" * len(rt),
        "| " + " | ".join(str(v) for v in rt.values()) + " |",
        "",
    ]
    figs = [
        f
        for f in (
            "gallery_size_curve.png",
            "topk_search.png",
            "grouping/gradient_trends.png",
            "grouping/dendrogram.png",
        )
        if os.path.exists(os.path.join(os.path.dirname(path), f))
    ]
    if figs:
        lines += ["## Figures", ""] + [f"![{f}]({f})" for f in figs] + [""]
    with open(path, "w") as f:
        f.write("\n".join(lines))


def print_summary(m: Dict) -> None:
    r, t = m["random_init"], m["search"]
    print("", flush=True)
    print("[demo] ================= results (SynthPS test split, standard protocol) =================")
    print(f"[demo] {'model':<34} {'mAP':>8} {'top-1':>8}")
    print(f"[demo] {'random initial weights':<34} {pct(r, 'mAP'):>8} {pct(r, 'top1'):>8}")
    if m.get("phase1"):
        print(f"[demo] {'phase 1 (ungrouped)':<34} {pct(m['phase1'], 'mAP'):>8} {pct(m['phase1'], 'top1'):>8}")
    print(f"[demo] {'phase 2 (GALW, grouped)':<34} {pct(t, 'mAP'):>8} {pct(t, 'top1'):>8}")
    print(
        "[demo] groups: "
        + "  ".join("{" + ",".join(short_task_name(x).split(" ")[0] for x in g) + "}" for g in m["groups"])
    )
    print(f"[demo] total runtime {m['runtime_s']['total']:.0f} s; output in {m['settings']['output']}", flush=True)


def short_task_name(name: str) -> str:
    """``"t3 (loss_roi_box_reg)"`` for a task of the table, else the name."""
    t = TASKS_BY_NAME.get(name)
    return f"{t.short} ({name})" if t else name
